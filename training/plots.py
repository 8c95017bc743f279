"""Plots a data scientist opens next to a run's numbers, logged with every training run and shown
inline by the notebooks.

- Recall@K / NDCG@K curve: how fast the held-out items are found as the list grows.
- Per-segment bars: the headline metric for new, returning and each lifecycle segment's customers.
- Learning curve (models that record per-epoch history, SASRec): training loss and the validation
  metric per epoch, with the epoch early stopping kept.
- Popularity of what is recommended vs what is bought: a model that only echoes best-sellers shows
  its mass far right of what customers actually buy.

Every function builds a `matplotlib.figure.Figure` directly (no pyplot, no backend switch), so a
training run inside a notebook leaves the notebook's inline backend alone; `path` writes a PNG.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_AT_K = re.compile(r"^(recall|ndcg|hit|hit_rate|map|precision)@(\d+)$")
# The segment metrics evaluation writes: `ndcg@10/new`, `ndcg@10/segment_vip`, n_users/<segment>.
_SEGMENT = re.compile(r"^(?P<metric>[a-z_]+@\d+)/(?P<segment>.+)$")


def _figure(width: float = 6.0, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        fig.tight_layout()
        fig.savefig(Path(path), dpi=100)


def at_k_curves(metrics: dict[str, float]) -> dict[str, list[tuple[int, float]]]:
    """{"recall": [(1, 0.1), (5, 0.3), ...], ...}: every overall `<metric>@K`, sorted by K."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for key, value in metrics.items():
        m = _AT_K.match(key)
        if m:
            curves.setdefault(m.group(1), []).append((int(m.group(2)), float(value)))
    return {name: sorted(points) for name, points in sorted(curves.items())}


def segment_metrics(metrics: dict[str, float], metric: str = "ndcg@10") -> dict[str, tuple[float, int]]:
    """{segment: (value of `metric` for its customers, number of customers)} from evaluation's
    `metric/segment` keys, in evaluation's order (new, returning, then the lifecycle segments)."""
    out: dict[str, tuple[float, int]] = {}
    for key, value in metrics.items():
        m = _SEGMENT.match(key)
        if m and m.group("metric") == metric:
            seg = m.group("segment")
            out[seg] = (float(value), int(metrics.get(f"n_users/{seg}", 0)))
    return out


def recall_curve(metrics: dict[str, float], path: str | Path | None = None, title: str = "") -> Figure | None:
    """Line plot of every `<metric>@K` (overall, not per segment) against K; None when the metrics
    hold no @K values."""
    curves = at_k_curves(metrics)
    curves = {n: p for n, p in curves.items() if n in ("recall", "ndcg", "map", "hit")} or curves
    if not curves:
        return None
    fig = _figure()
    ax = fig.subplots()
    for name, points in curves.items():
        ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=f"{name}@K")
    ax.set_xlabel("K (length of the recommendation list)")
    ax.set_ylabel("metric on the held-out part")
    ax.set_title(title or "Ranking quality by list length")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return fig


def segment_bars(
    metrics: dict[str, float], path: str | Path | None = None, metric: str = "ndcg@10", title: str = ""
) -> Figure | None:
    """Horizontal bars of `metric` per customer segment (with each segment's customer count and
    the overall value as a line); None when the metrics hold no per-segment values."""
    segs = segment_metrics(metrics, metric)
    if not segs:
        return None
    names = [segment_label(s) for s in segs]
    values = [v for v, _ in segs.values()]
    fig = _figure(6.0, 0.5 * len(segs) + 1.5)
    ax = fig.subplots()
    # by training history (cold start / returning) in one colour, lifecycle segments in another
    colours = ["#8172b3" if s.startswith("segment_") else "#4c72b0" for s in segs]
    bars = ax.barh(names, values, color=colours)
    for bar, (_, n) in zip(bars, segs.values(), strict=True):
        ax.annotate(
            f"{bar.get_width():.3f} (n={n})",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    if metric in metrics:
        ax.axvline(float(metrics[metric]), color="#c44e52", linestyle="--", label=f"all customers {metric}")
        ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(values), float(metrics.get(metric, 0.0))) * 1.3 or 1.0)
    ax.set_xlabel(metric)
    ax.set_title(title or f"{metric} per customer segment")
    _save(fig, path)
    return fig


def learning_curve(
    history: list[dict[str, float]], path: str | Path | None = None, title: str = ""
) -> Figure | None:
    """Training loss (left axis) and validation metric (right axis) per epoch from a model's
    per-epoch history (`[{"epoch", "train_loss", "valid", ...}]`), the best validation epoch marked;
    None when there is no history."""
    if not history:
        return None
    epochs = [int(h.get("epoch", i)) + 1 for i, h in enumerate(history)]
    fig = _figure()
    ax = fig.subplots()
    lines = []
    if any("train_loss" in h for h in history):
        lines += ax.plot(
            epochs, [h.get("train_loss", np.nan) for h in history], marker="o", label="training loss"
        )
        ax.set_ylabel("training loss")
    valid = [h.get("valid", np.nan) for h in history]
    if not all(np.isnan(v) for v in valid):
        right = ax.twinx()
        lines += right.plot(epochs, valid, marker="s", color="#dd8452", label="validation NDCG@10")
        best = int(np.nanargmax(valid))
        lines.append(
            right.axvline(epochs[best], color="#55a868", linestyle=":", label=f"kept: epoch {epochs[best]}")
        )
        right.set_ylabel("validation NDCG@10")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_title(title or "Learning curve")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="center right")
    _save(fig, path)
    return fig


def popularity_plot(
    recommended: np.ndarray,
    bought: np.ndarray,
    item_popularity: np.ndarray,
    path: str | Path | None = None,
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
    fig = _figure()
    ax = fig.subplots()
    bins = np.linspace(0, np.log10(1 + max(pop.max(initial=0.0), 1.0)), 30)
    ax.hist(np.log10(1 + got_pop), bins=bins, alpha=0.6, density=True, label=f"bought (n={got_pop.size})")
    ax.hist(
        np.log10(1 + rec_pop), bins=bins, alpha=0.6, density=True, label=f"recommended (n={rec_pop.size})"
    )
    ax.set_xlabel("log10(1 + users who interacted with the item in training)")
    ax.set_ylabel("density")
    ax.set_title(title or "Popularity: recommended vs bought")
    ax.legend()
    _save(fig, path)
    return {
        "popularity_median_recommended": float(np.median(rec_pop)) if rec_pop.size else 0.0,
        "popularity_median_bought": float(np.median(got_pop)) if got_pop.size else 0.0,
    }


def segment_label(segment: str) -> str:
    """A reader's name for an evaluation segment: `new` / `returning` split customers by how many
    items they had in training (cold start or not); `segment_<name>` is the lifecycle segment."""
    from training.evaluate import NEW_USER_MAX_ITEMS

    if segment == "new":
        return f"cold start (<{NEW_USER_MAX_ITEMS} items)"
    if segment == "returning":
        return f"returning (>={NEW_USER_MAX_ITEMS} items)"
    return segment.replace("segment_", "lifecycle: ", 1)
