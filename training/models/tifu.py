"""`tifu`: TIFU-KNN next-basket recommendation (Hu et al., SIGIR 2020, "Modeling Personalized Item
Frequency Information for Next-basket Recommendation").

A customer's baskets, newest first, are cut into groups of `group_size`; basket j (0 = the newest)
sits in group g = j // m at position p = j % m of its group. Its items get the weight

    w(j) = r_g ** g · r_b ** p / |group g| / n_groups

(r_b: decay within a group, r_g: across groups) and the customer's vector is the sum of w over the
baskets holding each item: a time-decayed personal item frequency. The prediction blends it with
the mean vector of the k nearest other customers (Euclidean distance between vectors, as the
paper's code):  score = alpha · own + (1 - alpha) · mean(neighbours).

Baskets are a customer's events at one time (`History.sequence_ts`); without times the whole
history is one basket. The neighbour pool is the training customers' vectors, kept with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from training.base import History, ModelConfig, Recommender, TrainData
from training.models.forest import compiled
from training.space import Param


@dataclass(frozen=True)
class TIFUConfig(ModelConfig):
    group_size: int = 7  # m: baskets per group (the paper's tuned values lie between 3 and 20)
    within_decay: float = 0.9  # r_b: weight of each older basket inside a group
    group_decay: float = 0.7  # r_g: weight of each older group
    neighbours: int = 300  # k nearest customers whose vectors are averaged
    alpha: float = 0.7  # share of the customer's own vector; 1 = no neighbours
    # Neighbours come from at most this many training customers (a seeded random sample of those
    # with a history; 0 = every one): a request computes a distance to each of them, so the pool
    # bounds its cost on a big shop (pool_members).
    pool_size: int = 20_000

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"tifu group_size must be >= 1, got {self.group_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"tifu alpha must lie in [0, 1], got {self.alpha}")
        if self.pool_size < 0:
            raise ValueError(f"tifu pool_size must be >= 0 (0 = every customer), got {self.pool_size}")
        for name in ("within_decay", "group_decay"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"tifu {name} must lie in (0, 1], got {getattr(self, name)}")


@dataclass
class BasketEvents:
    """Every row's distinct (basket, item) pairs, flat: row, item, and the basket's rank counted
    from the row's newest basket (0) and the row's number of baskets."""

    row: np.ndarray
    item: np.ndarray
    rank: np.ndarray  # 0 = the newest basket of the row
    n_baskets: np.ndarray  # (n_rows,)
    n_rows: int
    ts: np.ndarray | None = None  # the basket's time (epoch s) per pair; None when unknown

    def select(self, keep: np.ndarray, shift: int = 0) -> BasketEvents:
        """The pairs in `keep`, ranks moved `shift` baskets closer (every row's newest `shift`
        baskets dropped: the history as it was before them)."""
        return BasketEvents(
            self.row[keep],
            self.item[keep],
            self.rank[keep] - shift,
            np.maximum(self.n_baskets - shift, 0),
            self.n_rows,
            None if self.ts is None else self.ts[keep],
        )


def basket_events(sequences: list[np.ndarray], times: list[np.ndarray], n_rows: int) -> BasketEvents:
    """Group each row's events into baskets (one basket per distinct time; the whole row when
    `times` is empty or a row's times do not match its sequence), vectorised over all rows."""
    seqs = list(sequences) + [np.empty(0, np.int64)] * (n_rows - len(sequences))
    lens = np.array([len(s) for s in seqs[:n_rows]], dtype=np.int64)
    if lens.sum() == 0:
        e = np.empty(0, np.int64)
        return BasketEvents(e, e, e, np.zeros(n_rows, np.int64), n_rows)
    row = np.repeat(np.arange(n_rows, dtype=np.int64), lens)
    item = np.concatenate([np.asarray(s, np.int64) for s in seqs[:n_rows]])
    ts = []
    for r in range(n_rows):
        t = times[r] if r < len(times) else None
        ts.append(
            np.asarray(t, np.int64) if t is not None and len(t) == lens[r] else np.zeros(lens[r], np.int64)
        )
    t = np.concatenate(ts)
    order = np.lexsort((item, t, row))
    row, item, t = row[order], item[order], t[order]
    new_basket = np.ones(len(row), bool)
    new_basket[1:] = (row[1:] != row[:-1]) | (t[1:] != t[:-1])
    basket = np.cumsum(new_basket) - 1
    dup = np.zeros(len(row), bool)
    dup[1:] = (basket[1:] == basket[:-1]) & (item[1:] == item[:-1])
    row, item, basket, t = row[~dup], item[~dup], basket[~dup], t[~dup]
    first = np.full(n_rows, -1, np.int64)
    last = np.full(n_rows, -1, np.int64)
    first[row[::-1]] = basket[::-1]
    last[row] = basket
    n_baskets = np.where(first >= 0, last - first + 1, 0)
    rank = last[row] - basket
    return BasketEvents(row, item, rank, n_baskets, n_rows, t)


def tifu_weights(ev: BasketEvents, group_size: int, within_decay: float, group_decay: float) -> np.ndarray:
    """Each (basket, item) event's TIFU weight w(j) (module docstring), float64."""
    m = group_size
    nb = ev.n_baskets[ev.row]
    g = ev.rank // m
    p = ev.rank % m
    n_groups = -(-nb // m)
    size = np.minimum(m, nb - g * m)
    return group_decay ** g.astype(np.float64) * within_decay ** p.astype(np.float64) / size / n_groups


def tifu_vectors(
    ev: BasketEvents, n_items: int, group_size: int, within_decay: float, group_decay: float
) -> sp.csr_matrix:
    """(n_rows, n_items) CSR float32: each row's TIFU vector (module docstring)."""
    w = tifu_weights(ev, group_size, within_decay, group_decay)
    V = sp.csr_matrix((w, (ev.row, ev.item)), shape=(ev.n_rows, n_items), dtype=np.float64)
    V.sum_duplicates()
    return sp.csr_matrix(V, dtype=np.float32)


def history_events(history: History) -> BasketEvents:
    """The baskets of a History's rows: from its sequences and times, or (no sequences) the
    history matrix's items as one basket per row."""
    n = history.user_items.shape[0]
    if history.sequences:
        return basket_events(history.sequences, history.sequence_ts, n)
    X = sp.csr_matrix(history.user_items)
    coo = X.tocoo()
    return BasketEvents(
        coo.row.astype(np.int64),
        coo.col.astype(np.int64),
        np.zeros(coo.nnz, np.int64),
        (np.diff(X.indptr) > 0).astype(np.int64),
        n,
    )


def history_vectors(history: History, n_items: int, config: TIFUConfig) -> sp.csr_matrix:
    ev = history_events(history)
    return tifu_vectors(ev, n_items, config.group_size, config.within_decay, config.group_decay)


DENSE_QUERIES = 32  # nearest_rows takes up to this many query rows as dense columns
# nearest_one reads the pool by column where the query's items hold less than this share of its
# entries (a big catalogue: a few thousand of ~700,000), else scipy's product over every row, which
# costs less per entry read.
BY_COLUMN = 0.25
# nearest_rows holds at most this many distances at once (128 MB of float64): a big shop's customers
# are searched in blocks of query rows, each block's neighbours exactly what one pass would find.
MAX_DISTANCES = 1 << 24


def pool_members(has_history: np.ndarray, pool_size: int, seed: int = 0) -> np.ndarray | None:
    """The training customers whose vectors form the neighbour pool: None (every row, as they are)
    when `pool_size` is 0 or at least the number of customers, else a seeded random sample of
    `pool_size` customers among those with a history, sorted. The pool bounds a served request's
    cost (a distance to every pool customer) and a fit's: a big shop's neighbours come from a sample
    of its customers."""
    n = len(has_history)
    if pool_size <= 0 or pool_size >= n:
        return None
    live = np.flatnonzero(has_history)
    if len(live) <= pool_size:
        return live.astype(np.int64)
    return np.sort(np.random.default_rng(seed).choice(live, pool_size, replace=False)).astype(np.int64)


def pool_rows(users: np.ndarray, members: np.ndarray | None) -> np.ndarray:
    """Each customer's row in the neighbour pool (`pool_members`), -1 where they are not in it (an
    unknown customer, or one left out of a sampled pool)."""
    users = np.asarray(users, np.int64)
    if members is None:
        return users
    if not len(members):
        return np.full(len(users), -1, np.int64)
    pos = np.clip(np.searchsorted(members, users), 0, len(members) - 1)
    return np.where(members[pos] == users, pos, -1).astype(np.int64)


def pool_norm2(P: sp.csr_matrix) -> np.ndarray:
    """Each pool row's squared norm (float32 sums, as float64), the distances' constant part."""
    return np.asarray(P.multiply(P).sum(axis=1)).ravel().astype(np.float64)


def forget_in_pool(P: sp.csr_matrix, members: np.ndarray | None, users: np.ndarray) -> sp.csr_matrix:
    """The pool with the rows of forgotten customers `users` emptied (those not in it change nothing)."""
    keep = np.ones(P.shape[0], np.float32)
    rows = pool_rows(users, members)
    keep[rows[(rows >= 0) & (rows < len(keep))]] = 0.0
    out = sp.csr_matrix(sp.diags(keep) @ P, dtype=np.float32)
    out.eliminate_zeros()
    return out


def _nearest_block(
    Q: sp.csr_matrix, q2: np.ndarray, P: sp.csr_matrix, p_norm2: np.ndarray, k: int, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(row, pool row) of each query row's k nearest non-empty pool rows other than `exclude`, ties
    by lower index (a stable sort of the distances); every query row non-empty."""
    n, n_pool = Q.shape[0], P.shape[0]
    # P @ Q.T, not Q @ P.T: the latter transposes the whole pool into CSR on every call (1.4 ms of a
    # served request on the demo shop); each dot product adds the same terms in the same order. For
    # a few queries (a served request) against dense query columns: the same sums, plus zeros.
    QT = Q.T.toarray() if n <= DENSE_QUERIES else Q.T
    dots = P @ QT
    dots = dots if isinstance(dots, np.ndarray) else dots.toarray()
    d = q2[:, None] + p_norm2[None, :] - 2.0 * np.asarray(dots.T, np.float64)
    d[:, p_norm2 <= 0] = np.inf
    ok = (exclude >= 0) & (exclude < n_pool)
    d[np.flatnonzero(ok), exclude[ok]] = np.inf
    near = np.isfinite(d)
    if k < n_pool:
        # the k-th distance by partition, then a sort of the rows at or below it only
        near &= d <= np.partition(d, k - 1, axis=1)[:, k - 1 : k]
    r, c = np.nonzero(near)
    dist = d[r, c]
    order = np.lexsort((c, dist, r))  # by query row, distance, then the lower pool row
    r, c = r[order], c[order]
    within = np.arange(len(r)) - np.searchsorted(r, r)  # place in its query row's order
    keep = within < k
    return r[keep], c[keep]


def nearest_rows(
    Q: sp.csr_matrix, P: sp.csr_matrix, p_norm2: np.ndarray, k: int, exclude: np.ndarray
) -> sp.csr_matrix:
    """(len(Q), len(P)) CSR with 1/k at each query row's k nearest pool rows (Euclidean), a pool row
    equal to `exclude[r]` (the customer themself) and empty pool rows left out, none for an empty
    query row; ties by lower index. Query rows in blocks of at most MAX_DISTANCES distances."""
    n, n_pool = Q.shape[0], P.shape[0]
    k = min(k, n_pool)
    if k <= 0 or n == 0:
        return sp.csr_matrix((n, n_pool), dtype=np.float32)
    Q = sp.csr_matrix(Q)
    q2 = np.asarray(Q.multiply(Q).sum(axis=1)).ravel()
    live = np.flatnonzero(q2 > 0)  # an empty history says nothing about who is near: no neighbours
    exclude = np.asarray(exclude, np.int64)
    block = max(DENSE_QUERIES, MAX_DISTANCES // max(n_pool, 1))
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for s in range(0, len(live), block):
        q = live[s : s + block]
        r, c = _nearest_block(Q[q] if len(q) < n else Q, q2[q], P, p_norm2, k, exclude[q])
        rows.append(q[r])
        cols.append(c)
    row, col = np.concatenate(rows), np.concatenate(cols)
    counts = np.bincount(row, minlength=n).astype(np.float64)
    vals = 1.0 / np.maximum(counts[row], 1.0)
    return sp.csr_matrix((vals.astype(np.float32), (row, col)), shape=(n, n_pool))


def pool_columns(P: sp.csr_matrix) -> sp.csc_matrix | None:
    """The pool by item (CSC) for `nearest_one`, or None where the pool's rows are not stored in item
    order (then only the row-wise product gives its sums' order)."""
    P = sp.csr_matrix(P)
    if not P.has_sorted_indices:
        return None
    return sp.csc_matrix(P)  # each column's rows ascending


def _dots_by_column(q_items: np.ndarray, q: np.ndarray, cols: sp.csc_matrix) -> np.ndarray:
    """P @ q for a sparse query through the pool's columns: only the entries of the query's items are
    read (a few thousand of a big pool's millions). Each pool row's products are added in ascending
    item order into a float32 zero, as scipy's CSR product over item-sorted rows adds them (the
    other items' terms are zeros there), so every dot product has the same bits."""
    starts, ends = cols.indptr[q_items], cols.indptr[q_items + 1]
    lens = ends - starts
    pos = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
    out = np.zeros(cols.shape[0], np.float32)
    np.add.at(out, cols.indices[pos], cols.data[pos] * np.repeat(q, lens))
    return out


def nearest_one(
    q_items: np.ndarray,
    q_values: np.ndarray,
    P: sp.csr_matrix,
    p_norm2: np.ndarray,
    k: int,
    exclude: int,
    cols: sp.csc_matrix | None = None,
) -> tuple[np.ndarray, np.float32]:
    """`nearest_rows` for one query row (a served request) without building sparse matrices: the
    query's items and float32 values (sorted by item, as a CSR row stores them) -> its nearest pool
    rows in ascending order (the order `nearest_rows`' CSR row stores them) and their weight 1/k as
    float32. The same arithmetic: the query's squared norm is summed in float32 in item order (as
    scipy's row sum), each dot product is scipy's sparse-times-dense product. `cols`, the pool by
    item (`pool_columns`), reads only the query's items' entries for the same dot products."""
    n_pool = P.shape[0]
    k = min(k, n_pool)
    empty = (np.zeros(0, np.int64), np.float32(0.0))
    if k <= 0:
        return empty
    q = np.asarray(q_values, np.float32)
    q2 = np.cumsum(q * q, dtype=np.float32)[-1] if len(q) else np.float32(0.0)
    if q2 <= 0:
        return empty  # an empty history says nothing about who is near: no neighbours
    q_items = np.asarray(q_items, np.int64)
    if cols is not None and (cols.indptr[q_items + 1] - cols.indptr[q_items]).sum() < BY_COLUMN * cols.nnz:
        dots = _dots_by_column(q_items, q, cols)
    else:
        dense = np.zeros(P.shape[1], np.float32)
        dense[q_items] = q
        dots = P @ dense
    d = np.float64(q2) + p_norm2 - 2.0 * np.asarray(dots, np.float64)
    d[p_norm2 <= 0] = np.inf
    if 0 <= exclude < n_pool:
        d[exclude] = np.inf
    k = min(k, int(np.isfinite(d).sum()))
    if k == 0:
        return empty
    if k < n_pool:
        kth = np.partition(d, k - 1)[k - 1]
        near = np.flatnonzero(d <= kth)
        idx = near[np.argsort(d[near], kind="stable")[:k]]
    else:
        idx = np.argsort(d, kind="stable")[:k]
    idx = np.sort(idx[np.isfinite(d[idx])])
    return idx.astype(np.int64), np.float32(1.0 / max(len(idx), 1))


def _sum_neighbours(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    near: np.ndarray,
    weight: np.float32,
    acc: np.ndarray,
    seen: np.ndarray,
    touched: np.ndarray,
) -> int:
    """acc[item] += weight x value (float32) over the pool rows `near` in order, each row's entries in
    stored order: scipy's CSR product's additions, one by one. The items touched go to `touched` in
    first-touch order; returns how many."""
    n = 0
    for r in near:
        for j in range(indptr[r], indptr[r + 1]):
            i = indices[j]
            acc[i] += weight * data[j]
            if not seen[i]:
                seen[i] = True
                touched[n] = i
                n += 1
    return n


_sum_neighbours_compiled = compiled(_sum_neighbours)


def compile_neighbour_sum(pool: sp.csr_matrix) -> None:
    """Compile a request's neighbour sum for this pool's array types now (a loaded model), not in
    the first request (from numba's disk cache: a fraction of a second)."""
    if _sum_neighbours_compiled is not None:
        none = np.zeros(0, np.int64)
        _sum_neighbours_compiled(
            pool.indptr,
            pool.indices,
            pool.data,
            none,
            np.float32(1),
            np.zeros(1, np.float32),
            np.zeros(1, np.bool_),
            none,
        )


def neighbour_sum(
    near: np.ndarray, weight: np.float32, pool: sp.csr_matrix, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """`W @ pool` for one customer whose nearest pool rows are `near` (ascending, each weighing
    `weight`; `nearest_one`), as scipy's CSR product computes it: for each neighbour in that order,
    weight x pool value in float32, added to each item's float32 sum in that order. Returns the dense
    (n_items,) float32 sums and the items touched (no repeats), without passing over the catalogue."""
    acc = np.zeros(n_items, np.float32)
    touched = np.zeros(0, np.int64)
    if len(near) and _sum_neighbours_compiled is not None:
        seen = np.zeros(n_items, np.bool_)
        touched = np.empty(int((pool.indptr[near + 1] - pool.indptr[near]).sum()), np.int64)
        n = _sum_neighbours_compiled(
            pool.indptr,
            pool.indices,
            pool.data,
            near.astype(np.int64),
            np.float32(weight),
            acc,
            seen,
            touched,
        )
        touched = touched[:n]
    elif len(near):
        starts, ends = pool.indptr[near], pool.indptr[near + 1]
        lens = ends - starts
        # the pool's stored entries of the neighbours' rows, row after row (pool[near] without a copy
        # of the matrix)
        pos = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
        items = pool.indices[pos]
        np.add.at(acc, items, weight * pool.data[pos].astype(np.float32))
        touched = np.sort(items)
        touched = touched[np.r_[True, touched[1:] != touched[:-1]]]
    return acc, touched


class TIFUKNN(Recommender):
    name = "tifu"
    Config = TIFUConfig
    # Tie-break in promotion: a sparse vector per customer and a distance to every training customer.
    cost = 7
    search_space = (
        Param("group_size", "int", 1, 20),
        Param("within_decay", "float", 0.1, 1.0),
        Param("group_decay", "float", 0.1, 1.0),
        Param("neighbours", "int", 10, 1000, log=True),
        Param("alpha", "float", 0.0, 1.0),
    )
    config: TIFUConfig

    def _fit(self, data: TrainData, *, callback: Any = None) -> None:
        hist = History.of(data, np.arange(data.n_users))
        V = history_vectors(hist, data.n_items, self.config)
        self.pool_users_ = pool_members(np.diff(V.indptr) > 0, self.config.pool_size)
        self.pool_ = V if self.pool_users_ is None else sp.csr_matrix(V[self.pool_users_])
        self.pool_norm2_ = pool_norm2(self.pool_)
        self.pool_cols_ = pool_columns(self.pool_)
        pop = np.bincount(sp.csr_matrix(data.user_items).indices, minlength=data.n_items).astype(np.float64)
        # Popularity only orders the items nothing else scores (far below any real weight).
        self.tiebreak_ = (1e-9 * pop / max(pop.max(), 1.0)).astype(np.float32)

    def personal_and_neighbours(
        self, users: np.ndarray, history: History
    ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """The customers' own TIFU vectors and their neighbours' mean vectors, both (n, n_items)."""
        own = history_vectors(history, self.n_items, self.config)
        exclude = pool_rows(users, getattr(self, "pool_users_", None))
        W = nearest_rows(own, self.pool_, self.pool_norm2_, self.config.neighbours, exclude)
        return own, sp.csr_matrix(W @ self.pool_)

    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        a = self.config.alpha
        if history.user_items.shape[0] == 1:
            return self._score_one(users, history)[None, :]
        own, nbr = self.personal_and_neighbours(users, history)
        s = (a * own + (1.0 - a) * nbr).toarray().astype(np.float32)
        return s + self.tiebreak_[None, :]

    def _score_one(self, users: np.ndarray, history: History) -> np.ndarray:
        """`score` for one customer (a served request) with the batch path's bits, without a pass
        over every pool entry or sparse products: the neighbour search reads the pool's columns of the
        customer's items (`pool_columns`) and the neighbours' sum touches only their entries."""
        a = np.float32(self.config.alpha)
        own = history_vectors(history, self.n_items, self.config)  # canonical one-row float32 CSR
        items, values = own.indices[own.indptr[0] : own.indptr[1]], own.data[own.indptr[0] : own.indptr[1]]
        exclude = int(pool_rows(users, getattr(self, "pool_users_", None))[0])
        cols = getattr(self, "pool_cols_", None)
        near, weight = nearest_one(
            items, values, self.pool_, self.pool_norm2_, self.config.neighbours, exclude, cols
        )
        # float32 as the sparse blend: a x own + (1 - a) x neighbours, each entry's sum of the two
        s, _ = neighbour_sum(near, weight, self.pool_, self.n_items)
        s *= np.float32(1.0 - self.config.alpha)
        s[items] += a * values
        return s + self.tiebreak_

    def _forget_rows(self, users: np.ndarray) -> None:
        """A forgotten customer leaves the neighbour pool: their vector is emptied."""
        self.pool_ = forget_in_pool(self.pool_, getattr(self, "pool_users_", None), users)
        self.pool_norm2_ = pool_norm2(self.pool_)
        self.pool_cols_ = pool_columns(self.pool_)

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "tifu_pool.npz", self.pool_)
        np.save(path / "tiebreak.npy", self.tiebreak_)
        if self.pool_users_ is not None:
            np.save(path / "pool_users.npy", self.pool_users_)

    def _load_state(self, path: Path) -> None:
        self.pool_ = sp.load_npz(path / "tifu_pool.npz").tocsr()
        self.pool_norm2_ = pool_norm2(self.pool_)
        self.pool_cols_ = pool_columns(self.pool_)
        compile_neighbour_sum(self.pool_)
        self.tiebreak_ = np.load(path / "tiebreak.npy")
        members = path / "pool_users.npy"  # absent: every training customer (and older bundles)
        self.pool_users_ = np.load(members) if members.exists() else None
