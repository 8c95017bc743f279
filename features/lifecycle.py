"""Customer lifecycle as tables: the segment rules and their small typed config, and the purchase
histories (occasions, RFM summaries) that a lifetime model learns from.

The rules (first match; C = the shop's purchase cycle, the median days between a customer's
baskets, `cycle_days` in features/summary.json, so one config fits a grocer and a furniture shop;
"silent" = days since the customer's last event of any kind):

    new      first event within `new_cycles` · C of the reference time (too new to judge);
    lapsed   silent > `lapsed_cycles` · C, or p_alive < `lapsed_p_alive`;
    at_risk  silent > `at_risk_cycles` · C, or p_alive < `at_risk_p_alive`;
    vip      f_score >= `vip_min_f_score` and m_score >= `vip_min_m_score` (without prices:
             f_score >= the larger of the two);
    active   everyone else.

`p_alive` comes from a BG/NBD model (training.clv) where one was fitted; without it (NaN) only the
silence rules apply, which is what `features build` writes into profiles.parquet (features knows no
models). The p_alive rules catch the regular customer who has gone quiet for longer than *their own*
rhythm, which the shop-wide cycle cannot see; the silence rules catch the one-time buyer, whom
BG/NBD always calls alive.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SEGMENTS: tuple[str, ...] = ("new", "active", "vip", "at_risk", "lapsed")
DAY_S = 86400


@dataclass(frozen=True)
class SegmentConfig:
    """Thresholds of the lifecycle segments (see the module docstring). Silence in purchase cycles."""

    new_cycles: float = 4.0
    at_risk_cycles: float = 2.0
    lapsed_cycles: float = 4.0
    # BG/NBD P(alive) below which a customer is at risk / lapsed. 0 switches the rule off.
    at_risk_p_alive: float = 0.5
    lapsed_p_alive: float = 0.2
    # RFM scores are quintiles (1-5) of the rank among buyers; VIP = frequent and top-spending.
    vip_min_f_score: int = 4
    vip_min_m_score: int = 5
    # The horizon of `expected_purchases_90d` and `clv_90d`.
    horizon_days: float = 90.0
    # C in days; 0 = learned from the data (features' cycle_days). The learned C is the median gap
    # over all consecutive baskets, which frequent shoppers dominate: on Complete Journey it is 2.2
    # days, so a household silent for 9 days counts as lapsed; a grocer may prefer to set 7.
    cycle_days: float = 0.0

    def __post_init__(self) -> None:
        for name in ("new_cycles", "at_risk_cycles", "lapsed_cycles", "horizon_days"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"segment config {name} must be a positive number, got {value!r}")
        if self.at_risk_cycles > self.lapsed_cycles:
            raise ValueError(
                f"segment config at_risk_cycles ({self.at_risk_cycles}) must not exceed lapsed_cycles "
                f"({self.lapsed_cycles})"
            )
        if not (math.isfinite(self.cycle_days) and self.cycle_days >= 0):
            raise ValueError(f"segment config cycle_days must be >= 0 (0 = learned), got {self.cycle_days!r}")
        for name in ("at_risk_p_alive", "lapsed_p_alive"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"segment config {name} must be in [0, 1], got {value!r}")
        if self.lapsed_p_alive > self.at_risk_p_alive:
            raise ValueError("segment config lapsed_p_alive must not exceed at_risk_p_alive")
        for name in ("vip_min_f_score", "vip_min_m_score"):
            if getattr(self, name) not in range(1, 6):
                raise ValueError(f"segment config {name} must be a score 1-5, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegmentConfig:
        """From a dict of values or strings (a TOML/JSON file, `--set key=value`); unknown keys are
        an error naming the known ones."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown segment config key(s): {', '.join(unknown)}; known: {', '.join(fields)}"
            )
        typed: dict[str, Any] = {}
        for key, raw in values.items():
            kind = int if fields[key].type in ("int", int) else float
            try:
                typed[key] = kind(raw)
            except (TypeError, ValueError):
                raise ValueError(f"segment config {key} expects {kind.__name__}, got {raw!r}") from None
        return cls(**typed)

    @classmethod
    def from_file(cls, path: Path) -> SegmentConfig:
        """From a TOML (`.toml`) or JSON file of key = value pairs."""
        import json
        import tomllib

        text = Path(path).read_text()
        values = tomllib.loads(text) if Path(path).suffix == ".toml" else json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a table of key = value pairs")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rfm_scores(values: pd.Series) -> pd.Series:
    """1-5 quintile scores of the rank among the given (buyers') values, as profiles_sql computes
    them: 1 + floor(5 · percent_rank), capped at 5; ties share the lower rank; NaN stays NaN."""
    ok = values.notna()
    out = pd.Series(np.nan, index=values.index)
    v = values[ok]
    if len(v) == 0:
        return out
    rank = v.rank(method="min")
    pct = (rank - 1) / (len(v) - 1) if len(v) > 1 else rank * 0.0
    out[ok] = np.minimum(5, 1 + np.floor(5 * pct))
    return out


def vip_rule(frame: pd.DataFrame, *, config: SegmentConfig, has_money: bool = True) -> pd.Series:
    """The VIP rule alone (frequent and top-spending: f_score >= `vip_min_f_score` and m_score >=
    `vip_min_m_score`; without prices f_score >= the larger of the two), whatever the customer's
    lifecycle: a lapsed VIP is still a VIP to the campaign feeds' VIP template. frame: f_score,
    m_score (1-5, NaN for non-buyers). Returns a bool Series on frame's index."""
    if has_money:
        vip = (frame["f_score"] >= config.vip_min_f_score) & (frame["m_score"] >= config.vip_min_m_score)
    else:
        vip = frame["f_score"] >= max(config.vip_min_f_score, config.vip_min_m_score)
    return vip.fillna(False).astype(bool)


def assign_segments(
    frame: pd.DataFrame, *, cycle_days: float, config: SegmentConfig, has_money: bool = True
) -> pd.Series:
    """The segment of every row of `frame` by the rules of the module docstring.

    frame: first_days (days since the first event, any kind), silent_days (days since the last
    event, any kind), f_score, m_score (1-5, NaN for non-buyers) and p_alive (NaN where no model
    applies). Returns a string Series on frame's index with values in SEGMENTS."""
    c = float(cycle_days)
    p_alive = frame["p_alive"].astype("float64")
    silent = frame["silent_days"].astype("float64")
    is_new = frame["first_days"].astype("float64") <= config.new_cycles * c
    lapsed = (silent > config.lapsed_cycles * c) | (p_alive < config.lapsed_p_alive)
    at_risk = (silent > config.at_risk_cycles * c) | (p_alive < config.at_risk_p_alive)
    vip = vip_rule(frame, config=config, has_money=has_money)
    seg = np.select(
        [is_new, lapsed, at_risk, vip],
        ["new", "lapsed", "at_risk", "vip"],
        "active",
    )
    return pd.Series(seg, index=frame.index, dtype=object)


def purchase_occasions(
    events: str | Path, catalog: str | Path | None = None, *, event_types: tuple[str, ...] = ("purchase",)
) -> pd.DataFrame:
    """One row per (customer, UTC day) with a purchase: user_id, day (datetime64 UTC midnight),
    spend (Σ quantity · price, the event price else the catalogue price else 0), orders (distinct
    baskets that day: order id, else one per day). From validated Parquet files via DuckDB."""
    import duckdb

    from features.transforms import parquet_source, sql_str

    con = duckdb.connect(":memory:")
    try:
        cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {parquet_source(events)}").fetchall()}
        price = "e.price" if "price" in cols else "CAST(NULL AS DOUBLE)"
        qty = "e.quantity" if "quantity" in cols else "1"
        order = "e.order_id" if "order_id" in cols else "CAST(NULL AS VARCHAR)"
        join, cat_price = "", "NULL"
        if catalog is not None and Path(catalog).exists():
            join = f"LEFT JOIN (SELECT item_id, price AS cprice FROM {parquet_source(catalog)}) c USING (item_id)"
            cat_price = "c.cprice"
        types = ", ".join(sql_str(t) for t in event_types)
        return con.execute(f"""
            SELECT e.user_id, CAST(date_trunc('day', e.timestamp) AS TIMESTAMPTZ) AS day,
                   sum({qty} * coalesce({price}, {cat_price}, 0.0)) AS spend,
                   greatest(1, count(DISTINCT {order})) AS orders
            FROM {parquet_source(events)} e {join}
            WHERE e.event_type IN ({types})
            GROUP BY e.user_id, day
            ORDER BY e.user_id, day""").df()
    finally:
        con.close()


def rfm_summary(
    occasions: pd.DataFrame,
    *,
    end: pd.Timestamp,
    holdout_end: pd.Timestamp | None = None,
    unit_days: float = 7.0,
) -> pd.DataFrame:
    """Per customer whose first occasion is on or before `end` (the calibration period's last day),
    the lifetime models' input in units of `unit_days`:

    x = repeat occasions up to `end` (occasions after the first), t_x = time of the last of them
    since the first, T = time from the first to `end`, m = mean spend of the repeat occasions (NaN
    when x = 0), first_spend, and with `holdout_end` x_holdout / spend_holdout = occasions and spend
    after `end` up to `holdout_end`. occasions: user_id, day (UTC midnight), spend (purchase_occasions).
    Returned sorted by user_id."""
    occ = occasions.sort_values(["user_id", "day"], kind="stable")
    day = pd.to_datetime(occ["day"], utc=True)
    end = pd.Timestamp(end).tz_localize("UTC") if pd.Timestamp(end).tzinfo is None else pd.Timestamp(end)
    calib = occ[day <= end]
    g = calib.groupby("user_id", sort=True)
    first = pd.to_datetime(g["day"].min(), utc=True)
    last = pd.to_datetime(g["day"].max(), utc=True)
    n = g.size()
    total = g["spend"].sum()
    first_spend = g["spend"].first()
    unit = pd.Timedelta(days=unit_days)
    out = pd.DataFrame(
        {
            "x": (n - 1).astype("int64"),
            "t_x": (last - first) / unit,
            "T": (end - first) / unit,
            "m": ((total - first_spend) / (n - 1)).where(n > 1),
            "first_spend": first_spend,
        }
    )
    if holdout_end is not None:
        hend = pd.Timestamp(holdout_end)
        hend = hend.tz_localize("UTC") if hend.tzinfo is None else hend
        hold = occ[(day > end) & (day <= hend)].groupby("user_id")
        out["x_holdout"] = hold.size().reindex(out.index, fill_value=0).astype("int64")
        out["spend_holdout"] = hold["spend"].sum().reindex(out.index, fill_value=0.0)
    out.index.name = "user_id"
    return out.reset_index()
