"""Context-aware business rules as plain functions over precomputed item arrays.

Every rule here is a small pure function with a known right answer on a tiny shop
(tests/test_filters.py). The pipeline (serving/pipeline.py) combines them per request:

    allowed = stock_mask(...) & gender_mask(...) & ~excluded   (hard rules, one bool per item)
    order   = score + page_tier(...) boost + session / re-buy boosts
    block   = diversify(order, ...)                            (at most N per brand / leaf category)

`Catalog` holds the arrays the rules need, built once at load (`build_catalog`), so a request
does only vectorised numpy work and no pandas. The re-buy window itself is training's business
rule (`training.policy.RebuyPolicy`); `rebuy_split` only turns its answer into "keep out" and
"buy it again" sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

# Gender codes in Catalog.gender. Unknown and unisex items are allowed for everyone.
UNISEX, WOMEN, MEN = 0, 1, 2
_GENDER_CODES = {"women": WOMEN, "men": MEN, "unisex": UNISEX}


@dataclass(frozen=True)
class Catalog:
    """Per-item arrays, index = item index (0..n-1).

    item_ids:      (n,) object, the shop's ids; `index` maps id -> item index.
    titles:        (n,) object, for reasons ("bought together with <title>"); falls back to the id.
    categories:    (n,) object, the `/` path ('' when unknown).
    leaf:          (n,) int32 code of the full category path (-1 unknown): the diversity unit.
    brand:         (n,) int32 brand code (-1 unknown).
    price:         (n,) float64 (nan unknown).
    gender:        (n,) int8 UNISEX/WOMEN/MEN.
    in_stock:      (n,) bool, any size in stock (True where the stock table says nothing).
    sized:         (n,) bool, the item is sold in sizes.
    size_stock:    size -> (n,) bool, in stock in that size (False for unsized items).
    prefix_items:  category prefix ('pets', 'pets/cats', ...) -> sorted item indices under it.
    popularity:    (n,) float64, learned popularity (decayed), 0 when unknown.
    active:        (n,) bool, the shop sells it (False: `active: false` in the catalogue, or an
                   item the model knows that the catalogue no longer lists); None = all active.
    """

    item_ids: np.ndarray
    index: dict[str, int]
    titles: np.ndarray
    categories: np.ndarray
    leaf: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    gender: np.ndarray
    in_stock: np.ndarray
    sized: np.ndarray
    size_stock: dict[str, np.ndarray]
    prefix_items: dict[str, np.ndarray]
    popularity: np.ndarray
    active: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.item_ids)

    @cached_property
    def brand_slots(self) -> int:
        """Brand codes + 1 (slot 0: unknown brand): the size of a per-brand table, found once,
        not by a pass over every item in each request (diversify runs in every block)."""
        return int(self.brand.max(initial=-1)) + 2

    @cached_property
    def leaf_slots(self) -> int:
        """Leaf category codes + 1 (slot 0: unknown category), as `brand_slots`."""
        return int(self.leaf.max(initial=-1)) + 2

    @cached_property
    def _garment_sizes(self) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        return {}

    def garment_size(self, garment: str, size: str) -> tuple[np.ndarray, np.ndarray]:
        """(the sized items under category path `garment`, whether each is in stock in `size`),
        found once per pair (garments and sizes are the bundle's learned ones: few pairs). A
        customer's learned sizes otherwise cost a pass over every garment's items per mask."""
        key = (garment, size)
        got = self._garment_sizes.get(key)
        if got is None:
            under = self.prefix_items.get(garment.strip("/"))
            if under is None:
                under = np.zeros(0, dtype=np.int64)
            under = under[self.sized[under]]
            in_size = self.size_stock.get(size)
            got = (under, np.zeros(len(under), dtype=bool) if in_size is None else in_size[under])
            for a in got:
                a.setflags(write=False)
            self._garment_sizes[key] = got
        return got

    @cached_property
    def _garment_keeps(self) -> dict[tuple[str, str], np.ndarray | None]:
        return {}

    def garment_keep(self, garment: str, size: str) -> np.ndarray | None:
        """(n,) bool: False for the sized items under `garment` not in stock in `size`. ANDed into
        `in_stock` it sets those items as `garment_size` does (one pass over n bytes instead of
        a scatter to every item of the garment), as long as no other garment path overlaps and
        in stock in `size` implies in stock (None where it does not; the stock table's
        construction makes it so). Found once per pair, as `garment_size`."""
        key = (garment, size)
        if key not in self._garment_keeps:
            under, in_size = self.garment_size(garment, size)
            keep: np.ndarray | None = None
            if not (in_size & ~self.in_stock[under]).any():
                keep = np.ones(self.n, dtype=bool)
                keep[under] = in_size
                keep.setflags(write=False)
            self._garment_keeps[key] = keep
        return self._garment_keeps[key]

    def title(self, i: int) -> str:
        return str(self.titles[i])

    def idx(self, item_id: str | None) -> int | None:
        """Item index of a shop id, or None when unknown (unknown ids are never an error)."""
        if item_id is None:
            return None
        return self.index.get(str(item_id))


def _col(items: pd.DataFrame, name: str) -> pd.Series:
    if name in items.columns:
        return items[name]
    return pd.Series([None] * len(items), index=items.index, dtype=object)


def _codes(values: pd.Series) -> np.ndarray:
    filled = values.astype(object).where(values.notna() & (values.astype(str) != ""), None)
    codes, _ = pd.factorize(filled, use_na_sentinel=True)
    return codes.astype(np.int32)


def build_catalog(items: pd.DataFrame, stock: pd.DataFrame | None = None) -> Catalog:
    """Precompute the per-item arrays from the bundle's items (ordered by item_idx) and stock.

    items: item_idx 0..n-1 in order, item_id, and optionally title, category, brand, price, gender,
    popularity (else n_users, else 0). stock: item_id, size ('' unsized), quantity; None/empty
    means no stock information (everything counts as available)."""
    n = len(items)
    item_ids = items["item_id"].astype(str).to_numpy(dtype=object)
    index = {iid: i for i, iid in enumerate(item_ids)}
    titles = _col(items, "title").astype(object)
    titles = np.where(titles.isna() | (titles.astype(str) == ""), item_ids, titles.astype(str)).astype(object)
    cats = _col(items, "category").astype(object)
    cats = cats.where(cats.notna(), "").astype(str).str.strip("/").to_numpy(dtype=object)
    price = pd.to_numeric(_col(items, "price"), errors="coerce").to_numpy(dtype=np.float64)
    gender_raw = _col(items, "gender").astype(object).where(_col(items, "gender").notna(), "")
    gender = np.array([_GENDER_CODES.get(str(g).lower(), UNISEX) for g in gender_raw], dtype=np.int8)
    if "popularity" in items.columns:
        popularity = pd.to_numeric(items["popularity"], errors="coerce").fillna(0).to_numpy(np.float64)
    elif "n_users" in items.columns:
        popularity = pd.to_numeric(items["n_users"], errors="coerce").fillna(0).to_numpy(np.float64)
    else:
        popularity = np.zeros(n)

    prefix_lists: dict[str, list[int]] = {}
    for i, c in enumerate(cats):
        if not c:
            continue
        parts = c.split("/")
        for d in range(1, len(parts) + 1):
            prefix_lists.setdefault("/".join(parts[:d]), []).append(i)
    prefix_items = {p: np.asarray(v, dtype=np.int64) for p, v in prefix_lists.items()}

    in_stock = np.ones(n, dtype=bool)
    sized = np.zeros(n, dtype=bool)
    size_stock: dict[str, np.ndarray] = {}
    if stock is not None and len(stock):
        st = stock.copy()
        st["idx"] = st["item_id"].astype(str).map(index)
        st = st[st["idx"].notna()]
        idx = st["idx"].to_numpy(dtype=np.int64)
        qty = pd.to_numeric(st["quantity"], errors="coerce").fillna(0).to_numpy()
        size = st["size"].astype(object).where(st["size"].notna(), "").astype(str).to_numpy()
        listed = np.zeros(n, dtype=bool)
        listed[idx] = True
        any_qty = np.zeros(n, dtype=bool)
        any_qty[idx[qty > 0]] = True
        # Items the stock table lists are in stock only with quantity > 0; unlisted items are unknown.
        in_stock = np.where(listed, any_qty, True)
        # A row without a size is about the item as a whole: quantity 0 there takes a sized item
        # out in every size (a shop selling out "the jeans" need not list each size).
        whole_out = idx[(size == "") & (qty <= 0)]
        in_stock[whole_out] = False
        has_size = size != ""
        sized[idx[has_size]] = True
        for s in np.unique(size[has_size]):
            m = np.zeros(n, dtype=bool)
            sel = has_size & (size == s) & (qty > 0)
            m[idx[sel]] = True
            m[whole_out] = False
            size_stock[str(s)] = m

    return Catalog(
        item_ids=item_ids,
        index=index,
        titles=titles,
        categories=cats,
        leaf=_codes(pd.Series(cats)),
        brand=_codes(_col(items, "brand").reset_index(drop=True)),
        price=price,
        gender=gender,
        in_stock=in_stock,
        sized=sized,
        size_stock=size_stock,
        prefix_items=prefix_items,
        popularity=popularity,
    )


def with_active(cat: Catalog, active: np.ndarray) -> Catalog:
    """`cat` with the `active` flags: an inactive item is in stock in no size (so every rule that
    reads stock drops it), and `active` says why for the inspection pages."""
    active = np.asarray(active, dtype=bool)
    if active.all():
        return replace(cat, active=active)
    return replace(
        cat,
        active=active,
        in_stock=cat.in_stock & active,
        size_stock={s: m & active for s, m in cat.size_stock.items()},
    )


def with_stock(cat: Catalog, stock: dict[str, dict[str, int]]) -> Catalog:
    """`cat` with the whole stock of some items replaced: `stock` maps item id -> {size ('' for
    unsized): quantity}, every row of those items (as `build_catalog` reads a stock table). Copies
    only the arrays it changes, so a 1,000-row update of a 100k-item catalogue costs a few ms."""
    idx = [cat.index.get(str(iid)) for iid in stock]
    pairs = [(i, sizes) for i, sizes in zip(idx, stock.values(), strict=True) if i is not None]
    if not pairs:
        return cat
    items = np.asarray([i for i, _ in pairs], dtype=np.int64)
    active = cat.active[items] if cat.active is not None else np.ones(len(items), dtype=bool)
    in_stock = cat.in_stock.copy()
    sized = cat.sized.copy()
    size_stock = dict(cat.size_stock)
    touched: set[str] = set()
    for (i, sizes), ok in zip(pairs, active.tolist(), strict=True):
        whole_out = "" in sizes and sizes[""] <= 0  # the item as a whole sold out (build_catalog)
        in_stock[i] = ok and not whole_out and (not sizes or any(q > 0 for q in sizes.values()))
        sized[i] = any(s != "" for s in sizes)
        for s in list(size_stock) + [s for s in sizes if s and s not in size_stock]:
            want = bool(ok and not whole_out and sizes.get(s, 0) > 0)
            have = size_stock.get(s)
            if have is None or have[i] != want:
                if s not in touched:
                    size_stock[s] = have.copy() if have is not None else np.zeros(cat.n, dtype=bool)
                    touched.add(s)
                size_stock[s][i] = want
    return replace(cat, in_stock=in_stock, sized=sized, size_stock=size_stock)


# -- hard rules: one bool per item, True = may be shown ---------------------------------------------
def stock_mask(
    cat: Catalog, *, size: str | None = None, sizes_by_garment: dict[str, str] | None = None
) -> np.ndarray:
    """(n,) bool: in stock, and for sized items in stock in the customer's size.

    `size` (the request's size preference) applies to every sized item. Otherwise
    `sizes_by_garment` (garment category path -> learned size) applies to the sized items under each
    garment path; sized items of other garments only need some size in stock. Inactive items are
    never in stock (`with_active`)."""
    mask = cat.in_stock.copy()
    if size:
        in_size = cat.size_stock.get(size)
        mask &= ~cat.sized if in_size is None else (~cat.sized | in_size)
        return mask
    pairs = [(str(g), str(s)) for g, s in (sizes_by_garment or {}).items() if s]
    paths = [g.strip("/") for g, _ in pairs]
    # Garment paths that nest (or repeat) overwrite each other's items in order: scatter those.
    nested = any(a == b or a.startswith(b + "/") or b.startswith(a + "/") for i, a in enumerate(paths)
                 for b in paths[:i])  # fmt: skip
    for garment, s in pairs:
        keep = None if nested else cat.garment_keep(garment, s)
        if keep is not None:
            mask &= keep
        else:
            under, in_size = cat.garment_size(garment, s)
            mask[under] = in_size
    return mask


def resolve_gender(context_gender: str | None, affinity: str | None) -> str | None:
    """The gender a block is filtered for: the request's preference, else the learned affinity."""
    for g in (context_gender, affinity):
        if isinstance(g, str) and g.lower() in _GENDER_CODES:
            return g.lower()
    return None


def gender_mask(cat: Catalog, gender: str | None) -> np.ndarray:
    """(n,) bool: no men-only items for 'women', no women-only items for 'men'; unisex and unknown
    items always pass; no preference (None/'unisex') lets everything pass."""
    code = _GENDER_CODES.get((gender or "").lower(), UNISEX)
    if code == WOMEN:
        return cat.gender != MEN
    if code == MEN:
        return cat.gender != WOMEN
    return np.ones(cat.n, dtype=bool)


def price_mask(cat: Catalog, *, below: float | None = None, max_price: float | None = None) -> np.ndarray:
    """(n,) bool: price strictly below `below` (the cheaper-alternatives option) and at most
    `max_price`. Items with an unknown price fail any price condition (we cannot promise cheaper)."""
    mask = np.ones(cat.n, dtype=bool)
    if below is None and max_price is None:
        return mask
    with np.errstate(invalid="ignore"):
        if below is not None:
            mask &= cat.price < below
        if max_price is not None:
            mask &= cat.price <= max_price
    return mask


def rebuy_split(bought: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a user's purchased item indices by the re-buy policy's answer.

    bought: item indices the user purchased before; excluded: the indices the policy keeps out
    (inside their re-buy window, or durables). Returns (keep_out, due): `due` are purchased items
    whose window has passed; they come back with the reason "buy it again"."""
    # A customer's purchases are a handful of items: Python sets and lists beat np.unique's and
    # np.isin's sorting here (both answers ascending, without repeats, as np.unique gives them).
    items = sorted(set(np.asarray(bought, dtype=np.int64).tolist()))
    ex = set(np.asarray(excluded, dtype=np.int64).tolist())
    keep_out = [b for b in items if b in ex]
    due = [b for b in items if b not in ex]
    return np.asarray(keep_out, dtype=np.int64), np.asarray(due, dtype=np.int64)


def policy_windows(
    policy: Any, categories: np.ndarray, *, horizon_s: float = 20 * 365 * 86_400.0
) -> np.ndarray:
    """(len(categories),) seconds after a purchase at which `policy` lets an item of each category
    come back; inf where it never does (durables, unknown categories).

    The re-buy rule belongs to training (`training.policy.RebuyPolicy`, shared with evaluation),
    and its `exclusions()` builds a frame per call, too slow for every request. So serving asks
    that very method once at load, for all categories at once, by bisection on the time waited
    (35 vectorised calls, ~0.02 s precision): the request path then compares one timestamp per
    past purchase, and both sides always apply the same rule."""
    categories = np.asarray(categories, dtype=object)
    n = len(categories)
    if n == 0:
        return np.zeros(0)
    probe = pd.DataFrame({"user_idx": np.arange(n), "item_idx": np.zeros(n, dtype=np.int64), "category": categories,
                          "last_ts": np.zeros(n, dtype=np.int64)})  # fmt: skip
    users = np.arange(n)

    def excluded(waited: np.ndarray) -> np.ndarray:
        return np.asarray(policy.exclusions(users, probe, waited, 1).sum(axis=1)).ravel() > 0

    never = excluded(np.full(n, horizon_s))
    # Fast path: the window the policy's public fields suggest, accepted only if exclusions()
    # agrees on both sides of it (excluded 1 s before, allowed at it).
    guess = _guess_windows(policy, categories)
    if guess is not None:
        g = np.where(never, horizon_s, guess)
        if (never | (excluded(np.maximum(g - 1.0, 0.0)) | (g < 1.0))).all() and not excluded(g)[~never].any():
            return np.where(never, np.inf, g)
    lo, hi = np.zeros(n), np.full(n, horizon_s)
    if excluded(np.zeros(n)).any():
        for _ in range(35):
            mid = (lo + hi) / 2
            ex = excluded(mid)
            lo = np.where(ex, mid, lo)
            hi = np.where(ex, hi, mid)
    else:
        hi = np.zeros(n)
    return np.where(never, np.inf, hi)


def _guess_windows(policy: Any, categories: np.ndarray) -> np.ndarray | None:
    """Seconds per category from RebuyPolicy's fields (median days x window fraction), or None
    when the policy does not have them; only a guess that policy_windows verifies."""
    window_seconds = getattr(policy, "window_seconds", None)
    if window_seconds is not None:
        return np.asarray(window_seconds(categories), dtype=np.float64)
    try:
        days = policy.rebuyable
        fraction = float(policy.window_fraction)
    except AttributeError:
        return None
    return np.array([float(days.get(str(c), 0.0)) * fraction * 86_400.0 for c in categories])


# -- ordering: page context ----------------------------------------------------------------------
def parent_category(path: str) -> str:
    """The category one level up ('pets/cats/litter' -> 'pets/cats'; a top level stays itself)."""
    return path.rsplit("/", 1)[0] if "/" in path else path


def page_prefixes(cat: Catalog, page_category: str | None, current_item: int | None) -> list[str]:
    """The known category prefixes a page lifts to tier 1: the page's category, and the current
    item's parent category (each once)."""
    out = []
    if page_category and page_category.strip("/") in cat.prefix_items:
        out.append(page_category.strip("/"))
    if current_item is not None:
        parent = parent_category(cat.categories[current_item])
        if parent and parent in cat.prefix_items and parent not in out:
            out.append(parent)
    return out


def page_tier(
    cat: Catalog,
    *,
    page_category: str | None = None,
    current_item: int | None = None,
    complements: np.ndarray | None = None,
) -> np.ndarray:
    """(n,) float tier, added far above any score so tiered items come first.

    On a category page the items under that category get tier 1. On an item page the items under
    the current item's parent category get tier 1 (the litter-box page: cat things, not dog food)
    and the current item's complements (bought together: the scoop) tier 2. The current item itself
    is not tiered (the pipeline excludes it). Unknown categories tier nothing."""
    tier = np.zeros(cat.n, dtype=np.float64)
    for prefix in page_prefixes(cat, page_category, current_item):
        tier[cat.prefix_items[prefix]] = 1.0
    if current_item is not None:
        if complements is not None and len(complements):
            tier[np.asarray(complements, dtype=np.int64)] = 2.0
        tier[current_item] = 0.0
    return tier


# -- diversity -----------------------------------------------------------------------------------
def capped(
    kept: np.ndarray, cat: Catalog, max_per_brand: int, max_per_category: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A test `items -> bool array`: which of `items` have a brand or leaf category that `kept`
    already fills to its cap (so diversify would skip them). Unknown brand/category never fills."""
    kept = np.asarray(kept, dtype=np.int64)
    b = np.bincount(cat.brand[kept] + 1, minlength=cat.brand_slots)
    c = np.bincount(cat.leaf[kept] + 1, minlength=cat.leaf_slots)
    brand_full, leaf_full = b >= max_per_brand, c >= max_per_category
    brand_full[0] = leaf_full[0] = False

    def test(items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        return brand_full[cat.brand[items] + 1] | leaf_full[cat.leaf[items] + 1]

    return test


def diversify(
    ordered: np.ndarray, cat: Catalog, k: int, *, max_per_brand: int = 3, max_per_category: int = 3
) -> np.ndarray:
    """Walk `ordered` (item indices, best first) and keep at most `max_per_brand` items per brand
    and `max_per_category` per leaf category, until k are kept. Unknown brand/category is not
    capped. Returns the kept indices in order (fewer than k when `ordered` runs out).

    The walk goes chunk by chunk, and before each chunk drops (vectorised) the items whose brand or
    category is already full: on a large shop the candidates behind a few full categories can run
    into the thousands, and walking them one by one in Python dominated the request."""
    ordered = np.asarray(ordered, dtype=np.int64)
    brand_n: dict[int, int] = {}
    leaf_n: dict[int, int] = {}
    kept: list[int] = []
    # Codes shifted by one, so that -1 (unknown, never capped) is slot 0 and never marked full.
    brand_full = np.zeros(cat.brand_slots, dtype=bool)
    leaf_full = np.zeros(cat.leaf_slots, dtype=bool)
    pos, step = 0, max(4 * k, 64)
    while pos < len(ordered) and len(kept) < k:
        part = ordered[pos : pos + step]
        pos += len(part)
        step *= 2
        b_all, c_all = cat.brand[part], cat.leaf[part]
        ok = ~(brand_full[b_all + 1] | leaf_full[c_all + 1])
        for i, b, c in zip(part[ok].tolist(), b_all[ok].tolist(), c_all[ok].tolist(), strict=True):
            if b >= 0 and brand_n.get(b, 0) >= max_per_brand:
                continue
            if c >= 0 and leaf_n.get(c, 0) >= max_per_category:
                continue
            kept.append(i)
            if b >= 0:
                brand_n[b] = brand_n.get(b, 0) + 1
                if brand_n[b] >= max_per_brand:
                    brand_full[b + 1] = True
            if c >= 0:
                leaf_n[c] = leaf_n.get(c, 0) + 1
                if leaf_n[c] >= max_per_category:
                    leaf_full[c + 1] = True
            if len(kept) == k:
                break
    return np.asarray(kept, dtype=np.int64)


def content_neighbours(cat: Catalog, item: int) -> np.ndarray:
    """(n,) float similarity of every item to `item` from catalogue data alone (for a new item
    with no interactions): +1 per shared category level, +1 same brand, + price closeness in
    (0, 1]. The item itself gets -inf."""
    sim = np.zeros(cat.n, dtype=np.float64)
    path = cat.categories[item]
    if path:
        parts = path.split("/")
        for d in range(1, len(parts) + 1):
            sim[cat.prefix_items["/".join(parts[:d])]] += 1.0
    if cat.brand[item] >= 0:
        sim[cat.brand == cat.brand[item]] += 1.0
    p = cat.price[item]
    if np.isfinite(p) and p > 0:
        with np.errstate(invalid="ignore", divide="ignore"):
            closeness = np.exp(-np.abs(np.log(cat.price / p)))
        sim += np.nan_to_num(closeness, nan=0.0)
    sim[item] = -np.inf
    return sim
