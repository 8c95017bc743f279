"""Re-ranking a list the shop already chose (a search result, a category lister) for one customer.

`rerank(engine, user_id, item_ids, context)` returns every given item exactly once (repeats of an id
are answered once), in this order:

1. the items every rule allows, by score: the model's personal score (min-max normalised over the
   given items), plus a boost for the customer's brands (the share of their purchases per brand,
   learned from their history and the online store's newest purchases), a smaller one for sized
   items in stock in their size (the request's size, else the sizes they bought), and the learned
   context lift (serving/context.py). Ties keep the shop's order;
2. ids the catalogue does not know (yet), in the shop's order: nothing is known to rank them by;
3. the items a rule would keep out of a recommendation (no longer sold, sold out, sold out in the
   customer's size, the other gender, already bought and not due again), each with the rule as its
   reason: the shop asked for them, so they stay, at the end.

A customer without consent for personalisation (or unknown to the model) gets the non-personal
order: popularity, only what the request itself says (size, gender) and the context lift.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from serving import filters as F
from serving import reasons as R
from serving.ranking import Rec

if TYPE_CHECKING:
    from serving.pipeline import Context, Engine
    from serving.state import Snapshot

# In normalised score units (the model's best given item = 1, its worst = 0), times the brand's share
# of the customer's purchases: a customer who buys one brand only sees it above any other brand's
# items; one who splits between two brands gets both lifted by 0.75.
BRAND_BOOST = 1.5
SIZE_BOOST = 0.2  # a sized item in stock in the customer's size


def rerank(
    engine: Engine, user_id: str | None, item_ids: list[str], context: Context, *, now: float | None = None
) -> list[Rec]:
    """The given items in the customer's order (module docstring); always len(set(item_ids)) Recs."""
    now = time.time() if now is None else float(now)
    snap = engine.state.current
    cat = snap.catalog
    ids = list(dict.fromkeys(str(i) for i in item_ids))
    known = [(j, cat.index[x]) for j, x in enumerate(ids) if x in cat.index]
    unknown = [x for x in ids if x not in cat.index]
    idx = np.asarray([i for _, i in known], dtype=np.int64)

    customer = engine._customer(user_id)
    personal = customer is not None and customer.consent
    events = engine.store.recent(user_id, engine.config.recent_events) if personal and user_id else []
    fresh = [e for e in events if e.item_id in cat.index]
    allowed = engine._context_mask(snap, context, customer if personal else None)
    why_out: dict[int, str] = {}
    if personal:
        bought = engine.purchases.split(
            snap, customer.row, str(user_id),
            [(cat.index[e.item_id], e.timestamp) for e in fresh if e.event_type == "purchase"], now,
        )  # fmt: skip
        for i in bought.keep_out.tolist():
            if allowed[i]:
                why_out[i] = "already bought: kept at the end"
        allowed[bought.keep_out] = False
    for i in idx[~allowed[idx]].tolist():
        why_out.setdefault(i, _why_not(engine, snap, context, customer if personal else None, i))

    midx = engine.scorer.user_index(str(user_id)) if personal else -1
    if midx >= 0:
        base = _personal_scores(engine, snap, customer, midx, fresh, idx, now)
        tail = list(dict.fromkeys(engine._sequence(customer, fresh, cat)[-3:][::-1].tolist()))
        fallback = R.history_reasons(cat, tail)
    else:
        base = np.asarray(snap.popularity, dtype=np.float64)[idx] if len(idx) else np.zeros(0)

        def fallback(i: int) -> str:
            return R.popular_in(cat.categories[i])

    score = _normalise(base)
    reasons: dict[int, str] = {}
    if personal and customer is not None:
        _brand_boost(engine, snap, customer.row, fresh, idx, score, reasons)
    _size_boost(engine, snap, context, customer if personal else None, idx, score, reasons)
    lift = getattr(engine, "context_lift", None)
    if lift is not None:
        add, text = lift.boost(cat, idx, context, snap.structure, snap.popularity)
        score += engine.config.context_boost * add
        for j in np.flatnonzero(add > 0).tolist():
            reasons.setdefault(int(idx[j]), text[j])

    ok = [(j, p) for p, (j, i) in enumerate(known) if allowed[i]]
    ok.sort(key=lambda t: (-score[t[1]], t[0]))
    out = [Rec(ids[j], float(score[p]), reasons.get(int(idx[p])) or fallback(int(idx[p]))) for j, p in ok]
    floor = min((r.score for r in out), default=0.0)
    out += [Rec(x, floor - 1.0 - n * 1e-3, "not in the catalogue yet") for n, x in enumerate(unknown)]
    out_rank = [(j, i) for j, i in known if not allowed[i]]
    out += [Rec(ids[j], floor - 2.0 - n * 1e-3, why_out[i]) for n, (j, i) in enumerate(out_rank)]
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    """Min-max over the finite values into [0, 1] (non-finite: 0); all equal: all 0."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros(len(x))
    ok = np.isfinite(x)
    if ok.any():
        lo, hi = x[ok].min(), x[ok].max()
        if hi > lo:
            out[ok] = (x[ok] - lo) / (hi - lo)
    return out


def _personal_scores(
    engine: Engine,
    snap: Snapshot,
    customer: Any,
    midx: int,
    fresh: list[Any],
    idx: np.ndarray,
    now: float | None = None,
) -> np.ndarray:
    """The model's scores of the given items for the customer (-inf for items it does not know) as
    of `now` (the request's time, epoch s)."""
    sc = engine.scorer
    if not len(idx):
        return np.zeros(0)
    if sc.has_factors(midx):
        out = np.full(len(idx), -np.inf)
        rows = len(sc.item_factors)
        ok = idx < rows
        if sc.known is not None:
            ok[ok] &= sc.known[idx[ok]]
        out[ok] = sc.item_factors[idx[ok]] @ sc.user_factors[midx]
        return out
    cat = snap.catalog
    row = engine._history_row(customer, fresh, cat)
    seq, seq_ts = engine._sequence(customer, fresh, cat), engine._sequence_ts(customer, fresh)
    return np.asarray(sc.model_scores(midx, row, seq, cat.n, seq_ts, now))[idx]


def _brand_names(engine: Engine, snap: Snapshot) -> np.ndarray:
    """(n,) brand name per item ('' unknown), once per catalogue version."""
    got = snap.structure.get("brand_names")
    if got is None or len(got) != snap.n:
        items = engine.state.items
        col = items["brand"] if "brand" in items.columns else [None] * len(items)
        names = np.asarray([b if isinstance(b, str) else "" for b in col], dtype=object)
        if len(names) != snap.n:  # a catalogue change between the two reads: answer without names
            return np.full(snap.n, "", dtype=object)
        got = snap.structure.setdefault("brand_names", names)
    return got


def brand_preference(engine: Engine, snap: Snapshot, row: int, fresh: list[Any]) -> dict[int, float]:
    """brand code -> share of the customer's purchases with a known brand (their history's last
    purchase of each item and the online store's newest purchases)."""
    cat = snap.catalog
    items: list[int] = []
    h = engine.state.histories
    if row >= 0:
        at = h.purchases(row)
        items = [i for i in h.p_item[at].tolist() if i < cat.n]
    items += [cat.index[e.item_id] for e in fresh if e.event_type == "purchase"]
    brands = [int(cat.brand[i]) for i in items if cat.brand[i] >= 0]
    if not brands:
        return {}
    codes, counts = np.unique(np.asarray(brands), return_counts=True)
    return {int(b): float(c) / len(brands) for b, c in zip(codes.tolist(), counts.tolist(), strict=True)}


def _brand_boost(
    engine: Engine, snap: Snapshot, row: int, fresh: list[Any], idx: np.ndarray, score: np.ndarray,
    reasons: dict[int, str],
) -> None:  # fmt: skip
    pref = brand_preference(engine, snap, row, fresh)
    if not pref or not len(idx):
        return
    cat = snap.catalog
    names = _brand_names(engine, snap)
    for p, i in enumerate(idx.tolist()):
        share = pref.get(int(cat.brand[i]))
        if share:
            score[p] += BRAND_BOOST * share
            reasons.setdefault(i, f"a brand you buy: {names[i]}" if names[i] else "a brand you buy")


def _size_boost(
    engine: Engine, snap: Snapshot, context: Context, customer: Any, idx: np.ndarray, score: np.ndarray,
    reasons: dict[int, str],
) -> None:  # fmt: skip
    """Sized items in stock in the customer's size: the request's, else the size they bought in the
    item's garment category."""
    cat = snap.catalog
    learned = engine.state.histories.sizes.get(customer.row, {}) if customer is not None else {}
    if not context.size and not learned:
        return
    for p, i in enumerate(idx.tolist()):
        if not cat.sized[i]:
            continue
        size = context.size or _learned_size(learned, cat.categories[i])
        if size and size in cat.size_stock and cat.size_stock[size][i]:
            score[p] += SIZE_BOOST
            reasons.setdefault(i, f"in your size {size}")


def _learned_size(sizes: Any, category: str) -> str | None:
    """The size learned for the deepest garment path the item's category lies under."""
    best, depth = None, -1
    for garment, size in sizes.items():
        g = str(garment).strip("/")
        if (category == g or category.startswith(g + "/")) and len(g) > depth:
            best, depth = str(size), len(g)
    return best


def _why_not(engine: Engine, snap: Snapshot, context: Context, customer: Any, i: int) -> str:
    """The rule that keeps item i out of a recommendation for this request, in words."""
    cat = snap.catalog
    if cat.active is not None and not cat.active[i]:
        return "no longer sold: kept at the end"
    if not cat.in_stock[i]:
        return "sold out: kept at the end"
    _, _, gender = engine._mask_key(context, customer)
    code = int(cat.gender[i])
    if (gender == "women" and code == F.MEN) or (gender == "men" and code == F.WOMEN):
        return f"not in the {gender}'s range asked for: kept at the end"
    return "sold out in your size: kept at the end"
