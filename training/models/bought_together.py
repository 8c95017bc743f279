"""`bought-together`: complements from baskets ("customers who bought this also bought").

Co-occurrence counts C[i, j] = number of baskets holding both i and j. A pair is kept when it has
enough support (C ≥ min_count) and is positively associated (lift ≥ min_lift, confidence ≥
min_confidence), then scored by confidence P(j | i) or lift P(j | i) / P(j). Items with few kept
pairs (the long tail) get neighbours from item-kNN cosine over the interaction matrix, scaled below
real co-occurrence neighbours. A customer's score = complements of their most recent items.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from training.base import History, ModelConfig, Recommender, TrainData, sparse_neighbours
from training.models.forest import compiled
from training.space import Param


@dataclass(frozen=True)
class BoughtTogetherConfig(ModelConfig):
    metric: str = "confidence"  # confidence | lift (lift favours rare pairs; confidence popular ones)
    min_count: int = 2  # support threshold: baskets that must hold the pair
    min_confidence: float = 0.0
    min_lift: float = 1.0  # only pairs bought together more often than chance
    neighbours: int = 50  # complements kept per item
    fallback_neighbours: int = 20  # item-kNN cosine neighbours for items with few complements
    # Fallback neighbours score at most this: below any real complement whose confidence is
    # above it (with min_count=2 that is every pair of items bought fewer than 200 times).
    fallback_weight: float = 0.01
    recent_items: int = 10  # a customer's last N distinct items drive their recommendations
    recency_decay: float = 0.8  # weight of the n-th most recent item = decay ** n

    def __post_init__(self) -> None:
        if self.metric not in ("confidence", "lift"):
            raise ValueError(f"bought-together metric must be confidence or lift, got {self.metric!r}")


def _topk_keep(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, k: int, by_index: bool
) -> np.ndarray:
    """Which entries of a CSR are among their row's k largest, ties by position in the row or, with
    `by_index`, by lower column index.

    A selection, not a sort: the row's k-th largest value t (a partition), every entry above t, then
    of the entries equal to t the first (or lowest-indexed) until k are kept (what a stable sort's
    first k would keep)."""
    keep = np.zeros(len(data), np.bool_)
    for r in range(len(indptr) - 1):
        s, e = indptr[r], indptr[r + 1]
        n = e - s
        if n <= k:
            keep[s:e] = True
        elif k > 0:
            row = data[s:e]
            t = np.partition(row, n - k)[n - k]
            room = k
            for j in range(n):
                if row[j] > t:
                    keep[s + j] = True
                    room -= 1
            if by_index:  # the `room` lowest column indices among the ties (a row's are distinct)
                tied = np.flatnonzero(row == t)
                cols = indices[s:e][tied]
                if len(tied) > room:
                    last = np.partition(cols, room - 1)[room - 1]
                    tied = tied[cols <= last]
                for j in tied:
                    keep[s + j] = True
                continue
            for j in range(n):
                if room == 0:
                    break
                if row[j] == t:
                    keep[s + j] = True
                    room -= 1
    return keep


# `_topk_keep` compiled, or None without numba: a big shop's next-basket fit keeps the 30 strongest
# of ~5,000 neighbour items for every customer, where the vectorised lexsort below took ~40% of it.
_topk_compiled = compiled(_topk_keep)
TOPK_COMPILED_FROM = 100_000  # entries: below this the vectorised path is as fast (no compile wait)


def row_topk_sparse(M: sp.csr_matrix, k: int, *, by_index: bool = False) -> sp.csr_matrix:
    """Keep the k largest entries of every row of a CSR matrix, ties by position in the row or, with
    `by_index`, by lower column index (the same for a canonical matrix; for a sparse product's
    unsorted rows, a rule that does not depend on how scipy laid the row out). A row's column
    indices are distinct (a product's, a sum's, a canonical matrix's)."""
    M = sp.csr_matrix(M)
    M.eliminate_zeros()
    if _topk_compiled is not None and M.nnz >= TOPK_COMPILED_FROM:
        keep = _topk_compiled(M.indptr.astype(np.int64), M.indices, M.data, int(k), by_index)
        rows = np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))
        return sp.csr_matrix((M.data[keep], (rows[keep], M.indices[keep])), shape=M.shape, dtype=np.float32)
    rows = np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))
    order = np.lexsort((M.indices, -M.data, rows) if by_index else (-M.data, rows))
    rank = np.arange(len(order)) - M.indptr[rows[order]]
    keep = order[rank < k]
    return sp.csr_matrix((M.data[keep], (rows[keep], M.indices[keep])), shape=M.shape, dtype=np.float32)


def _row_scale(M: sp.csr_matrix) -> sp.csr_matrix:
    """Divide each row by its maximum, so values lie in (0, 1]."""
    M = sp.csr_matrix(M, dtype=np.float32)
    mx = np.asarray(M.max(axis=1).toarray()).ravel()
    mx[mx <= 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / mx) @ M, dtype=np.float32)


class BoughtTogether(Recommender):
    name = "bought-together"
    Config = BoughtTogetherConfig
    # Tie-break in promotion: among equal scores the cheaper model to serve wins (a sparse product).
    cost = 5
    # What `shoprec tune` searches (training.tune; only dimensions that are config fields).
    search_space = (
        Param("metric", "categorical", choices=("confidence", "lift")),
        Param("min_count", "int", 1, 10),
        Param("min_lift", "float", 0.5, 3.0),
        Param("neighbours", "int", 10, 200, log=True),
        Param("recent_items", "int", 1, 30, log=True),
        Param("recency_decay", "float", 0.3, 1.0),
    )
    config: BoughtTogetherConfig

    def _fit(self, data: TrainData, *, callback: Any = None) -> None:
        c = self.config
        n_items = data.n_items
        baskets = [np.unique(np.asarray(b, dtype=np.int64)) for b in data.baskets if len(b) > 0]
        if baskets:
            lens = np.array([len(b) for b in baskets])
            Bm = sp.csr_matrix(
                (np.ones(lens.sum(), np.float32), np.concatenate(baskets), np.r_[0, np.cumsum(lens)]),
                shape=(len(baskets), n_items),
            )
        else:
            Bm = sp.csr_matrix((0, n_items), dtype=np.float32)
        n_baskets = max(Bm.shape[0], 1)
        C = sp.csr_matrix(Bm.T @ Bm).tocoo()
        count = np.asarray(Bm.sum(axis=0)).ravel()
        off = C.row != C.col
        i, j, cij = C.row[off], C.col[off], C.data[off].astype(np.float64)
        conf = cij / count[i]
        lift = conf * n_baskets / count[j]
        ok = (cij >= c.min_count) & (conf >= c.min_confidence) & (lift >= c.min_lift)
        val = (conf if c.metric == "confidence" else lift)[ok]
        co = sp.csr_matrix((val.astype(np.float32), (i[ok], j[ok])), shape=(n_items, n_items))
        co = row_topk_sparse(co, c.neighbours)
        self.n_pairs_ = int(co.nnz)
        # Raw confidences (or lifts) add up over a customer's items as evidence should; fallback
        # similarities are scaled into (0, fallback_weight], so they only order the long tail.
        S = co
        if c.fallback_neighbours > 0 and data.user_items.nnz:
            from implicit.nearest_neighbours import CosineRecommender

            knn = CosineRecommender(K=c.fallback_neighbours + 1)
            X = sp.csr_matrix(data.user_items, dtype=np.float32, copy=True)
            X.data[:] = 1.0
            with threadpool_limits(1, "blas"), warnings.catch_warnings():
                # implicit's own normalize() hands itself a COO matrix under current scipy and warns about it
                warnings.filterwarnings("ignore", message="Method expects CSR input")
                knn.fit(X, show_progress=False)
            cos = sp.csr_matrix(knn.similarity, dtype=np.float32)
            cos.setdiag(0.0)
            cos.eliminate_zeros()
            pattern = co.copy()
            pattern.data[:] = 1.0
            cos = cos - cos.multiply(pattern)
            cos.eliminate_zeros()
            S = S + c.fallback_weight * _row_scale(cos)
        S = sp.csr_matrix(S, dtype=np.float32)
        S.setdiag(0.0)
        S.eliminate_zeros()
        self.similarity_ = S

    def _recent_weights(self, history: History) -> sp.csr_matrix:
        """(n, n_items): the customer's last `recent_items` distinct items, decayed by recency."""
        c = self.config
        n = history.user_items.shape[0]
        if not history.sequences:
            X = sp.csr_matrix(history.user_items, dtype=np.float32, copy=True)
            X.data[:] = 1.0
            return X
        rows, cols, vals = [], [], []
        for r, seq in enumerate(history.sequences):
            seen: dict[int, float] = {}
            for item in np.asarray(seq, dtype=np.int64)[::-1]:
                if int(item) not in seen:
                    seen[int(item)] = c.recency_decay ** len(seen)
                    if len(seen) >= c.recent_items:
                        break
            rows.extend([r] * len(seen))
            cols.extend(seen.keys())
            vals.extend(seen.values())
        return sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(n, self.n_items))

    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        return np.asarray((self._recent_weights(history) @ self.similarity_).toarray(), dtype=np.float32)

    def neighbour_table(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every item's top-k complements from the sparse similarity, vectorised over its stored
        entries (~1 s for 100k items, where asking per item densifies a 100k-wide row each);
        exactly what `similar_items` gives per item, restricted to positive scores."""
        sim = sp.csr_matrix(self.similarity_, copy=True)
        sim.sum_duplicates()  # canonical: one entry per (row, col), columns ascending
        m = sim.shape[0]
        rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(sim.indptr))
        cols = sim.indices.astype(np.int64)
        vals = sim.data.astype(np.float64)
        keep = (vals > 0) & (cols != rows)
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        order = np.lexsort((-vals, rows))  # stable: equal scores keep ascending columns
        rows, cols, vals = rows[order], cols[order], vals[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
        top = rank < k
        rows, cols, vals = rows[top], cols[top], vals[top]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))]).astype(np.int64)
        return indptr, cols, vals

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The complements of each item (co-occurrence first, then the cosine fallback)."""
        return sparse_neighbours(self.similarity_, items, k)

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "complements.npz", self.similarity_)

    def _load_state(self, path: Path) -> None:
        self.similarity_ = sp.load_npz(path / "complements.npz").tocsr()
