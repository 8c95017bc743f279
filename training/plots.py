"""Plots a data scientist opens next to a run's numbers (matplotlib, Agg: no display needed).

- Recall@K / NDCG@K curve: how fast the held-out items are found as the list grows.
- Popularity of what is recommended vs what is bought: a model that only echoes best-sellers shows
  its mass far right of what customers actually buy.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

_AT_K = re.compile(r"^(recall|ndcg|hit_rate|map|precision)@(\d+)$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on servers / CI; set per call, not on import
    import matplotlib.pyplot as plt

    return plt


def recall_curve(metrics: dict[str, float], path: str | Path, title: str = "") -> Path | None:
    """Line plot of every `<metric>@K` (overall, not per segment) against K; None when the metrics
    hold no @K values."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for key, value in metrics.items():
        m = _AT_K.match(key)
        if m:
            curves.setdefault(m.group(1), []).append((int(m.group(2)), float(value)))
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(curves.items()):
        points.sort()
        ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=f"{name}@K")
    ax.set_xlabel("K (length of the recommendation list)")
    ax.set_ylabel("metric on the test split")
    ax.set_title(title or "Ranking quality by list length")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def popularity_plot(
    recommended: np.ndarray,
    bought: np.ndarray,
    item_popularity: np.ndarray,
    path: str | Path,
    title: str = "",
) -> dict[str, float]:
    """Histogram of log10(1 + popularity) of recommended items vs held-out (bought) items.

    recommended, bought: item indices (any shape; -1 padding ignored).
    item_popularity:     (n_items,) number of training users per item.
    Returns the median popularity of each side (logged as metrics beside the plot)."""
    pop = np.asarray(item_popularity, dtype=np.float64)
    rec = np.asarray(recommended).ravel()
    got = np.asarray(bought).ravel()
    rec_pop = pop[rec[rec >= 0]]
    got_pop = pop[got[got >= 0]]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, np.log10(1 + max(pop.max(initial=0.0), 1.0)), 30)
    ax.hist(np.log10(1 + got_pop), bins=bins, alpha=0.6, density=True, label=f"bought (n={got_pop.size})")
    ax.hist(
        np.log10(1 + rec_pop), bins=bins, alpha=0.6, density=True, label=f"recommended (n={rec_pop.size})"
    )
    ax.set_xlabel("log10(1 + users who interacted with the item in training)")
    ax.set_ylabel("density")
    ax.set_title(title or "Popularity: recommended vs bought")
    ax.legend()
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {
        "popularity_median_recommended": float(np.median(rec_pop)) if rec_pop.size else 0.0,
        "popularity_median_bought": float(np.median(got_pop)) if got_pop.size else 0.0,
    }
