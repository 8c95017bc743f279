"""Exact top scores of a factor model without scoring the whole catalogue.

Scoring every item reads every item's factors: 100k items x 64 float32 is 25.6 MB per request,
about 2-3 ms on this machine, bound by memory bandwidth rather than arithmetic. But a request only
needs the best few dozen allowed items, and by Cauchy-Schwarz no item can score above
|user| x |item|. Implicit-feedback factors are very unequal in length (rarely bought items stay near
zero), so `NormOrdered` keeps the item factors sorted by decreasing length and scores them in
blocks, longest first, stopping as soon as the `need`-th best allowed score found so far is above
|user| x (length of the next unscored item): nothing unscored can then reach the top `need`
(length-based pruning, as in LEMP, Teflioudi et al., SIGMOD 2015). On the 100k-item bench shop a
request scores about 5% of the items. The answer is exact, not approximate: the top `need` allowed
items and their scores are those of scoring everything, bit for bit: OpenBLAS's matrix-vector
kernel computes rows in groups (of 4 here) and the rows left over at the end of a call by another
code path whose rounding differs in the last bit, so every product here covers a multiple of
`ROWS` rows (the factors are padded with zero rows), and the items that a plain product over all
items computes by that other path (`tail_items`) are scored as it does (tests/test_mips.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Relative slack on the bound, far above float32 rounding of a 64-term dot product (~1e-6).
_SLACK = 1e-4
# Every product covers a multiple of this many rows: a multiple of any BLAS kernel's row grouping.
ROWS = 16


def tail_items(n: int) -> np.ndarray:
    """The items that `factors @ query` over all n items computes by the kernel's leftover-rows
    path (always inside the last n % ROWS); `factors[n - r:] @ query` reproduces their bits."""
    return np.arange(n - n % ROWS, n, dtype=np.int64)


@dataclass(frozen=True)
class Scan:
    """Scores of a prefix of the items in decreasing-length order. `items`/`scores` are every
    scored item (allowed or not) and its exact score; no unscored item scores above `bound`
    (None when every item was scored), and at least `need` allowed scored items score above it.
    `prefix`: `items` are the first len(items) items in length order (`NormOrdered.order`), so
    an item's score is at its `NormOrdered.position`. `floor`: the `need`-th best allowed score
    among `items` where the scan found it (None otherwise), above `bound`: a ranking can pick its
    top `need` allowed items among the few that score at least this. Found before the leftover
    rows' re-scoring (`_tail_bits`), which may move one of those items by a last bit: a user
    counts the items at or above it before relying on it."""

    items: np.ndarray
    scores: np.ndarray
    bound: float | None
    prefix: bool = False
    floor: float | None = None

    @property
    def complete(self) -> bool:
        return self.bound is None


@dataclass(frozen=True)
class NormOrdered:
    """Item factors sorted by decreasing Euclidean length (rows of `factors` are items `order`)."""

    order: np.ndarray  # (n,) int64
    factors: np.ndarray  # (n + padding, d) float32, C-contiguous; zero rows pad to a multiple of ROWS
    lengths: np.ndarray  # (n,) float64, decreasing; lengths[n] appended as 0 for the bound
    tail_factors: np.ndarray  # the unsorted factors' rows from tail_items(n) on: their own bits
    position: np.ndarray  # (n,) int64: the row of each item in `factors` (empty in a `subset`)
    tail_rows: np.ndarray  # rows of the tail_items(n) in `factors`, ascending
    tail_first: int = -1  # the first of the catalogue's tail_items (-1: n - len(tail_factors))

    @classmethod
    def build(cls, item_factors: np.ndarray) -> NormOrdered:
        x = np.asarray(item_factors)
        if x.ndim != 2 or x.dtype != np.float32:
            raise ValueError(f"item factors must be a 2-d float32 array, got {x.dtype} {x.shape}")
        lengths = np.linalg.norm(x.astype(np.float64), axis=1)
        order = np.argsort(-lengths, kind="stable").astype(np.int64)
        pad = np.zeros((-len(x) % ROWS, x.shape[1]), dtype=np.float32)
        factors = np.ascontiguousarray(np.concatenate([x[order], pad]))
        tail = np.ascontiguousarray(x[len(x) - len(tail_items(len(x))) :])
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        tail_rows = np.sort(position[tail_items(len(x))])
        out = cls(order, factors, np.append(lengths[order], 0.0), tail, position, tail_rows)
        for a in (out.order, out.factors, out.lengths, out.tail_factors, out.position, out.tail_rows):
            a.setflags(write=False)
        return out

    @property
    def n(self) -> int:
        return len(self.order)

    @property
    def _first_tail(self) -> int:
        return self.tail_first if self.tail_first >= 0 else self.n - len(self.tail_factors)

    def subset(self, items: np.ndarray) -> NormOrdered:
        """The same structure over `items` (item indices) alone, for `scan`s restricted to them (a
        category page ranks its own items first): the same length order and the same bits as
        the whole catalogue's. Its scans are not a prefix of the catalogue's order; no `score`."""
        rows = np.sort(self.position[np.asarray(items, dtype=np.int64)])
        pad = np.zeros((-len(rows) % ROWS, self.factors.shape[1]), dtype=np.float32)
        out = NormOrdered(
            self.order[rows],
            np.ascontiguousarray(np.concatenate([self.factors[rows], pad])),
            np.append(self.lengths[rows], 0.0),
            self.tail_factors,
            np.zeros(0, dtype=np.int64),
            np.flatnonzero(np.isin(rows, self.tail_rows)),
            tail_first=self._first_tail,
        )
        for a in (out.order, out.factors, out.lengths, out.tail_rows):
            a.setflags(write=False)
        return out

    def scan(self, query: np.ndarray, allowed: np.ndarray, need: int, first_block: int = 2048) -> Scan:
        """Score items longest first, in blocks that double, until the `need` best allowed items
        are certain (or every item is scored). `allowed` is an (n,) bool mask over item indices.
        Every returned score has the bits of the same item's score in `item_factors @ query`."""
        q = np.asarray(query, dtype=np.float32)
        q_len = float(np.linalg.norm(q.astype(np.float64)))
        n = self.n
        need = max(int(need), 1)
        parts: list[np.ndarray] = []
        kept: list[np.ndarray] = []  # allowed scores so far, per block
        start, block = 0, max(-(-int(first_block) // ROWS) * ROWS, ROWS)
        bound: float | None = None
        floor: float | None = None
        while start < n:
            end = min(n, start + block)
            s = (self.factors[start : -(-end // ROWS) * ROWS] @ q)[: end - start]
            parts.append(s)
            kept.append(s[allowed[self.order[start:end]]])
            start, block = end, block * 2
            if start >= n:
                break
            good = np.concatenate(kept) if len(kept) > 1 else kept[0]
            if len(good) >= need:
                limit = q_len * self.lengths[start] * (1.0 + _SLACK)
                # The need-th best is above the limit only if `need` scores are: a count is
                # cheaper than the partition, which most first blocks would do in vain.
                if np.count_nonzero(good > limit) < need:
                    continue
                kth = float(np.partition(good, len(good) - need)[len(good) - need])
                if kth > limit:
                    bound, floor = limit, kth
                    break
        items = self.order[:start]
        scores = np.concatenate(parts)
        at = self.tail_rows[: np.searchsorted(self.tail_rows, start)]  # the tail items scored
        if len(at):  # as _tail_bits, knowing where they are in a prefix of the length order
            scores[at] = (self.tail_factors @ q)[items[at] - self._first_tail]
        if start >= n:
            bound = floor = None
        return Scan(items, scores, bound, prefix=len(self.position) > 0, floor=floor)

    def rescan(self, approx: np.ndarray, query: np.ndarray, allowed: np.ndarray, need: int) -> Scan | None:
        """A `scan` from approximate scores `approx` of the first len(approx) items in length order
        (a matrix product for many queries at once: it rounds differently from the matrix-vector
        product, but by far less than `_SLACK` x |query| x the longest item). Only the allowed
        items whose approximate score may reach the `need`-th best allowed one are scored, exactly
        (the bits of `item_factors @ query`); every allowed item left unscored scores at most the
        bound, and at least `need` scored ones above it. None when the prefix cannot make `need`
        allowed items certain (then `scan`)."""
        q = np.asarray(query, dtype=np.float32)
        q_len = float(np.linalg.norm(q.astype(np.float64)))
        m = len(approx)
        need = max(int(need), 1)
        items = self.order[:m]
        ok = allowed[items]
        good = approx[ok]
        if len(good) < need:
            return None
        kth = float(np.partition(good, len(good) - need)[len(good) - need])
        # |approximate - exact| <= d * 2**-24 * |item| * |query| for float32 dot products of d terms;
        # delta also covers rounding the threshold below to float32 (a relative 2**-24).
        slack = max(_SLACK, 4.0 * len(q) * 2.0**-24)
        delta = q_len * float(self.lengths[0]) * slack
        beyond = q_len * float(self.lengths[m]) * (1.0 + _SLACK) if m < self.n else -np.inf
        bound = max(kth - 2.0 * delta, beyond)
        if not kth - delta > bound:
            return None  # the unscored items (past the prefix) may reach the top `need`
        chosen = items[np.flatnonzero(ok & (approx > np.float32(bound - 2.0 * delta)))]
        return Scan(chosen, self.score(chosen, q), bound)

    def score(self, items: np.ndarray, query: np.ndarray) -> np.ndarray:
        """The scores of `items` (any item indices) with the bits of `item_factors @ query`."""
        items = np.asarray(items, dtype=np.int64)
        if not len(items):
            return np.zeros(0, dtype=np.float32)
        q = np.asarray(query, dtype=np.float32)
        rows = self.position[items]
        pad = -len(rows) % ROWS  # a whole number of kernel row groups
        padded = np.concatenate([rows, np.repeat(rows[:1], pad)]) if pad else rows
        return self._tail_bits(items, (self.factors[padded] @ q)[: len(items)], q)

    def _tail_bits(self, items: np.ndarray, scores: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Re-score the items a full product computes by its leftover-rows path, as it does."""
        if len(self.tail_factors):
            first = self._first_tail
            at = np.flatnonzero(items >= first)
            if len(at):
                scores[at] = (self.tail_factors @ q)[items[at] - first]
        return scores
