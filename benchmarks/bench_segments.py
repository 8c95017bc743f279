"""Benchmark: the lifetime models behind `shoprec segments` on CDNOW, against the published figures.

Data: `shoprec data fetch cdnow` (lifetimes 0.11.3's CDNOW_master.txt: the 23,570 customers of
CDNOW's first-quarter 1997 cohort, every purchase to June 1998). The published 2,357-customer
sample is selected exactly: the customers whose master ids are listed in the same wheel's
CDNOW_sample.txt (its first column is the master id, its second the sample id). One purchase
occasion per customer and day (as Fader, Hardie & Lee 2005 count them), time in weeks.

Calibration: 1997-01-01 to 1997-09-30 (39 weeks; T = weeks from a customer's first purchase to
1997-09-30), hold-out: 1997-10-01 to 1998-06-30 (39 weeks). Measured:
- the BG/NBD parameters fitted on the calibration period (published: r 0.243, α 4.414, a 0.793,
  b 2.426, LL -9582.4) and Gamma-Gamma on the mean spend of the repeat purchases (published:
  p 6.25, q 3.74, γ 15.44);
- how well each score ranks who buys at all in the hold-out weeks (AUC), for p_alive, expected
  purchases in 39 weeks, plain recency (weeks since the last purchase, lower = better) and plain
  frequency (repeat purchases), over all customers and over the repeat buyers only (BG/NBD's
  p_alive is 1 for everyone without a repeat purchase); Spearman correlation with the hold-out purchase counts; predicted
  against actual hold-out purchases in total;
- the segment rules (features.lifecycle defaults) at the end of calibration: customers and the
  share who bought in the hold-out per segment.

Run: `.venv/bin/python -m benchmarks.bench_segments [--quick]` → benchmarks/results/segments.json
(--quick fits on the sample only, without the full-cohort fit).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from features.datasets import SOURCES, default_cache_dir, download_wheel, extract_files, fetch
from features.lifecycle import SegmentConfig, assign_segments, purchase_occasions, rfm_scores, rfm_summary
from features.transforms import DAY_S, cycle_days
from training.clv import fit_bgnbd, fit_gamma_gamma

RESULTS = Path(__file__).resolve().parent / "results" / "segments.json"
CALIBRATION_END = pd.Timestamp("1997-09-30", tz="UTC")
HOLDOUT_END = pd.Timestamp("1998-06-30", tz="UTC")
HOLDOUT_WEEKS = 39.0
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "log_likelihood": -9582.4}
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}
SAMPLE_FILE = "lifetimes/datasets/CDNOW_sample.txt"


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count
    half (Mann-Whitney U from average ranks)."""
    score, label = np.asarray(score, float), np.asarray(label, bool)
    ranks = stats.rankdata(score)
    n_pos, n_neg = label.sum(), (~label).sum()
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def sample_ids(cache: Path) -> set[str]:
    """Master ids of the published 2,357-customer sample (CDNOW_sample.txt, first column)."""
    src = SOURCES["cdnow"]
    wheel = download_wheel(src, cache / "wheels")
    path = extract_files(wheel, (SAMPLE_FILE,), cache / "cdnow-sample")[0]
    ids = pd.read_csv(path, sep=r"\s+", header=None, dtype=str)[0]
    return set(ids.str.lstrip("0").replace("", "0"))


def evaluate(summary: pd.DataFrame) -> dict:
    """Fit both models on `summary` (rfm_summary with hold-out columns) and score the hold-out."""
    t0 = time.perf_counter()
    bg = fit_bgnbd(summary["x"], summary["t_x"], summary["T"])
    fit_s = time.perf_counter() - t0
    gg = fit_gamma_gamma(summary["x"], summary["m"])
    p_alive = bg.p_alive(summary["x"], summary["t_x"], summary["T"])
    expected = bg.expected_purchases(HOLDOUT_WEEKS, summary["x"], summary["t_x"], summary["T"])
    bought = summary["x_holdout"].to_numpy() > 0
    rep = summary["x"].to_numpy() > 0
    recency_weeks = (summary["T"] - summary["t_x"]).to_numpy()
    scores = {
        "p_alive": p_alive,
        "expected_purchases_39w": expected,
        "recency (weeks since last purchase, lower ranks higher)": -recency_weeks,
        "frequency (repeat purchases)": summary["x"].to_numpy(),
    }
    return {
        "customers": len(summary),
        "repeat_buyers_in_calibration": int((summary["x"] > 0).sum()),
        "bgnbd": {k: round(v, 4) for k, v in bg.to_dict().items()},
        "bgnbd_fit_seconds": round(fit_s, 2),
        "gamma_gamma": {k: round(v, 4) for k, v in gg.to_dict().items()},
        "holdout": {
            "buyers": int(bought.sum()),
            "share_buying": round(float(bought.mean()), 4),
            "auc_buys_at_all": {name: round(auc(s, bought), 4) for name, s in scores.items()},
            # BG/NBD calls every customer without a repeat purchase alive (p_alive = 1), so p_alive
            # only ranks among the repeat buyers; the same AUCs there:
            "auc_buys_at_all_repeat_buyers_only": {
                name: round(auc(s[rep], bought[rep]), 4) for name, s in scores.items()
            },
            "spearman_with_purchases": {
                name: round(float(stats.spearmanr(s, summary["x_holdout"]).statistic), 4)
                for name, s in scores.items()
            },
            "purchases_actual": int(summary["x_holdout"].sum()),
            "purchases_expected_bgnbd": round(float(expected.sum()), 1),
            "spend_actual": round(float(summary["spend_holdout"].sum()), 2),
            "spend_expected_clv": round(
                float((expected * gg.expected_spend(summary["x"], summary["m"])).sum()), 2
            ),
        },
        "segments": segment_table(summary, occ_cycle_days(summary), p_alive),
    }


def occ_cycle_days(summary: pd.DataFrame) -> float:
    """The purchase cycle C the way features computes it (median gap between a customer's
    consecutive purchases, clamped), approximated from the summary: each repeat buyer's mean gap
    t_x / x, median over repeat buyers (CDNOW's per-purchase gaps are not kept in the summary)."""
    rep = summary[summary["x"] > 0]
    gap_s = float(np.median(rep["t_x"] / rep["x"])) * 7 * DAY_S if len(rep) else None
    span_s = int(summary["T"].max() * 7 * DAY_S)
    return cycle_days(gap_s, 0, span_s)


def segment_table(summary: pd.DataFrame, cycle: float, p_alive: np.ndarray) -> dict:
    n = summary["x"] + 1
    spend = summary["first_spend"] + summary["m"].fillna(0) * summary["x"]
    frame = pd.DataFrame(
        {
            "first_days": summary["T"] * 7,
            "silent_days": (summary["T"] - summary["t_x"]) * 7,
            "f_score": rfm_scores(n.astype(float)),
            "m_score": rfm_scores(spend),
            "p_alive": p_alive,
        }
    )
    seg = assign_segments(frame, cycle_days=cycle, config=SegmentConfig())
    bought = summary["x_holdout"] > 0
    out = {"cycle_days": round(cycle, 2)}
    for name in ("new", "active", "vip", "at_risk", "lapsed"):
        mask = (seg == name).to_numpy()
        out[name] = {
            "customers": int(mask.sum()),
            "share_buying_in_holdout": round(float(bought[mask].mean()), 4) if mask.any() else None,
        }
    return out


def main(quick: bool = False) -> dict:
    cache = default_cache_dir()
    with tempfile.TemporaryDirectory(prefix="bench-segments-") as tmp:
        ws = Path(tmp) / "cdnow"
        fetch("cdnow", ws, cache_dir=cache)
        occ = purchase_occasions(ws / "events.parquet")
    ids = sample_ids(cache)
    summary = rfm_summary(occ, end=CALIBRATION_END, holdout_end=HOLDOUT_END, unit_days=7.0)
    sample = summary[summary["user_id"].isin(ids)].reset_index(drop=True)
    result: dict = {
        "data": "CDNOW master (lifetimes 0.11.3), one occasion per customer and day, weeks",
        "selection": "the 2,357 master ids listed in the wheel's CDNOW_sample.txt (first column)",
        "calibration": f"1997-01-01..{CALIBRATION_END.date()}",
        "holdout": f"{(CALIBRATION_END + pd.Timedelta(days=1)).date()}..{HOLDOUT_END.date()}",
        "published_bgnbd": PUBLISHED_BGNBD,
        "published_gamma_gamma": PUBLISHED_GG,
        "sample": evaluate(sample),
    }
    if not quick:
        result["full_cohort"] = evaluate(summary)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(main(quick=parser.parse_args().quick), indent=2))
