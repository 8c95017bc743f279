"""The A/B report (`shoprec ab report`): attribution of clicks and purchases to the answers in the
impression log, then per variant the counts, rates with 95% intervals, revenue per user, the
uplift against control with its p-value, and a sample-ratio-mismatch check.

Attribution (`attribute`):
- An event that quotes a `recommendation_id` of the impression log belongs to that answer: a
  `click`, `view` or `add_to_cart` makes it *clicked*, a `purchase` is an attributed purchase (and
  clicks it too).
- A purchase without one (or with an id the log does not hold) belongs to the latest impression
  that showed that item to that customer within `window_hours` before it (last touch; the
  impression log holds salted hashes, so the event's user id is hashed with the service's salt).
- Anything else (a view without an id, a purchase of an item never shown) is not attributed.

Statistics (`summarise`, with serving.ab_stats), all from scipy.stats, the customer being the unit
the split randomises:
- conversion = customers with at least one attributed purchase / customers shown a block (Wilson
  interval, `binomtest(...).proportion_ci`); click-through = clicked blocks / blocks (Wilson, which
  treats a customer's blocks as independent: read its interval as a lower bound on the noise);
- uplift of a variant against control: the relative change of conversion and click-through (the
  risk ratio minus one, `contingency.relative_risk`, Katz log interval) with the p-value of
  Pearson's chi-square test (`chi2_contingency`); for revenue per user the difference of means
  with Welch's interval and p-value (`ttest_ind(equal_var=False)`);
- sample-ratio mismatch: chi-square goodness of fit of customers per variant against the
  configured shares (`chisquare`); flagged below p = 0.001, the usual threshold (a real SRM has a
  tiny p-value; a looser one would raise false alarms in every tenth experiment).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.ab import CONTROL, hash_user, read_impressions
from serving.ab_stats import mean_difference, proportion_uplift, sample_ratio, wilson

CLICK_TYPES = frozenset({"click", "view", "add_to_cart"})  # quoting an answer's id: a click on it
PURCHASE = "purchase"
REPORT_JSON = Path("reports") / "ab_report.json"  # serving.views.AB_REPORT reads these two
REPORT_PNG = "ab_report.png"
# Where a block was shown, from the impression log's `endpoint`: `email` for the e-mail feed
# (`shoprec recommend`, "feed") and the campaign feeds ("campaign/NAME"), `site` for the service's
# routes; `unknown` for lines written before the log carried the endpoint (counted in "all" only).
CHANNELS = ("all", "site", "email")


def channel_of(endpoints: pd.Series) -> pd.Series:
    """Each impression's channel (`CHANNELS` above) from its endpoint."""
    e = endpoints.astype(object).where(endpoints.notna(), None)
    return e.map(
        lambda v: (
            "unknown"
            if v is None or str(v) == ""
            else "email"
            if str(v) == "feed" or str(v).startswith("campaign/")
            else "site"
        )
    )


@dataclass(frozen=True)
class ReportConfig:
    """What the report needs beyond the logs."""

    shares: Mapping[str, float] = field(default_factory=lambda: {"champion": 1.0})  # configured split
    salt: str = "shoprec"  # the service's SHOPREC_AB_SALT: how the impression log hashed user ids
    window_hours: float = 24.0  # a purchase without an id counts for a block shown this long before
    control: str = CONTROL
    confidence: float = 0.95
    srm_alpha: float = 0.001
    channel: str = "all"  # "all", or only the blocks of one channel (CHANNELS)

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}, got {self.channel!r}")


# -- attribution ----------------------------------------------------------------------------------
def _epoch(ts: pd.Series) -> pd.Series:
    """Timestamps (datetimes, ISO text or epoch seconds) as float epoch seconds."""
    if pd.api.types.is_numeric_dtype(ts):
        return ts.astype(float)
    dt = pd.to_datetime(ts, utc=True, format="mixed") if ts.dtype == object else pd.to_datetime(ts, utc=True)
    return dt.astype("datetime64[us, UTC]").astype("int64") / 1e6


def _ids(s: pd.Series) -> pd.Series:
    """Recommendation ids as text, None where absent or blank."""
    s = s.astype(object).where(s.notna(), None)
    return s.map(lambda v: None if v is None or str(v).strip() == "" else str(v))


def attribute(
    impressions: pd.DataFrame, events: pd.DataFrame, *, salt: str, window_hours: float = 24.0
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per impression: recommendation_id, variant, user, ts, clicked (bool), purchases (attributed
    purchase lines), revenue (their price x quantity). Also counts of how each purchase was
    attributed: by_id, by_window, not_attributed.

    impressions: the impression log (serving.ab.read_impressions). events: user_id, item_id,
    event_type, timestamp, and optionally recommendation_id, price, quantity (missing price: 0)."""
    imp = impressions[["recommendation_id", "variant", "user", "items", "ts"]].copy()
    imp = imp.dropna(subset=["recommendation_id", "user"]).drop_duplicates("recommendation_id")
    imp["ts"] = imp["ts"].astype(float)
    ev = events.copy()
    for col, default in (("recommendation_id", None), ("price", 0.0), ("quantity", 1)):
        if col not in ev.columns:
            ev[col] = default
    ev = ev[ev["event_type"].isin(CLICK_TYPES | {PURCHASE})].reset_index(drop=True)
    ev["rid"] = _ids(ev["recommendation_id"])
    ev["ts"] = _epoch(ev["timestamp"])
    ev["amount"] = pd.to_numeric(ev["price"], errors="coerce").fillna(0.0) * pd.to_numeric(
        ev["quantity"], errors="coerce"
    ).fillna(1).clip(lower=1)
    known = ev["rid"].isin(set(imp["recommendation_id"]))

    clicked = set(ev.loc[known & ev["event_type"].isin(CLICK_TYPES | {PURCHASE}), "rid"])
    buys = ev[ev["event_type"] == PURCHASE]
    by_id = buys[known.loc[buys.index]][["rid", "amount"]]
    loose = buys[~known.loc[buys.index]].copy()
    by_window = pd.DataFrame({"rid": pd.Series(dtype=object), "amount": pd.Series(dtype=float)})
    if not loose.empty and not imp.empty:
        ids = loose["user_id"].astype(str)
        hashed = {u: hash_user(u, salt) for u in ids.unique()}  # once per customer, not per event
        loose["user"] = ids.map(hashed)
        loose["event"] = loose.index
        shown = imp.explode("items").rename(columns={"items": "item_id", "ts": "shown_ts"})
        shown = shown.dropna(subset=["item_id"])
        shown["item_id"] = shown["item_id"].astype(str)
        loose["item_id"] = loose["item_id"].astype(str)
        m = loose[["event", "user", "item_id", "ts", "amount"]].merge(
            shown[["recommendation_id", "user", "item_id", "shown_ts"]], on=["user", "item_id"]
        )
        m = m[(m["shown_ts"] <= m["ts"]) & (m["ts"] <= m["shown_ts"] + window_hours * 3600)]
        last = m.sort_values("shown_ts", kind="stable").groupby("event").tail(1)  # last touch
        by_window = last.rename(columns={"recommendation_id": "rid"})[["rid", "amount"]]
    bought = pd.concat([by_id, by_window], ignore_index=True)
    per_rid = bought.groupby("rid").agg(purchases=("amount", "size"), revenue=("amount", "sum"))
    out = imp.drop(columns="items").set_index("recommendation_id")
    out = out.join(per_rid).fillna({"purchases": 0, "revenue": 0.0})
    out["purchases"] = out["purchases"].astype(int)
    out["clicked"] = out.index.isin(clicked)
    counts = {
        "purchases": len(buys),
        "by_id": len(by_id),
        "by_window": len(by_window),
        "not_attributed": len(buys) - len(by_id) - len(by_window),
        "clicks_by_id": len(clicked),
    }
    return out.reset_index(), counts


def per_user(per_impression: pd.DataFrame) -> pd.DataFrame:
    """One row per customer: variant (of their first block), impressions, clicks, purchases,
    revenue, converted (at least one attributed purchase)."""
    first = per_impression.sort_values("ts").groupby("user")["variant"].first()
    g = per_impression.groupby("user").agg(
        impressions=("recommendation_id", "size"),
        clicks=("clicked", "sum"),
        purchases=("purchases", "sum"),
        revenue=("revenue", "sum"),
    )
    g["variant"] = first
    g["converted"] = g["purchases"] > 0
    return g.reset_index()


def summarise(per_impression: pd.DataFrame, config: ReportConfig) -> dict[str, Any]:
    """The report object: variants (one row each), uplift (one row per variant and metric against
    control) and the sample-ratio check."""
    users = (
        per_user(per_impression)
        if not per_impression.empty
        else pd.DataFrame(
            columns=["user", "variant", "impressions", "clicks", "purchases", "revenue", "converted"]
        )
    )
    conf = config.confidence
    names = sorted(set(users["variant"]), key=lambda v: (v == config.control, v))
    rows, by_variant = [], {}
    for v in names:
        u = users[users["variant"] == v]
        imp = per_impression[per_impression["user"].isin(u["user"])]
        n_users, n_imp = len(u), len(imp)
        clicks, converted = int(imp["clicked"].sum()), int(u["converted"].sum())
        ctr_ci, conv_ci = wilson(clicks, n_imp, conf), wilson(converted, n_users, conf)
        rows.append(
            {
                "variant": v,
                "users": n_users,
                "share": n_users / len(users),
                "impressions": n_imp,
                "clicks": clicks,
                "purchases": int(u["purchases"].sum()),
                "converted_users": converted,
                "revenue": round(float(u["revenue"].sum()), 2),
                "ctr": clicks / n_imp if n_imp else None,
                "ctr_low": ctr_ci[0],
                "ctr_high": ctr_ci[1],
                "conversion": converted / n_users if n_users else None,
                "conversion_low": conv_ci[0],
                "conversion_high": conv_ci[1],
                "revenue_per_user": float(u["revenue"].mean()) if n_users else None,
            }
        )
        by_variant[v] = (rows[-1], u)
    uplift = []
    if config.control in by_variant:
        c, cu = by_variant[config.control]
        for v in names:
            if v == config.control:
                continue
            r, u = by_variant[v]
            for metric, hits, n, c_hits, c_n in (
                ("conversion", r["converted_users"], r["users"], c["converted_users"], c["users"]),
                ("ctr", r["clicks"], r["impressions"], c["clicks"], c["impressions"]),
            ):
                uplift.append(
                    {"variant": v, "metric": metric, "value": r[metric], "control": c[metric],
                     **proportion_uplift(hits, n, c_hits, c_n, conf)}
                )  # fmt: skip
            d = mean_difference(u["revenue"].to_numpy(float), cu["revenue"].to_numpy(float), conf)
            base = c["revenue_per_user"]
            rel = d["difference"] / base if d["difference"] is not None and base else None
            uplift.append(
                {"variant": v, "metric": "revenue_per_user", "value": r["revenue_per_user"], "control": base,
                 "uplift": rel, "uplift_low": None, "uplift_high": None, "p_value": d["p_value"],
                 "difference_low": d["difference_low"], "difference_high": d["difference_high"]}
            )  # fmt: skip
        for row in uplift:
            row["significant"] = row["p_value"] is not None and row["p_value"] < 1 - conf
    srm = sample_ratio({r["variant"]: r["users"] for r in rows}, config.shares, config.srm_alpha)
    return {"variants": rows, "uplift": uplift, "srm": srm}


# -- the workspace: reading the logs, writing the report ------------------------------------------
def load_events(ws: Any, since: float | None = None) -> pd.DataFrame:
    """The events that can be attributed: the raw events table and the change log (what `POST
    /events` appended), clicks, views, carts and purchases at or after `since` (epoch s), with a
    price for purchases (the event's, else the catalogue's)."""
    from features import changelog

    cols = ["user_id", "item_id", "event_type", "timestamp", "quantity", "price", "recommendation_id"]
    types = sorted(CLICK_TYPES | {PURCHASE})
    parts = []
    raw = ws.raw("events")
    if raw is not None:
        if raw.suffix == ".parquet":
            import pyarrow.parquet as pq

            have = set(pq.read_schema(raw).names)
            keep: list[Any] = [("event_type", "in", types)]
            if since is not None:  # a shop's history is long; the experiment is recent
                keep.append(("timestamp", ">=", pd.Timestamp(since, unit="s", tz="UTC")))
            df = pd.read_parquet(raw, columns=[c for c in cols if c in have], filters=keep)
        else:
            df = pd.read_csv(raw)
            df = df[df["event_type"].isin(types)]
        parts.append(df)
    if changelog.log_path(ws, "events").exists():
        table, _ = changelog.read(ws, "events")
        parts.append(table.select([c for c in cols if c in table.column_names]).to_pandas())
    if not parts:
        return pd.DataFrame({c: [] for c in cols})
    ev = pd.concat([p.reindex(columns=cols) for p in parts], ignore_index=True)
    ev["timestamp"] = _epoch(ev["timestamp"])
    if since is not None:
        ev = ev[ev["timestamp"] >= since]
    ev = ev.reset_index(drop=True)
    missing = ev["price"].isna() & (ev["event_type"] == PURCHASE)
    if missing.any():
        ev.loc[missing, "price"] = ev.loc[missing, "item_id"].astype(str).map(_catalog_prices(ws))
    return ev


def _catalog_prices(ws: Any) -> pd.Series:
    for path in (ws.validated("catalog"), ws.raw("catalog")):
        if path is not None and Path(path).exists():
            cat = pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path)
            if "price" in cat.columns:
                return cat.assign(item_id=cat["item_id"].astype(str)).set_index("item_id")["price"]
    return pd.Series(dtype=float)


def channel_counts(impressions: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Blocks shown per channel and variant (known customers' blocks): where the exposures came from."""
    imp = impressions.dropna(subset=["recommendation_id", "user"])
    if imp.empty:
        return {}
    ch = channel_of(imp["endpoint"] if "endpoint" in imp else pd.Series(None, index=imp.index))
    table = imp.groupby([ch.rename("channel"), imp["variant"]]).size()
    return {c: {str(v): int(n) for v, n in table[c].items()} for c in sorted(set(ch))}


def build_report(impressions: pd.DataFrame, events: pd.DataFrame, config: ReportConfig) -> dict[str, Any]:
    """attribute + summarise, with the attribution counts and the settings in the object. With
    `config.channel` other than "all", only that channel's blocks count: its customers are those it
    showed a block, a purchase without an id goes to that channel's latest block of the item (last
    touch within the channel), and an event quoting another channel's block is left out (its
    purchases counted as `other_channels`)."""
    channels = channel_counts(impressions)
    elsewhere = 0
    if config.channel != "all":
        ends = (
            impressions["endpoint"] if "endpoint" in impressions else pd.Series(None, index=impressions.index)
        )
        mine = channel_of(ends) == config.channel
        # an event that quotes another channel's block belongs to that block: never to this channel's
        # by the window
        theirs = set(impressions.loc[~mine, "recommendation_id"].dropna().astype(str))
        if theirs and "recommendation_id" in events:
            quoted = _ids(events["recommendation_id"]).isin(theirs)
            elsewhere = int((quoted & (events["event_type"] == PURCHASE)).sum())
            events = events[~quoted]
        impressions = impressions[mine]
    per_impression, counts = attribute(
        impressions, events, salt=config.salt, window_hours=config.window_hours
    )
    if config.channel != "all":  # every purchase is in the total, those of other channels apart
        counts["purchases"] += elsewhere
        counts["other_channels"] = elsewhere
    report = summarise(per_impression, config)
    anonymous = int(impressions["user"].isna().sum()) if "user" in impressions else 0
    report["attribution"] = {
        **counts,
        "window_hours": config.window_hours,
        "anonymous_impressions": anonymous,
    }
    report["control"] = config.control
    report["confidence"] = config.confidence
    report["channel"] = config.channel
    report["channels"] = channels
    return report


def ab_report(
    ws: Any, config: ReportConfig, out: Path | None = None, *, with_plot: bool = True
) -> dict[str, Any]:
    """The report of the workspace's impression log (`serving/impressions.jsonl`) and events,
    written to `out` (default DIR/reports/ab_report.json) with its plot beside it (.png)."""
    import json

    path = ws.serving_dir / "impressions.jsonl"
    impressions = read_impressions(path)
    since = float(impressions["ts"].min()) if len(impressions) else None
    report = build_report(impressions, load_events(ws, since), config)
    first, last = (impressions["ts"].min(), impressions["ts"].max()) if len(impressions) else (None, None)
    report["period"] = {
        "from": _iso(first),
        "to": _iso(last),
        "impression_log": str(path),
    }
    out = Path(out) if out is not None else ws.root / REPORT_JSON
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    if with_plot:
        from serving.ab_display import plot

        report["plot"] = png.name
        plot(report, png)
    out.write_text(json.dumps(plain_json(report), indent=2, default=str) + "\n")
    return report


def _iso(ts: float | None) -> str | None:
    if ts is None or not math.isfinite(float(ts)):
        return None
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds")


def plain_json(obj: Any) -> Any:
    """NaN and infinities as null (strict JSON), numpy scalars as Python ones."""
    if isinstance(obj, dict):
        return {k: plain_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
