"""Ranking: order the allowed items and cut a diverse block of k (serving's one ranker).

Every block (personal, popular, bought-together, similar items) ends here: `Ranker.rank` takes the
scores of the items that can matter, the request's hard rules as a boolean mask, its boosts and
tiers, and returns k `Rec`s with their reasons, at most N per brand and leaf category
(`filters.diversify`). It can rank every item (the dense reference) or only a candidate set that a
scan made certain (`Support`, serving/mips.py); both give the same block, bit for bit, and the
fast paths are tested against the dense one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from serving import filters as F


class Rec(NamedTuple):
    """One recommended item: the shop's id, the ranking score (higher first) and a reason a
    marketer can read."""

    item_id: str
    score: float
    reason: str


class NeedsAllScores(Exception):
    """A ranking over a candidate set cannot be certain of its block: the caller ranks every item."""


@dataclass(frozen=True)
class Support:
    """The candidate set of a ranking that did not score every item.

    items / scores: the items whose base score was computed and those scores (aligned).
    lookup: items -> their base scores (-inf for any item outside `items`); None: from `scores`.
    bound: no allowed item outside `items` scores above it (None: `items` hold them all), so only
        the items above it are certain to be the catalogue's best.
    floor: a score that at least the first candidates' number of allowed items reach, above
        `bound` (a scan's, serving/mips.py): the first candidates are chosen among those only
        (checked: when too few reach it, from all of `items`).
    unscored / tier_bound: with a page tier, the allowed tier-1 items outside `items` and the
        most any of them scores: the bound holds a tier up while one of them can still be kept.
    """

    items: np.ndarray
    scores: np.ndarray | None = None
    lookup: Callable[[np.ndarray], np.ndarray] | None = None
    bound: float | None = None
    floor: float | None = None
    unscored: np.ndarray | None = None
    tier_bound: float | None = None


class Boost:
    """A request's boosts (complements, session, re-buy) of a few dozen items, kept sparse: a
    catalogue-sized float64 array per request (800 KB at 100k items) cost more to allocate and
    zero than every boost together. `add` sums in float64 exactly as `dense[ids] += vals` on a
    zeroed array does (same operands, a repeated id takes its last value), and `at` reads back what
    that array holds, so rankings keep their bits."""

    __slots__ = ("_v",)

    def __init__(self) -> None:
        self._v: dict[int, float] = {}

    def add(self, ids: np.ndarray, vals: np.ndarray | float) -> None:
        ids_l = np.asarray(ids, dtype=np.int64).tolist()
        vals_l = np.broadcast_to(np.asarray(vals, dtype=np.float64), (len(ids_l),)).tolist()
        v = self._v
        self._v.update([(i, v.get(i, 0.0) + x) for i, x in zip(ids_l, vals_l, strict=True)])

    def at(self, items: np.ndarray) -> np.ndarray:
        """(len(items),) float64 boosts of `items` (sorted ascending, unique), 0 where none."""
        out = np.zeros(len(items))
        if self._v and len(items):
            keys = np.fromiter(self._v.keys(), dtype=np.int64, count=len(self._v))
            vals = np.fromiter(self._v.values(), dtype=np.float64, count=len(self._v))
            pos = np.minimum(np.searchsorted(items, keys), len(items) - 1)
            hit = items[pos] == keys
            out[pos[hit]] = vals[hit]
        return out

    def nonzero(self) -> np.ndarray:
        """The boosted items, ascending (np.flatnonzero of the dense array)."""
        return np.sort(np.fromiter((i for i, x in self._v.items() if x != 0), dtype=np.int64))


class Ranker:
    """Ranks blocks over one catalogue. `pop_squashed` is the popularity squashed into [0, 1),
    the default fill order of a `primary` ranking."""

    __slots__ = ("catalog", "max_per_brand", "max_per_category", "overfetch", "pop_squashed")

    def __init__(self, catalog: F.Catalog, pop_squashed: np.ndarray, config: Any) -> None:
        self.catalog = catalog
        self.pop_squashed = pop_squashed
        self.max_per_brand = config.max_per_brand
        self.max_per_category = config.max_per_category
        self.overfetch = config.overfetch

    def first_candidates(self, k: int) -> int:
        """How many candidates `rank` orders first for a block of k (grown when diversity cuts)."""
        return first_candidates(k, self.overfetch)

    def rank(
        self,
        base: np.ndarray | None,
        allowed: np.ndarray,
        k: int,
        *,
        reason: Callable[[int], str],
        boost: Boost | None = None,
        boosted: np.ndarray | None = None,
        tier: np.ndarray | None = None,
        primary: np.ndarray | None = None,
        fill: np.ndarray | None = None,
        support: Support | None = None,
        normalise: bool = True,
    ) -> list[Rec]:
        """Order the allowed items and cut a diverse block of k.

        base (n,) scores are min-max normalised over the top candidates (so boosts, in those units,
        mean the same for every model); `tier` adds whole steps above any score (page context);
        `primary` items (e.g. complements) rank above all others, which are ordered by `fill`
        (default: popularity). Candidates are over-fetched and grown until the block is full or
        the allowed items run out.

        `support` (a `Support`, with no `primary`): the only items whose `base` was computed; the
        candidates then come from those items alone, without a pass over the catalogue (its fields
        say what else is known). Needing deeper candidates than it makes certain raises
        NeedsAllScores. `normalise=False`: `base` already holds the final values, as the `primary`
        path makes them."""
        cfg = self
        n = allowed.size
        support_scores = lookup = bound = floor = unscored = tier_bound = None
        if support is not None:
            support_scores, lookup, bound = support.scores, support.lookup, support.bound
            floor, unscored, tier_bound = support.floor, support.unscored, support.tier_bound
            support = support.items
        pool: np.ndarray | None = None  # with `support`: the allowed items that have a score
        pool_s: np.ndarray | None = None  # ... and their `base` values
        head: tuple[np.ndarray, np.ndarray] | None = None  # ... those at or above `floor`
        finite: np.ndarray | None = None
        s = base
        if support is not None:
            if support_scores is None:
                support_scores = base[support]
            if floor is not None and (bound is None or floor > bound):
                at_floor = np.flatnonzero(support_scores >= floor)
                items, vals = support[at_floor], support_scores[at_floor]
                ok = allowed[items] & np.isfinite(vals)
                if np.count_nonzero(ok) >= self.first_candidates(k):
                    # The top candidates all lie here (at least that many allowed items score at
                    # least `floor`), and they are certain (above `bound`): the rest of `support`
                    # is needed only when diversity asks for more.
                    head = (items[ok], vals[ok])
                    n_allowed = len(support)  # an upper bound, made exact before it decides
            if head is None:
                keep = allowed[support] & np.isfinite(support_scores)
                pool, pool_s = support[keep], support_scores[keep]
                n_allowed = len(pool)
        elif primary is not None:
            # Primary items score in [2, 3]; all others follow in `fill` order, squeezed into [0, 1).
            primary = np.asarray(primary, dtype=np.int64)
            primary = primary[allowed[primary]]
            s = np.where(allowed, self.pop_squashed if fill is None else squash(fill), -np.inf)
            s[primary] = 2.0 + np.clip(norm(np.nan_to_num(base[primary], neginf=0.0)), 0, 1)
        else:
            # In the model's own dtype (float32 for factor models): selecting the top candidates
            # is the O(n) part of a request, and float32 halves it. Values are normalised below in
            # float64, for the candidates only.
            s = np.where(allowed, base, -np.inf)
        if support is None:
            finite = np.isfinite(s)
            n_allowed = int(np.count_nonzero(finite))
        if n_allowed == 0:
            return []

        def pick(c: int) -> tuple[np.ndarray, np.ndarray | None]:
            """The top c of `s` among the allowed items (all of them when c covers them), equal
            values at the cut by lower index: argpartition alone takes an arbitrary few of them,
            which then differ between the candidate-set and the dense ranking. With their `s`
            values where at hand (a candidate set), else None."""
            if pool is None and head is not None:  # the first candidates, among the head
                items, vals = head
                if c >= len(items):
                    return items, vals
                at_top = top_by_index(vals, c, items)
                return items[at_top], vals[at_top]
            if pool is not None:
                if c >= len(pool):
                    return pool, pool_s
                at_top = top_by_index(pool_s, c, pool)
                return pool[at_top], pool_s[at_top]
            return (top_by_index(s, c) if c < n else np.flatnonzero(finite)), None

        def certain() -> int:
            """How many of the top candidates are certain (all when nothing lies outside)."""
            if pool is None and head is not None:
                return len(head[0])  # a lower bound, enough for the first candidates
            return n_allowed if pool is None or bound is None else int(np.count_nonzero(pool_s > bound))

        def at(idx: np.ndarray) -> np.ndarray:
            """`s` of items `idx`."""
            return s[idx] if lookup is None or s is not base else lookup(idx)

        c = min(n_allowed, self.first_candidates(k))
        if c > certain():
            raise NeedsAllScores
        scale: tuple[float, float] | None = None  # (lo, hi - lo): `s` not yet min-max normalised
        if primary is None and normalise:
            # Min-max over the top candidates: boosts (in these units) mean the same for any model.
            top, top_v = pick(c)
            top_s = at(top) if top_v is None else top_v
            hi, lo = float(top_s.max()), float(top_s.min())
            if support is not None and hi <= lo:
                raise NeedsAllScores  # every candidate ties: the dense path's flat normalisation
            if tier is not None and pool is not None:
                # The candidates' values only, with the dense path's arithmetic (same bits); every
                # step is monotone, so the bounds map to bounds.
                pool_s = (pool_s.astype(np.float64) - lo) / (hi - lo) + 10.0 * tier[pool]
                if bound is not None:
                    raw0 = bound
                    bound = bound0 = float((np.float64(raw0) - lo) / (hi - lo))
                    if unscored is not None and len(unscored):
                        raw1 = raw0 if tier_bound is None else min(tier_bound, raw0)
                        bound = max(bound0, float((np.float64(raw1) - lo) / (hi - lo)) + 10.0)
                    # No item at or below the lowest bound is ever certain, so never picked; the
                    # boosted ones join the candidates anyway.
                    keep = pool_s > bound0
                    if boosted is not None and len(boosted):
                        keep |= in_sorted(np.sort(boosted), pool)
                    pool, pool_s = pool[keep], pool_s[keep]
                    n_allowed = len(pool)
                by_item = np.argsort(pool, kind="stable")
                lookup, s = values_of(pool[by_item], pool_s[by_item]), base
            elif tier is not None or hi <= lo:  # the whole normalised array is needed
                s = (s.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.where(finite, 0.0, -np.inf)
            else:  # a monotone map: the order of `s` is the order of the normalised scores
                scale = (lo, hi - lo)
        if tier is not None and pool is None:
            s = s + 10.0 * tier

        def value(vals: np.ndarray) -> np.ndarray:
            """The ranking values of items whose `s` values are `vals`."""
            if scale is None:
                return vals
            return (vals.astype(np.float64) - scale[0]) / scale[1]

        # Boosted items may jump the queue: few, scored exactly; every other item ranks by `s`,
        # so the top c of `s` plus the boosted ones hold the true top c.
        if boost is None:
            boosted = np.zeros(0, np.int64)
        elif boosted is None:  # callers that know which items they boosted save a full scan
            boosted = boost.nonzero()
        if finite is not None:
            boosted = boosted[finite[boosted]]
        elif len(boosted):
            boosted = boosted[allowed[boosted] & np.isfinite(at(boosted))]
        reuse = primary is None and tier is None and normalise  # the normalisation's top c
        while True:
            if not reuse:
                top, top_v = pick(c)
            reuse = False
            # The sorted union of the top c and the boosted items (np.union1d, without its hashing).
            if finite is not None:
                top = top[finite[top]]
            if len(boosted) and len(top):  # (a few dozen each: no n-sized mask)
                extra = boosted[~in_sorted(np.sort(top), boosted)]
                top = np.concatenate([top, extra])
                if top_v is not None:
                    top_v = np.concatenate([top_v, at(extra)])
            elif len(boosted):
                top, top_v = boosted, None
            by_item = np.argsort(top, kind="stable")
            cand = top[by_item]  # = np.sort(top): the items are distinct
            cand_s = at(cand) if top_v is None else top_v[by_item]
            key = value(cand_s) if boost is None else value(cand_s) + boost.at(cand)
            ordered = cand[np.argsort(-key, kind="stable")]
            kept = F.diversify(
                ordered,
                self.catalog,
                k,
                max_per_brand=cfg.max_per_brand,
                max_per_category=cfg.max_per_category,
            )
            if len(kept) >= k:
                break
            if pool is None and head is not None:  # diversity needs more: the whole candidate set
                keep = allowed[support] & np.isfinite(support_scores)
                pool, pool_s = support[keep], support_scores[keep]
                n_allowed = len(pool)
            if c >= n_allowed:
                if pool is not None and bound is not None:
                    raise NeedsAllScores  # allowed items beyond the scored ones may exist
                break
            # Short: a few brands or leaf categories filled up. Their other items can never be
            # kept, and behind them may lie thousands more (a t-shirt page: 25k tops before the
            # first sock), so drop them all before fetching more; the walk stays the same, since
            # diversify skipped exactly these items and would skip every later one.
            blocked = F.capped(kept, self.catalog, cfg.max_per_brand, cfg.max_per_category)
            if pool is not None:
                drop = blocked(pool)
                drop[in_sorted(np.sort(kept), pool)] = False
                pool, pool_s = pool[~drop], pool_s[~drop]
                n_allowed = len(pool)
            else:
                drop = blocked(np.arange(n))
                drop[kept] = False
                s = np.where(drop, -np.inf, s)
                finite = np.isfinite(s)
                n_allowed = int(np.count_nonzero(finite))
            boosted = boosted[~blocked(boosted) | np.isin(boosted, kept)]
            if unscored is not None and len(unscored) and pool is not None and tier is not None:
                unscored = unscored[~blocked(unscored)]  # (unscored items are never kept)
                if not len(unscored) and bound is not None:
                    bound = bound0  # the page items no scan reached can no longer be kept
            c = min(n_allowed, c * 2)
            if c > certain():
                raise NeedsAllScores
        ids = self.catalog.item_ids
        kept_key = key[np.searchsorted(cand, kept)]  # cand is sorted
        return [
            Rec(str(ids[i]), float(v), reason(i))
            for i, v in zip(kept.tolist(), kept_key.tolist(), strict=True)
        ]


def first_candidates(k: int, overfetch: int) -> int:
    return max(k * overfetch, k + 10)


def candidate_reach(k: int, overfetch: int) -> int:
    """How deep a popularity order a candidate-set ranking takes: room for `rank` to grow its
    first candidates several times before it needs every item."""
    return max(16 * first_candidates(k, overfetch), 1024)


def norm(x: np.ndarray) -> np.ndarray:
    """Scale to (0, 1] by the maximum (min-max would zero the weakest neighbour)."""
    if not len(x):
        return x
    m = np.max(np.abs(x))
    return x / m if m > 0 else np.ones_like(x)


def squash(x: np.ndarray) -> np.ndarray:
    """Monotone map of any scores into [0, 1)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(), x.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):  # finite extremes: no nan or inf anywhere
        x = np.nan_to_num(x, nan=0.0, neginf=0.0, posinf=0.0)
        lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) * 0.999 if hi > lo else np.zeros_like(x)


def top_by_index(values: np.ndarray, c: int, index: np.ndarray | None = None) -> np.ndarray:
    """Positions of the c largest `values` (0 < c < len), equal values at the cut taken by lower
    `index` (default: the position), so that the set is the first c of (value down, index up)."""
    top = np.argpartition(-values, c - 1)[:c]
    cut = values[top].min()
    at_cut = values == cut
    if np.count_nonzero(at_cut) == np.count_nonzero(values[top] == cut):
        return top  # no tie straddles the cut
    ties = np.flatnonzero(at_cut)
    if index is not None:
        ties = ties[np.argsort(index[ties], kind="stable")]
    above = top[values[top] > cut]
    return np.concatenate([above, ties[: c - len(above)]])


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique of item indices by sorting (numpy's hashing unique costs ~10x on these)."""
    x = np.sort(x)
    return x[np.concatenate(([True], x[1:] != x[:-1]))] if len(x) > 1 else x


def values_of(items: np.ndarray, values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """For sorted unique `items` and their `values`: query items -> values (-inf for others)."""
    get = sorted_lookup(items, values)

    def lookup(query: np.ndarray) -> np.ndarray:
        out = np.full(len(query), -np.inf)
        hit, vals = get(query)
        out[hit] = vals
        return out

    return lookup


def sorted_lookup(
    items: np.ndarray, values: np.ndarray
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """For `items` sorted ascending (unique) and their `values`: a function of query items
    returning (which of them are among `items`, the values of those, in query order)."""

    def get(query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(items):
            return np.zeros(len(query), dtype=bool), values[:0]
        at = np.minimum(np.searchsorted(items, query), len(items) - 1)
        hit = items[at] == query
        return hit, values[at[hit]]

    return get


def keys_of(d: dict[int, str]) -> np.ndarray:
    return np.fromiter(d.keys(), dtype=np.int64, count=len(d))


def in_sorted(sorted_items: np.ndarray, idx: Any) -> Any:
    """Whether item index `idx` (or each of an array of them) is in the sorted array."""
    at = np.minimum(np.searchsorted(sorted_items, idx), len(sorted_items) - 1)
    return sorted_items[at] == idx
