"""`shoprec segments`: one row per customer with the lifecycle segment and the lifetime figures a
marketer lists by (the contract's columns):

    user_id, segment, recency_days, frequency, monetary, p_alive, expected_purchases_90d, clv_90d

recency_days, frequency (orders) and monetary (total spend) are features' profiles.parquet, so the
list and the profiles agree. p_alive and expected purchases come from a BG/NBD model, spend per
purchase from Gamma-Gamma (training.clv), both fitted on every buyer's purchase days (one occasion
per customer and UTC day, in weeks) up to the workspace's reference time (the last event);
clv_90d = expected purchases in the horizon × expected spend per purchase (undiscounted: 90 days).
Customers without a purchase (only views) have no purchase history to model: their p_alive,
expected purchases and CLV are empty and only the silence rules segment them. The segment rules and
their config are features.lifecycle's.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.lifecycle import (
    DAY_S,
    SEGMENTS,
    SegmentConfig,
    assign_segments,
    purchase_occasions,
    rfm_summary,
)
from features.workspace import Workspace
from training.clv import BGNBDParams, GammaGammaParams, fit_bgnbd, fit_gamma_gamma

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "user_id",
    "segment",
    "recency_days",
    "frequency",
    "monetary",
    "p_alive",
    "expected_purchases_90d",
    "clv_90d",
)
UNIT_DAYS = 7.0  # the lifetime models are fitted in weeks, the unit of the published CDNOW figures
MIN_REPEAT_BUYERS = 10  # fewer customers with a repeat purchase than this: no model, silence rules only


@dataclass
class SegmentsResult:
    """The list (`frame`, the contract's columns in order) and what made it."""

    frame: pd.DataFrame
    bgnbd: BGNBDParams | None
    gamma_gamma: GammaGammaParams | None
    reference_time: pd.Timestamp
    cycle_days: float
    config: SegmentConfig
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        counts = self.frame["segment"].value_counts()
        return {
            "customers": len(self.frame),
            "segments": {s: int(counts.get(s, 0)) for s in SEGMENTS},
            "reference_time": self.reference_time.isoformat(),
            "cycle_days": round(self.cycle_days, 3),
            "bgnbd": self.bgnbd.to_dict() if self.bgnbd else None,
            "gamma_gamma": self.gamma_gamma.to_dict() if self.gamma_gamma else None,
            "config": self.config.to_dict(),
            "warnings": self.warnings,
        }


def _features_summary(ws: Workspace) -> dict[str, Any]:
    path = ws.features_dir / "summary.json"
    profiles = ws.feature("profiles")
    if not path.exists() or not profiles.exists():
        raise FileNotFoundError(f"{profiles} is missing: run `shoprec features build --data {ws.root}` first")
    return json.loads(path.read_text())["features"]


def customer_segments(ws: Workspace, config: SegmentConfig | None = None) -> SegmentsResult:
    """The segment list of the workspace's customers (see the module docstring), as of the
    reference time of the last feature build. Raises FileNotFoundError when features are missing."""
    config = config or SegmentConfig()
    info = _features_summary(ws)
    ref = pd.Timestamp(info["reference_time"])
    ref = ref.tz_localize("UTC") if ref.tzinfo is None else ref.tz_convert("UTC")
    cycle = config.cycle_days or float(info["cycle_days"])
    types = tuple(info.get("target_event_types") or ("purchase",))
    prof = pd.read_parquet(ws.feature("profiles"))
    ref_s = int(ref.timestamp())
    frame = pd.DataFrame(
        {
            "user_id": prof["user_id"].astype(str),
            "recency_days": prof["recency_days"].astype("float64"),
            "frequency": prof["frequency"].astype("int64"),
            "monetary": prof["monetary"].astype("float64"),
            "first_days": (ref_s - prof["first_ts"].astype("int64")) / DAY_S,
            "silent_days": (ref_s - prof["last_ts"].astype("int64")) / DAY_S,
        }
    )
    buyers = frame["frequency"] > 0
    frame["f_score"] = prof["f_score"].astype("float64").where(buyers)
    frame["m_score"] = prof["m_score"].astype("float64").where(buyers)
    has_money = bool((frame["monetary"] > 0).any())

    catalog = ws.validated("catalog") if ws.validated("catalog").exists() else None
    occ = purchase_occasions(ws.validated("events"), catalog, event_types=types)
    summary = rfm_summary(occ, end=ref.normalize(), unit_days=UNIT_DAYS).set_index("user_id")
    notes: list[str] = []
    bg, gg = _fit_models(summary, notes)
    horizon = config.horizon_days / UNIT_DAYS
    s = summary.reindex(frame["user_id"])
    if bg is not None:
        p_alive = bg.p_alive(s["x"], s["t_x"], s["T"])
        expected = bg.expected_purchases(horizon, s["x"], s["t_x"], s["T"])
    else:
        p_alive = expected = np.full(len(frame), np.nan)
    known = s["x"].notna().to_numpy()
    frame["p_alive"] = np.where(known, p_alive, np.nan)
    frame["expected_purchases_90d"] = np.where(known, expected, np.nan)
    if gg is not None:
        spend = gg.expected_spend(s["x"].fillna(0), s["m"])
        frame["clv_90d"] = frame["expected_purchases_90d"].to_numpy() * spend
    else:
        frame["clv_90d"] = np.nan
    frame["segment"] = assign_segments(frame, cycle_days=cycle, config=config, has_money=has_money)
    out = frame[list(COLUMNS)].reset_index(drop=True)
    return SegmentsResult(out, bg, gg, ref, cycle, config, notes)


def _fit_models(
    summary: pd.DataFrame, notes: list[str]
) -> tuple[BGNBDParams | None, GammaGammaParams | None]:
    """BG/NBD and Gamma-Gamma on the buyers with T > 0 (a first purchase on the reference day says
    nothing yet); None with a note in `notes` where the data cannot carry a model."""
    fit_rows = summary[summary["T"] > 0]
    repeaters = int((fit_rows["x"] > 0).sum())
    if repeaters < MIN_REPEAT_BUYERS:
        notes.append(
            f"BG/NBD not fitted: {repeaters} customers with a repeat purchase (< {MIN_REPEAT_BUYERS}); "
            "p_alive, expected purchases and CLV are empty, segments from silence and RFM alone"
        )
        return None, None
    bg = fit_bgnbd(fit_rows["x"], fit_rows["t_x"], fit_rows["T"])
    log.info("BG/NBD on %d buyers: r=%.3f alpha=%.3f a=%.3f b=%.3f", bg.n, bg.r, bg.alpha, bg.a, bg.b)
    gg = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gg = fit_gamma_gamma(fit_rows["x"], fit_rows["m"])
        if gg.q <= 1:
            notes.append(f"Gamma-Gamma q={gg.q:.3f} <= 1 (no finite mean spend): clv_90d left empty")
            gg = None
    except ValueError as e:
        notes.append(f"Gamma-Gamma not fitted ({e}): clv_90d left empty")
    return bg, gg


def write_segments(frame: pd.DataFrame, out: Path) -> Path:
    """Write the list as .csv or .parquet (by the suffix); the folder is created."""
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out must end in .csv or .parquet, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    return out
