"""Who is in an e-mail campaign today, and why: the triggers of `shoprec campaign`, as plain
functions over tables (no engine, no model), each with a known answer on a tiny shop
(tests/test_campaigns.py). serving/campaigns.py turns the customers they select into feeds through
the engine.

Every function returns `Trigger`s: the customer, the sentence a marketer reads in the feed's
`trigger` column, and the items the trigger is about (the cart item, the items due, the durable).

- `abandoned_carts`: an item added to the cart at least `hours` ago (and at most
  `max_cart_age_hours`), not removed since, and neither it nor anything of its category bought
  since. One mail per customer, about their newest abandoned item. *Price doubt* when the item costs
  more than `spend_ratio` × the median unit price the customer paid before, or when they came back
  to it `repeat_views` times (views and carts in the last `doubt_days`) and it costs more than the
  median of its category; otherwise *product doubt* (a first-time buyer, or an item within what
  they usually pay).
- `lapsed_customers`: the customers in the wanted lifecycle segments (training.segments).
- `due_purchases`: re-buyable items whose learned window (training.policy.RebuyPolicy.back_at, at
  `due_fraction` of the learned interval) ends within the coming `due_days`, or ended at most
  `overdue_days` ago.
- `recent_durables`: a durable (RebuyPolicy.durable_until after the purchase) bought between
  `after_days` and `after_days + after_window_days` ago: a daily run mails each durable once.

Times are epoch seconds; `now` is the moment the campaign runs for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

DAY = 86_400.0
PRICE_DOUBT = "price doubt"
PRODUCT_DOUBT = "product doubt"


@dataclass(frozen=True)
class Trigger:
    """One customer selected by a campaign: `text` is why (for a marketer), `items` what about,
    `kind` a sub-case (abandoned-cart: price doubt / product doubt; reactivation: the segment)."""

    user_id: str
    text: str
    items: tuple[str, ...] = ()
    kind: str = ""


def _ago(seconds: float) -> str:
    """'30 hours' / '3 days' for a marketer."""
    hours = seconds / 3600.0
    if hours < 48:
        return f"{hours:.0f} hours"
    return f"{hours / 24:.0f} days"


def _price(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "an unknown price"


def _title(items: pd.DataFrame, item_id: str) -> str:
    if item_id in items.index:
        t = items.at[item_id, "title"]
        if isinstance(t, str) and t:
            return t
    return item_id


def typical_paid(events: pd.DataFrame, items: pd.DataFrame, now: float) -> pd.Series:
    """Per customer, the median unit price of what they bought before `now` (the event's price,
    else the catalogue's): what they usually spend on one item."""
    p = events[(events["event_type"] == "purchase") & (events["ts"] <= now)]
    if p.empty:
        return pd.Series(dtype="float64")
    price = p["price"] if "price" in p.columns else pd.Series(np.nan, index=p.index)
    price = price.fillna(p["item_id"].map(items["price"]) if "price" in items.columns else np.nan)
    return price.groupby(p["user_id"]).median().dropna()


def abandoned_carts(events: pd.DataFrame, items: pd.DataFrame, now: float, config: Any) -> list[Trigger]:
    """Customers with an abandoned cart at `now` (module docstring), newest first.

    events: user_id, item_id, event_type, ts (epoch s), price (optional). items: indexed by item_id,
    with title, category, price (the live catalogue). config: hours, max_cart_age_hours,
    repeat_views, doubt_days, spend_ratio (serving.campaigns.CampaignConfig)."""
    ev = events[events["ts"] <= now]
    adds = ev[ev["event_type"] == "add_to_cart"]
    if adds.empty:
        return []
    last_add = adds.groupby(["user_id", "item_id"], sort=False)["ts"].max().rename("added").reset_index()
    window = (last_add["added"] <= now - config.hours * 3600.0) & (
        last_add["added"] >= now - config.max_cart_age_hours * 3600.0
    )
    carts = last_add[window]
    if carts.empty:
        return []
    # Removed from the cart since: not abandoned, rejected.
    removed = ev[ev["event_type"] == "remove_from_cart"].groupby(["user_id", "item_id"])["ts"].max()
    r = carts.set_index(["user_id", "item_id"]).index.map(removed.to_dict()).astype("float64")
    carts = carts[~(np.nan_to_num(np.asarray(r), nan=-np.inf) >= carts["added"].to_numpy())]
    # Bought since (the item or anything of its category): the cart is resolved.
    cat_of = items["category"] if "category" in items.columns else pd.Series(dtype=object)
    buys = ev[ev["event_type"] == "purchase"][["user_id", "item_id", "ts"]]
    buys = buys.assign(category=buys["item_id"].map(cat_of))
    carts = carts.assign(category=carts["item_id"].map(cat_of))
    m = carts.merge(buys, on="user_id", suffixes=("", "_bought"))
    same = (m["item_id_bought"] == m["item_id"]) | (
        m["category"].notna() & (m["category_bought"] == m["category"])
    )
    resolved = m[same & (m["ts"] > m["added"])][["user_id", "item_id"]].drop_duplicates()
    carts = carts.merge(resolved.assign(_r=True), on=["user_id", "item_id"], how="left")
    carts = carts[carts["_r"].isna()].drop(columns="_r")
    if carts.empty:
        return []
    price = carts["item_id"].map(items["price"]) if "price" in items.columns else np.nan
    carts = carts.assign(price=pd.to_numeric(price, errors="coerce"))
    # The newest abandoned item per customer (ties: the pricier one).
    carts = carts.sort_values(["added", "price"], ascending=[False, False], kind="stable")
    first = carts.drop_duplicates("user_id")
    n_items = carts.groupby("user_id").size()
    typical = typical_paid(events, items, now)
    recent = ev[(ev["ts"] >= now - config.doubt_days * DAY) & ev["event_type"].isin(("view", "add_to_cart"))]
    visits = recent.groupby(["user_id", "item_id"]).size()
    cat_median = _category_medians(items)
    out = []
    for row in first.itertuples(index=False):
        uid, iid, price = str(row.user_id), str(row.item_id), float(row.price)
        kind, why = _doubt(
            price,
            typical.get(uid, np.nan),
            int(visits.get((uid, iid), 0)),
            cat_median.get(row.category, np.nan) if isinstance(row.category, str) else np.nan,
            config,
        )
        more = int(n_items[uid]) - 1
        text = (
            f"left {_title(items, iid)} (price {_price(price)}) in the cart {_ago(now - row.added)} ago "
            f"without buying{f' (and {more} more item(s))' if more else ''}: {kind}, {why}"
        )
        out.append(Trigger(uid, text, (iid,), kind))
    return out


def _category_medians(items: pd.DataFrame) -> dict[str, float]:
    if "category" not in items.columns or "price" not in items.columns:
        return {}
    return pd.to_numeric(items["price"], errors="coerce").groupby(items["category"]).median().to_dict()


def _doubt(price: float, typical: float, visits: int, cat_median: float, config: Any) -> tuple[str, str]:
    """(kind, why) of an abandoned item: the rule of the module docstring."""
    if np.isfinite(price) and np.isfinite(typical) and price > config.spend_ratio * typical:
        return PRICE_DOUBT, f"it costs more than the {typical:.2f} they usually pay per item"
    if (
        np.isfinite(price)
        and np.isfinite(cat_median)
        and visits >= config.repeat_views
        and price > cat_median
    ):
        return PRICE_DOUBT, (
            f"they came back to it {visits} times and it costs more than most of its category "
            f"(median {cat_median:.2f})"
        )
    if not np.isfinite(typical):
        return PRODUCT_DOUBT, "no purchase before (a first-time buyer)"
    return PRODUCT_DOUBT, f"within what they usually pay ({typical:.2f} per item)"


def lapsed_customers(segments: pd.DataFrame, wanted: tuple[str, ...]) -> list[Trigger]:
    """The customers of `segments` (training.segments' list: user_id, segment, recency_days,
    frequency, p_alive) whose segment is in `wanted`, least likely alive first."""
    s = segments[segments["segment"].isin(wanted)]
    s = s.sort_values(["p_alive", "recency_days"], ascending=[True, False], na_position="last", kind="stable")
    out = []
    for row in s.itertuples(index=False):
        label = str(row.segment).replace("_", " ")
        parts = []
        if pd.notna(row.recency_days) and row.frequency > 0:
            parts.append(f"last purchase {row.recency_days:.0f} days ago after {int(row.frequency)} order(s)")
        else:
            parts.append("no purchase yet")
        if pd.notna(row.p_alive):
            parts.append(f"p_alive {row.p_alive:.2f}")
        out.append(Trigger(str(row.user_id), f"{label}: {', '.join(parts)}", (), str(row.segment)))
    return out


def last_purchases(events: pd.DataFrame, now: float) -> pd.DataFrame:
    """The last purchase of each (customer, item) up to `now`: user_id, item_id, last_ts."""
    p = events[(events["event_type"] == "purchase") & (events["ts"] <= now)]
    g = p.groupby(["user_id", "item_id"], sort=False)["ts"].max()
    return g.rename("last_ts").reset_index()


def policy_at(policy: Any, fraction: float) -> Any:
    """The re-buy policy with its window at `fraction` of the learned interval (1.0: the median
    interval, when the customer usually buys again). The serving policy's own fraction says when an
    item *may* come back (often at once); a reminder is due when the customer runs out."""
    if dataclasses.is_dataclass(policy) and "window_fraction" in {f.name for f in dataclasses.fields(policy)}:
        return dataclasses.replace(policy, window_fraction=float(fraction))
    return policy


def due_purchases(
    purchases: pd.DataFrame, items: pd.DataFrame, policy: Any, now: float, config: Any
) -> list[Trigger]:
    """Customers with re-buyable items due (module docstring), soonest due first per customer.

    purchases: last_purchases(); items: indexed by item_id with title, category; policy: the
    champion's training.policy.RebuyPolicy; config: due_days, overdue_days, due_fraction."""
    if purchases.empty:
        return []
    cats = purchases["item_id"].map(items["category"]).fillna("").astype(str).str.strip("/").to_numpy(object)
    users = purchases["user_id"].astype(str).to_numpy(object)
    last = purchases["last_ts"].to_numpy(np.float64)
    due = np.asarray(policy_at(policy, config.due_fraction).back_at(users, cats, last), dtype=np.float64)
    keep = np.isfinite(due) & (due >= now - config.overdue_days * DAY) & (due <= now + config.due_days * DAY)
    # a window of 0 ("may come back at once") is no reminder: the customer has not run out of anything
    keep &= due > last
    d = purchases[keep].assign(due=due[keep], every=(due - last)[keep] / DAY)
    d = d.sort_values(["user_id", "due"], kind="stable")
    out = []
    for uid, rows in d.groupby("user_id", sort=False):
        parts = []
        for r in rows.head(3).itertuples(index=False):
            when = r.due - now
            at = (
                f"due in {_ago(when)}"
                if when > 0
                else f"due {_ago(-when)} ago"
                if when < -3600
                else "due now"
            )
            parts.append(f"{_title(items, r.item_id)} ({at}, re-bought about every {r.every:.0f} days)")
        more = len(rows) - 3
        text = "running out: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
        out.append(Trigger(str(uid), text, tuple(rows["item_id"].astype(str))))
    return out


def recent_durables(
    events: pd.DataFrame, items: pd.DataFrame, policy: Any, now: float, config: Any
) -> list[Trigger]:
    """Customers who bought a durable between `after_days` and `after_days + after_window_days`
    ago (the policy's durable_until lies after the purchase); one per customer, the newest."""
    lo = now - (config.after_days + config.after_window_days) * DAY
    hi = now - config.after_days * DAY
    p = events[(events["event_type"] == "purchase") & (events["ts"] > lo) & (events["ts"] <= hi)]
    if p.empty:
        return []
    cats = p["item_id"].map(items["category"]).fillna("").astype(str).str.strip("/").to_numpy(object)
    ts = p["ts"].to_numpy(np.float64)
    until = np.asarray(policy.durable_until(p["user_id"].astype(str).to_numpy(object), cats, ts), np.float64)
    d = p[np.isfinite(until) & (until > ts)].sort_values("ts", ascending=False, kind="stable")
    d = d.drop_duplicates("user_id")
    out = []
    for r in d.itertuples(index=False):
        title = _title(items, str(r.item_id))
        out.append(
            Trigger(
                str(r.user_id), f"bought {title} {_ago(now - r.ts)} ago: what goes with it", (str(r.item_id),)
            )
        )
    return out
