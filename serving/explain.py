"""Why an item is not in a customer's block: the rule that removed it (for the inspection pages and
`"explain": true` on /recommend).

`removed_items(engine, user_id, k, context, block)` takes the items the model (or popularity, for a
customer who gets the non-personal block) ranks highest before any rule, and names, for each one
the block does not show, the first rule that keeps it out, checked in the order the engine applies
them: inactive, sold out, not in the customer's size, the other gender's collection, bought (its
re-buy window), a durable of that category bought recently, in the cart, the page's own item, the
brand or category already filled (diversity), else ranked below the block (boosts and page context
lifted others; for a customer without consent, the non-personal block). Reads the same shop state snapshot and rules as the answer; it is not
on the request path of a plain answer.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from serving import filters as F
from serving.rules import durable_block

if TYPE_CHECKING:
    from serving.pipeline import Context, Engine
    from serving.ranking import Rec


class Removed(NamedTuple):
    item_id: str
    rule: str


def removed_items(
    engine: Engine, user_id: str | None, k: int, context: Context, block: list[Rec], *, top: int | None = None,
    now: float | None = None,
) -> list[Removed]:  # fmt: skip
    """The items among the `top` (default max(3k, 20)) best before the rules that `block` lacks, each
    with the rule that removed it, best first."""
    now = time.time() if now is None else now
    snap = engine.state.current
    cat = snap.catalog
    top = top or max(3 * k, 20)
    customer = engine._customer(user_id)
    midx = engine.scorer.user_index(str(user_id)) if customer is not None else -1
    personal = customer is not None and customer.consent and midx >= 0
    if personal:
        if engine.scorer.has_factors(midx):
            raw = engine.scorer.factor_scores(midx, cat.n).astype(np.float64)
        else:
            seq = engine._sequence(customer, [], cat)
            raw = engine.scorer.model_scores(
                midx,
                engine._history_row(customer, [], cat),
                seq,
                cat.n,
                engine._sequence_ts(customer, []),
                now,
            )
    else:
        raw = np.asarray(snap.popularity, dtype=np.float64)
    raw = np.where(np.isfinite(raw), raw, -np.inf)
    m = min(top, int(np.isfinite(raw).sum()))
    if m <= 0:
        return []
    best = np.argpartition(-raw, m - 1)[:m]
    best = best[np.lexsort((best, -raw[best]))]
    shown = {r.item_id for r in block}

    key, sizes, gender = engine._mask_key(context, customer if personal else None)
    in_stock_any = cat.in_stock
    in_size = F.stock_mask(cat, size=key[0], sizes_by_garment=dict(sizes) if sizes else None)
    gender_ok = F.gender_mask(cat, gender) if gender is not None else np.ones(cat.n, dtype=bool)
    kept_out: set[int] = set()
    durable: set[int] = set()
    if personal and context.exclude_seen != "never":
        bought = engine.purchases.split(snap, customer.row, str(user_id), [], now)
        kept_out = set(bought.keep_out.tolist())
        durable = set(durable_block(cat, bought.durable).tolist())
    cart = {cat.index[x] for x in context.cart if x in cat.index}
    current = cat.idx(context.current_item)
    brands = {int(cat.brand[cat.index[r.item_id]]) for r in block if r.item_id in cat.index}
    leaves = {int(cat.leaf[cat.index[r.item_id]]) for r in block if r.item_id in cat.index}
    brand_n = {b: sum(1 for r in block if cat.brand[cat.index[r.item_id]] == b) for b in brands}
    leaf_n = {c: sum(1 for r in block if cat.leaf[cat.index[r.item_id]] == c) for c in leaves}
    cfg = engine.config
    out: list[Removed] = []
    for i in best.tolist():
        iid = str(cat.item_ids[i])
        if iid in shown:
            continue
        out.append(Removed(iid, _rule(i, cat, personal, customer, in_stock_any, in_size, gender_ok, gender,
                                      kept_out, durable, cart, current, brand_n, leaf_n, cfg, key[0])))  # fmt: skip
    return out


def _rule(
    i: int, cat: F.Catalog, personal: bool, customer: Any, in_stock: np.ndarray, in_size: np.ndarray,
    gender_ok: np.ndarray, gender: str | None, kept_out: set[int], durable: set[int], cart: set[int],
    current: int | None, brand_n: dict[int, int], leaf_n: dict[int, int], cfg: Any, size: str | None,
) -> str:  # fmt: skip
    if cat.active is not None and not cat.active[i]:
        return "inactive: not in the catalogue"
    if not in_stock[i]:
        return "sold out"
    if not in_size[i]:
        return f"not in stock in size {size}" if size else "not in stock in the customer's size"
    if not gender_ok[i]:
        return f"not in the {gender}'s collection"
    if i in kept_out:
        return "bought: not due again (re-buy policy)"
    if i in durable:
        return "a durable of this category was bought recently"
    if i in cart:
        return "already in the cart"
    if current is not None and i == current:
        return "the item on the page"
    if cat.brand[i] >= 0 and brand_n.get(int(cat.brand[i]), 0) >= cfg.max_per_brand:
        return f"diversity: {cfg.max_per_brand} items of this brand already shown"
    if cat.leaf[i] >= 0 and leaf_n.get(int(cat.leaf[i]), 0) >= cfg.max_per_category:
        return f"diversity: {cfg.max_per_category} items of this category already shown"
    if customer is not None and not customer.consent:
        return "no consent for personalisation: the non-personal block"
    if not personal:
        return "ranked below the block (popular for the context)"
    return "ranked below the block (boosts and page context lifted others)"
