"""The bought-together fill: a short complement block topped up without ranking every item.

`Fill.rank` gives exactly the block of the dense ranking `Ranker.rank(base, allowed, k,
primary=complements, fill=Fill.vector(sources))` (the dense reference, kept and tested against
this), walking precomputed popularity orders of the sources' parent categories instead of
scoring the catalogue: a t-shirt's complements usually fill the block by themselves, and the 25k
items of its parent category are then never touched.

A `Fill` depends on the catalogue's items, categories and popularity, not on stock (the request
passes its `allowed` mask), so one serves every stock version of a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from serving import filters as F
from serving.cache import Cache
from serving.ranking import NeedsAllScores, Rec, in_sorted, norm

FILL_ORDERS = 256  # parent categories whose fill order is kept


class FillOrder(NamedTuple):
    """A category's items in bought-together fill order: most popular first, ties by lower index."""

    items: np.ndarray
    leaves: np.ndarray | None  # the leaf categories among them; None when some item has none


class Fill:
    """Fill orders and the candidate walk over one catalogue structure."""

    def __init__(self, catalog: F.Catalog, pop_squashed: np.ndarray, config: Any) -> None:
        self.catalog = catalog
        self.pop_squashed = pop_squashed
        self.max_per_brand = config.max_per_brand
        self.max_per_category = config.max_per_category
        self.n_leaves = int(catalog.leaf.max(initial=-1)) + 2  # leaf codes + 1 (0: no leaf)
        self._orders: Cache[str, FillOrder] = Cache(FILL_ORDERS)
        self._all: FillOrder | None = None

    def warm(self) -> None:
        """Every parent category's fill order (a 25k-item parent costs ~2 ms to sort, the whole
        catalogue ~10 ms: not for the first requests), the largest parents first."""
        self.order(None)
        paths = {F.parent_category(c) for c in set(self.catalog.categories.tolist())}
        known = sorted(
            (p for p in paths if p and p in self.catalog.prefix_items),
            key=lambda p: -len(self.catalog.prefix_items[p]),
        )
        for p in known[:FILL_ORDERS]:
            self.order(p)

    def rank(
        self,
        base: np.ndarray,
        allowed: np.ndarray,
        k: int,
        primary: np.ndarray,
        parents: list[str],
        reason: Callable[[int], str],
    ) -> list[Rec]:
        """`_rank(b, allowed, k, primary=primary, fill=vector(src))` without a pass over the
        catalogue, where b[primary] = `base` (the allowed complements and their summed scores) and
        `parents` are the sources' parent categories (one per source, repeats kept). Raises
        NeedsAllScores when the fill cannot be normalised (every item under a parent).

        That dense ranking walks every allowed item in one order (value down, lower index first:
        what its doubling candidate sets give `diversify`) and keeps the first k that fit the brand
        and leaf caps. The order has three tiers that never interleave: the primary items (values
        in [2, 3]); the parents' items, lifted by 1.0 once per source under the parent (values by
        lift, then popularity; an item under nested parents is lifted for each); every other item
        (by popularity, values in [0, 1)). So the walk
        here takes the primary items, and only when they leave the block short draws more, most
        popular first, from each parent's precomputed order (`order`, built once per parent)
        and from the catalogue's, passing on to `diversify` only items that no undrawn item can
        reach (a threshold walk). It skips the items the request rules out (`allowed`), the primary
        items, those whose brand or leaf the block already fills, and a whole parent once all its
        leaf categories are full. Every value comes from the dense path's arithmetic on the same
        operands (same bits). A t-shirt's complements usually fill the block by themselves; the
        25k items of its parent category are then never touched."""
        cat, cfg = self.catalog, self
        kept = np.zeros(0, dtype=np.int64)
        scores: list[float] = []
        capped: Callable[[np.ndarray], np.ndarray] | None = None
        sources: list[list[Any]] = []  # filled by _fill_walk

        def admit(items: np.ndarray, vals: np.ndarray) -> None:
            """Walk on from the block so far through `items`, which no undrawn item can outrank."""
            nonlocal kept, capped
            order = np.lexsort((items, -vals))  # value down, lower index first
            items, vals = items[order], vals[order]
            before = len(kept)
            kept = F.diversify(
                np.concatenate([kept, items]), cat, k,
                max_per_brand=cfg.max_per_brand, max_per_category=cfg.max_per_category,
            )  # fmt: skip
            if len(kept) == before:
                return
            # The new kept items are a subsequence of `items`, in the same order.
            by_id = np.argsort(items, kind="stable")
            scores.extend(vals[by_id[np.searchsorted(items[by_id], kept[before:])]].tolist())
            if len(kept) < k:
                capped = F.capped(kept, cat, cfg.max_per_brand, cfg.max_per_category)
                full = np.bincount(cat.leaf[kept] + 1, minlength=n_leaves) >= cfg.max_per_category
                for src in sources:
                    if src[4] is not None and full[src[4] + 1].all():
                        src[1] = len(src[0])  # every leaf category there is full: none fits

        n_leaves = self.n_leaves
        prim = np.asarray(primary, dtype=np.int64)
        if len(prim):
            if not np.isfinite(base).all():  # (nan_to_num costs more than the rest when idle)
                base = np.nan_to_num(base, neginf=0.0)
            admit(prim, 2.0 + np.clip(norm(base), 0, 1))
        if len(kept) < k:
            self.walk(
                allowed, prim, parents, sources, admit,
                short=lambda: len(kept) < k,
                blocked=lambda items: capped(items) if capped is not None else np.zeros(len(items), bool),
            )  # fmt: skip
        ids = cat.item_ids
        return [Rec(str(ids[i]), v, reason(i)) for i, v in zip(kept.tolist(), scores, strict=True)]

    def walk(
        self,
        allowed: np.ndarray,
        primary: np.ndarray,
        parents: list[str],
        sources: list[list[Any]],
        admit: Callable[[np.ndarray, np.ndarray], None],
        *,
        short: Callable[[], bool],
        blocked: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        """The fill tiers of `_fill_rank`: feed `admit` every allowed non-primary item in
        (value down, index up) order, in batches, while `short()`; items that `blocked` says the
        block's brand / leaf caps already shut out are dropped on the way (diversify would skip
        them)."""
        cat = self.catalog
        pop = self.pop_squashed
        counts: dict[str, int] = {}
        for p in parents:
            counts[p] = counts.get(p, 0) + 1
        names = list(counts)
        # Category prefixes nest or are disjoint. An item under nested parents is lifted once per
        # source under each of them, and drawn from the innermost parent's order only.
        lifts = [sum(c for q, c in counts.items() if p == q or p.startswith(q + "/")) for p in names]
        inner = [[cat.prefix_items[q] for q in names if q.startswith(p + "/")] for p in names]
        members = [cat.prefix_items[p] for p in names]  # sorted item indices under each parent
        orders = [self.order(p) for p in names]
        catalogue = self.order(None)
        everything = catalogue.items

        def outside(items: np.ndarray, under: list[np.ndarray]) -> np.ndarray:
            out = np.ones(len(items), dtype=bool)
            for m in under:
                out &= ~in_sorted(m, items)
            return out

        def first(order: np.ndarray, under: list[np.ndarray], from_end: bool = False) -> np.ndarray:
            """The first (or last) item of `order` under none of `under`; empty when none is."""
            pos, step = 0, 64
            while pos < len(order):
                if from_end:
                    part = order[max(0, len(order) - pos - step) : len(order) - pos]
                else:
                    part = order[pos : pos + step]
                ok = np.flatnonzero(outside(part, under))
                if len(ok):
                    return part[ok[-1:]] if from_end else part[ok[:1]]
                pos, step = pos + len(part), step * 2
            return order[:0]

        def lifted(x: np.ndarray, times: int) -> np.ndarray:
            for _ in range(times):  # _fill_vector's `fill[under] += 1.0`, once per source
                x = x + 1.0
            return x

        # squash(fill)'s extremes, exactly: the least popular item under no parent (every lifted
        # value is >= 1 > any popularity squashed into [0, 1)), and the most lifted parent item.
        least = first(everything, members, from_end=True)
        if not len(least):
            raise NeedsAllScores  # the parents hold every item
        lo = pop[least[0]]
        hi = pop[everything[0]]
        # [order, next position, next chunk, lifts, leaf codes or None, parents drawn elsewhere]
        sources += [[everything, 0, 64, 0, catalogue.leaves, members]]
        for o, times, under in zip(orders, lifts, inner, strict=True):
            top = first(o.items, under)
            if len(top):  # (else every item of the parent lies in inner ones)
                hi = max(hi, lifted(pop[top], times)[0])
                sources.append([o.items, 0, 64, times, o.leaves, under])
        if not hi > lo:
            raise NeedsAllScores

        def value(items: np.ndarray, times: int) -> np.ndarray:
            return (lifted(pop[items], times) - lo) / (hi - lo) * 0.999

        prim_sorted = np.sort(primary)
        pool, pool_v = np.zeros(0, dtype=np.int64), np.zeros(0)
        while short():
            live = [src for src in sources if src[1] < len(src[0])]
            fronts = [float(value(src[0][src[1] : src[1] + 1], src[3])[0]) for src in live]
            bound = max(fronts, default=-np.inf)  # no undrawn item has a higher value
            if len(pool):
                out = pool_v > bound
                if out.any():
                    admit(pool[out], pool_v[out])
                    pool, pool_v = pool[~out], pool_v[~out]
                    continue
            if not live:
                break
            src = live[int(np.argmax(fronts))]
            part = src[0][src[1] : src[1] + src[2]]
            src[1], src[2] = src[1] + len(part), src[2] * 2
            ok = allowed[part]
            if len(prim_sorted):
                ok &= ~in_sorted(prim_sorted, part)
            if src[5]:
                ok &= outside(part, src[5])
            part = part[ok]
            part = part[~blocked(part)]
            if len(part):
                pool = np.concatenate([pool, part])
                pool_v = np.concatenate([pool_v, value(part, src[3])])

    def order(self, parent: str | None) -> FillOrder:
        """The items under category prefix `parent` (None: every item) most popular first, as a
        short bought-together block takes them; one per parent, kept in a bounded cache."""
        got = self._all if parent is None else self._orders.peek(parent)
        if got is None:
            items = self.catalog.prefix_items[parent] if parent is not None else np.arange(self.catalog.n)
            items = items[np.argsort(-self.pop_squashed[items], kind="stable")]  # ties: lower index
            leaves = np.unique(self.catalog.leaf[items])
            got = FillOrder(items, None if (leaves < 0).any() else leaves)
            got.items.setflags(write=False)
            if parent is None:
                self._all = got
                return got
            self._orders.put(parent, got)
        return got

    def parent_keys(self, src: list[int]) -> list[str]:
        """Each source's parent category prefix (repeats kept), as _fill_vector lifts them."""
        out = []
        for i in src:
            parent = F.parent_category(self.catalog.categories[i])
            if parent and parent in self.catalog.prefix_items:
                out.append(parent)
        return out

    def parents(self, src: list[int]) -> list[np.ndarray]:
        """Each source's parent category items, as _fill_vector adds them."""
        return [self.catalog.prefix_items[p] for p in self.parent_keys(src)]

    def vector(self, src: list[int]) -> np.ndarray:
        """Fallback order for a short complement block: popular, the sources' categories first."""
        fill = self.pop_squashed.copy()
        for under in self.parents(src):
            fill[under] += 1.0
        return fill
