"""Item neighbours for serving: the model's similar items and the complements model's bought-together
lists, in the shop state's item indices, with catalogue neighbours for items the models do not know.

`ItemMap` maps a model's item indices to the state's (the model may be older than the catalogue:
new items, another feature build's order). `Neighbours` answers per state item, best first, from a
bounded cache filled at load for the most popular items (a model's similar_items costs about as
much for 128 items as for one) or, when the model offers one (`Recommender.neighbour_table`), from
a table of every item computed at load, so a request only slices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from serving import filters as F
from serving.cache import Cache

Pair = tuple[np.ndarray, np.ndarray]
_EMPTY: Pair = (np.zeros(0, np.int64), np.zeros(0))


class ItemMap:
    """Between a model's item indices and the state's.

    to_state: (n_model,) the state index of each model item (every model item has one: the engine
    adds the items the catalogue lacks, inactive). to_model(i): the model index of state item i, or
    -1 when the model does not know it (items added since it was trained). `identity`: model item j
    is state item j for every j < n_model (the state may hold more items after them)."""

    def __init__(self, model_item_ids: np.ndarray, state_index: dict[str, int]) -> None:
        ids = np.asarray(model_item_ids).astype(str)
        to_state = np.array([state_index.get(i, -1) for i in ids], dtype=np.int64)
        if (to_state < 0).any():
            raise ValueError(f"{int((to_state < 0).sum())} model items are missing from the shop state")
        self.n_model = len(ids)
        self.to_state = to_state
        self.identity = bool(np.array_equal(to_state, np.arange(len(ids))))
        n_state = int(to_state.max(initial=-1)) + 1
        self._to_model = np.full(n_state, -1, dtype=np.int64)
        self._to_model[to_state] = np.arange(len(ids))
        for a in (self.to_state, self._to_model):
            a.setflags(write=False)

    def to_model(self, items: np.ndarray) -> np.ndarray:
        """Model indices of state items (-1 where the model does not know the item)."""
        items = np.asarray(items, dtype=np.int64)
        if self.identity:
            return np.where(items < self.n_model, items, -1)
        out = np.full(len(items), -1, dtype=np.int64)
        inside = items < len(self._to_model)
        out[inside] = self._to_model[items[inside]]
        return out

    def scores_to_state(self, scores: np.ndarray, n_state: int) -> np.ndarray:
        """(n_model,) model scores -> (n_state,) in state order, -inf for items the model lacks."""
        if self.identity and n_state == self.n_model:
            return scores
        out = np.full(n_state, -np.inf, dtype=scores.dtype)
        out[self.to_state] = scores
        return out


class Neighbours:
    """One model's item neighbours (similar items or complements) in state indices, cached."""

    def __init__(self, model: Any, items: ItemMap, k: int, cache_items: int) -> None:
        self.model = model
        self.items = items
        self.k = k
        self._cache: Cache[int, Pair] = Cache(cache_items)
        self._table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        table = model.neighbour_table(k)
        if table is not None:
            self._table = _to_state_table(*table, items)

    @property
    def precomputed(self) -> bool:
        return self._table is not None

    def of(self, i: int) -> Pair | None:
        """(ids, scores) of state item i, best first, the item itself left out; None when the
        model has no similarity or does not know the item."""
        if self._table is not None:
            indptr, ids, scores = self._table
            if i + 1 >= len(indptr):
                return _EMPTY
            lo, hi = indptr[i], indptr[i + 1]
            return ids[lo:hi], scores[lo:hi]
        hit = self._cache.peek(i)
        if hit is not None:
            return hit
        got = self.batch(np.array([i]))[0]
        if got is not None:
            self._cache.put(i, got)
        return got

    def warm(self, hot: np.ndarray, keep: Callable[[Pair], Pair] = lambda p: p) -> None:
        """Compute the lists of `hot` items in batches of 128 at load."""
        if self._table is not None:
            return
        for start in range(0, len(hot), 128):
            chunk = hot[start : start + 128]
            for i, got in zip(chunk.tolist(), self.batch(chunk), strict=True):
                if got is not None and len(got[0]):
                    self._cache.put(i, keep(got))

    def batch(self, items: np.ndarray) -> list[Pair | None]:
        """model.similar_items for state items in one call, mapped back to state indices: per item
        (ids, scores) best first, the item itself and padding removed; None where the model has no
        similarity or does not know the item."""
        items = np.asarray(items, dtype=np.int64)
        mi = self.items.to_model(items)
        out: list[Pair | None] = [None] * len(items)
        known = np.flatnonzero(mi >= 0)
        if not len(known):
            return out
        try:
            ids_all, sc_all = self.model.similar_items(mi[known], self.k)
        except NotImplementedError:
            return out
        to_state = self.items.to_state
        for row, j in enumerate(known.tolist()):
            ids, sc = np.asarray(ids_all[row], dtype=np.int64), np.asarray(sc_all[row], dtype=np.float64)
            ok = (ids >= 0) & np.isfinite(sc)
            ids, sc = to_state[ids[ok]], sc[ok]
            ok = ids != items[j]
            out[j] = (ids[ok], sc[ok])
        return out


def content_neighbours(cat: F.Catalog, i: int, k: int) -> Pair:
    """The top k catalogue neighbours of item i (category levels, brand, price), best first."""
    sim = F.content_neighbours(cat, i)
    m = min(k, cat.n - 1)
    if m <= 0:
        return _EMPTY
    top = np.argpartition(-sim, m - 1)[:m]
    top = top[np.argsort(-sim[top], kind="stable")]
    return top.astype(np.int64), sim[top]


def _to_state_table(
    indptr: np.ndarray, ids: np.ndarray, scores: np.ndarray, items: ItemMap
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model-index neighbour table in state indices (rows and ids mapped, rows re-sorted)."""
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    cols, vals = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    n = items.n_model
    if not items.identity:
        rows, cols = items.to_state[rows], items.to_state[cols]
        order = np.argsort(rows, kind="stable")
        rows, cols, vals = rows[order], cols[order], vals[order]
        n = int(items.to_state.max(initial=-1)) + 1
    ok = (cols != rows) & (vals > 0)
    rows, cols, vals = rows[ok], cols[ok], vals[ok]
    out_indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    for a in (out_indptr, cols, vals):
        a.setflags(write=False)
    return out_indptr, cols, vals
