"""`next-basket`: a learned ranker over re-buy and explore candidates for the customer's next basket.

Candidates per customer: every item of their history (re-buys) plus the `explore` items their nearest
customers buy most that they never bought (TIFU-KNN's neighbours, training/models/tifu.py). Each
(customer, candidate) gets features a grocer would name:

- the customer and the item: how many of their baskets hold it, its share of them, time-decayed shares
  at three decay rates, baskets since it was last bought, the mean gap in baskets between purchases
  and how overdue it is against that gap, its TIFU weight and its weight among the nearest customers
  (each also relative to the customer's strongest candidate);
- the item: how many customers buy it, the share of its buyers who buy it again (repeat propensity),
  its mean share of a buyer's baskets;
- the customer: baskets so far, mean basket size, the share of their purchases that are re-buys;
- as of now (`History.now`, the time the basket is asked for: the request's time in serving, the
  held-out basket's time in evaluation, each target basket's own time in training; never its
  contents): the days since the customer's newest basket (also relative to their mean gap), the
  days since the item was last bought and how overdue it is against its mean gap.

A gradient-boosted classifier (scikit-learn's HistGradientBoostingClassifier) learns P(in the next
basket) inside `fit`, from the training data alone: each customer's last `train_targets` baskets are
targets, each predicted from the baskets before it. Non-candidates score below every candidate, in
popularity order. Baskets are a customer's events at one time (`History.sequence_ts`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from training.base import History, ModelConfig, Recommender, TrainData
from training.models.bought_together import row_topk_sparse
from training.models.forest import ForestWalk, compiled
from training.models.tifu import (
    BasketEvents,
    compile_neighbour_sum,
    forget_in_pool,
    history_events,
    nearest_one,
    nearest_rows,
    neighbour_sum,
    pool_columns,
    pool_members,
    pool_norm2,
    pool_rows,
    tifu_weights,
)
from training.space import Param

DECAYS = (0.5, 0.8, 0.95)  # per-basket decay of the three decayed-share features
FEATURES = (
    "n_baskets_with",
    "share",
    *(f"decayed_share_{d}" for d in DECAYS),
    "baskets_since",
    "mean_gap",
    "overdue",
    "tifu",
    "tifu_rel",
    "neighbours",
    "neighbours_rel",
    "item_buyers",
    "item_repeat_rate",
    "item_mean_share",
    "user_baskets",
    "user_basket_size",
    "user_repeat_share",
    "days_since",
    "gap_days",
    "overdue_days",
    "user_gap_days",
    "streak",
    "next_rate",
    "recent_share",
    "now_days",
    "now_days_rel",
    "now_days_since",
    "now_overdue",
)
RECENT = 5  # baskets counted by `recent_share`
# A fit builds the candidates of at most this many customers at once (a big shop's in blocks: the
# neighbours' vectors of a block are held in memory together).
FIT_BLOCK = 8_192
DAY_S = 86_400.0


@dataclass(frozen=True)
class NextBasketConfig(ModelConfig):
    # TIFU vectors for the `tifu` and `neighbours` features (training/models/tifu.py).
    group_size: int = 6
    within_decay: float = 0.9
    group_decay: float = 0.5
    neighbours: int = 100
    # The neighbour pool: at most this many training customers (a seeded random sample; 0 = all).
    # A request computes a distance to each, so it bounds the serving cost on a big shop (tifu.py).
    pool_size: int = 20_000
    explore: int = 30  # candidates per customer from the neighbours, among items never bought
    # Each customer's last N training baskets are the ranker's targets (8 was best of 3, 8 and 12 on
    # the Instacart sample's validation baskets, benchmarks/bench_nbr.py).
    train_targets: int = 8
    # The ranker learns from the target baskets of at most this many customers (a seeded random
    # sample of those with 2+ baskets; 0 = all): a big shop's fit stays within memory and minutes,
    # and the ranker still learns its ~30 features from millions of candidate rows (docs/nbr.md).
    train_customers: int = 20_000
    # Share of the non-bought candidates the ranker learns from (a uniform sample shifts every
    # score's odds by one factor, so the ranking keeps; it cuts the fit time by about as much).
    negatives: float = 0.3
    iterations: int = 300  # boosting rounds (early stopping on 10% of the rows may stop sooner)
    learning_rate: float = 0.05
    leaves: int = 31
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_targets < 1:
            raise ValueError(f"next-basket train_targets must be >= 1, got {self.train_targets}")
        if not 0.0 < self.negatives <= 1.0:
            raise ValueError(f"next-basket negatives must lie in (0, 1], got {self.negatives}")
        if self.explore < 0:
            raise ValueError(f"next-basket explore must be >= 0, got {self.explore}")
        for name in ("pool_size", "train_customers"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"next-basket {name} must be >= 0 (0 = every customer), got {getattr(self, name)}"
                )


def _gather_unsorted(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    n_cols: int,
    row: np.ndarray,
    col: np.ndarray,
    order: np.ndarray,
) -> np.ndarray:
    """M[row, col] of a CSR whose rows are not sorted, pairs visited in `order` (grouped by row):
    each row's entries scattered into one dense scratch row, the pairs read from it, the row reset."""
    out = np.zeros(len(row), np.float64)
    scratch = np.zeros(n_cols, np.float64)
    i = 0
    while i < len(order):
        r = row[order[i]]
        for j in range(indptr[r], indptr[r + 1]):
            scratch[indices[j]] += data[j]
        while i < len(order) and row[order[i]] == r:
            out[order[i]] = scratch[col[order[i]]]
            i += 1
        for j in range(indptr[r], indptr[r + 1]):
            scratch[indices[j]] = 0.0
    return out


_gather_compiled = compiled(_gather_unsorted)
GATHER_COMPILED_FROM = 100_000  # stored entries: below this, sorting the matrix costs next to nothing


def _explore_topk(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    own_indptr: np.ndarray,
    own_indices: np.ndarray,
    n_cols: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each row's k largest non-zero entries of a CSR (the neighbours' vectors) whose
    column the row of `own` (the customers' own vectors) does not hold, ties by lower column, in row
    then column order: `row_topk_sparse(nbr - nbr.multiply(pattern), k, by_index=True).tocoo()`
    without the two matrix copies and the per-entry row array (~3 GB a block on a big shop)."""
    n_rows = len(indptr) - 1
    out_row = np.empty(n_rows * k, np.int64)
    out_col = np.empty(n_rows * k, np.int64)
    bought = np.zeros(n_cols, np.bool_)
    vals = np.empty(n_cols, data.dtype)
    cols = np.empty(n_cols, np.int64)
    n_out = 0
    for r in range(n_rows):
        for j in range(own_indptr[r], own_indptr[r + 1]):
            bought[own_indices[j]] = True
        n = 0
        for j in range(indptr[r], indptr[r + 1]):
            c = indices[j]
            if data[j] != 0 and not bought[c]:
                vals[n] = data[j]
                cols[n] = c
                n += 1
        for j in range(own_indptr[r], own_indptr[r + 1]):
            bought[own_indices[j]] = False
        if n == 0 or k <= 0:
            continue
        v, cs = vals[:n], cols[:n]
        if n <= k:
            take = cs.copy()
        else:  # the k-th largest by a partition; every entry above it, then the lowest-indexed ties
            t = np.partition(v, n - k)[n - k]
            above = cs[v > t]
            tied = cs[v == t]
            room = k - len(above)
            if len(tied) > room:
                tied = np.sort(tied)[:room]
            take = np.concatenate((above, tied))
        take = np.sort(take)
        m = len(take)
        out_row[n_out : n_out + m] = r
        out_col[n_out : n_out + m] = take
        n_out += m
    return out_row[:n_out], out_col[:n_out]


_explore_compiled = compiled(_explore_topk)


def _lookup(M: sp.csr_matrix, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """M[row, col] for many pairs at once (0 where nothing is stored).

    A big matrix with unsorted rows and no duplicate entries (the neighbours' vectors, a sparse
    product's result) is read row by row through a dense scratch row, compiled, instead of sorting
    every row first (the sort was ~12% of a big shop's fit); the values are the same."""
    M = sp.csr_matrix(M)
    if _gather_compiled is not None and not M.has_sorted_indices and M.nnz >= GATHER_COMPILED_FROM:
        row = row.astype(np.int64, copy=False)
        order = np.argsort(row, kind="stable")
        # the matrix's own arrays, no copies (a big shop's block holds ~10^8 entries)
        return _gather_compiled(M.indptr, M.indices, M.data, int(M.shape[1]), row, col, order)
    M.sum_duplicates()
    n_cols = M.shape[1]
    keys = np.repeat(np.arange(M.shape[0], dtype=np.int64), np.diff(M.indptr)) * n_cols + M.indices
    want = row.astype(np.int64) * n_cols + col
    pos = np.clip(np.searchsorted(keys, want), 0, max(len(keys) - 1, 0))
    if len(keys) == 0:
        return np.zeros(len(want), np.float64)
    return np.where(keys[pos] == want, M.data[pos], 0.0).astype(np.float64)


def _row_max(row: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    out = np.zeros(n_rows, np.float64)
    np.maximum.at(out, row, values)
    return out


def _sequence_features(
    k: np.ndarray, rank: np.ndarray, start: np.ndarray, cnt: np.ndarray, last: np.ndarray, nb: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per re-buy candidate (pairs sorted by key, each key's ranks descending): how many of the newest
    baskets in a row hold it, the share of its purchases followed by another in the very next
    basket, and its share of the newest RECENT baskets."""
    if not len(start):
        e = np.empty(0)
        return e, e, e
    group = np.repeat(np.arange(len(start)), cnt.astype(np.int64))
    end = start + cnt.astype(np.int64)
    from_end = end[group] - 1 - np.arange(len(k))
    streak = np.bincount(group, weights=(rank == from_end).astype(np.float64), minlength=len(start))
    follows = np.zeros(len(k))
    same = np.r_[k[1:] == k[:-1], False]
    follows[:-1] = same[:-1] & (rank[:-1] - rank[1:] == 1)
    followed = np.bincount(group, weights=follows, minlength=len(start))
    with np.errstate(invalid="ignore", divide="ignore"):
        next_rate = followed / (cnt - (last == 0))
        recent = np.bincount(group, weights=(rank < RECENT).astype(np.float64), minlength=len(start))
        recent_share = recent / np.minimum(nb, RECENT)
    return streak, next_rate, recent_share


def _time_features(
    ev: BasketEvents,
    order: np.ndarray,
    start: np.ndarray,
    row: np.ndarray,
    cnt: np.ndarray,
    n: int,
    now: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per re-buy candidate: days from its last purchase to the customer's newest basket, its mean
    gap in days between purchases, how overdue it will be at a next basket one typical customer gap
    later; per customer their mean gap in days between baskets. Then "as of now" (`now`: epoch s per
    row, the time the basket is asked for): per customer the days from their newest basket to now,
    per candidate the days from its last purchase to now. Where `now` is unknown (NaN) it is
    estimated as one typical customer gap after the newest basket, as `overdue_days` assumes. NaN
    without basket times. Returns days_since, gap_days, overdue_days, user_gap, now_days (per
    customer), now_days_since (per candidate)."""
    nan_c, nan_u = np.full(len(start), np.nan), np.full(n, np.nan)
    if ev.ts is None or not len(start):
        return nan_c, nan_c, nan_c, nan_u, nan_u, nan_c
    t = ev.ts[order].astype(np.float64)
    r = ev.row[order]
    u_last = np.full(n, -np.inf)
    u_first = np.full(n, np.inf)
    np.maximum.at(u_last, r, t)
    np.minimum.at(u_first, r, t)
    with np.errstate(invalid="ignore", divide="ignore"):
        user_gap = (u_last - u_first) / (ev.n_baskets - 1) / DAY_S
        user_gap[~np.isfinite(user_gap)] = np.nan
        item_last = np.maximum.reduceat(t, start)
        item_first = np.minimum.reduceat(t, start)
        days_since = (u_last[row] - item_last) / DAY_S
        gap_days = np.where(cnt > 1, (item_last - item_first) / (cnt - 1) / DAY_S, np.nan)
        overdue_days = (days_since + user_gap[row]) / gap_days
        now_days = np.full(n, np.nan) if now is None else (np.asarray(now, np.float64) - u_last) / DAY_S
        now_days[~np.isfinite(now_days)] = np.nan
        # a request stamped before the newest event (clock skew) is asked at that event
        now_days = np.where(np.isnan(now_days), user_gap, np.maximum(now_days, 0.0))
        now_days_since = days_since + now_days[row]
    return days_since, gap_days, overdue_days, user_gap, now_days, now_days_since


@dataclass
class OneRow:
    """One customer's neighbour vector (a served request): the same numbers as the sparse product
    `W @ pool` and the same explore candidates as `row_topk_sparse`, without building sparse
    matrices for one row and without passing over the whole catalogue (on a 100,000-item shop such
    passes were most of a request)."""

    acc: np.ndarray  # (n_items,) float32, the neighbours' mean vector
    fresh: np.ndarray  # the items it weighs (not zero) that the customer never bought, any order
    own_items: np.ndarray  # ascending items of the customer's own TIFU vector
    own_values: np.ndarray  # their float64 weights

    def nbr(self, items: np.ndarray) -> np.ndarray:
        return self.acc[items].astype(np.float64)

    def own(self, items: np.ndarray) -> np.ndarray:
        """The customer's own TIFU weight of each of `items` (all of them in the vector)."""
        return self.own_values[np.searchsorted(self.own_items, items)]

    def explore(self, k: int) -> np.ndarray:
        """The k items the neighbours weigh most that the customer never bought, ties by lower index,
        in index order (as `row_topk_sparse(..., by_index=True).tocoo()` gives them)."""
        if k <= 0:
            return np.zeros(0, np.int64)
        idx = self.fresh
        vals = self.acc[idx]
        if len(idx) > k:  # the k-th weight by partition, then those at or above it in order
            up = vals >= -np.partition(-vals, k - 1)[k - 1]
            idx, vals = idx[up], vals[up]
        top = idx[np.lexsort((idx, -vals))[:k]]  # by weight, ties by lower index (a stable sort's)
        return np.sort(top).astype(np.int64)


def _one_row_neighbours(
    near: np.ndarray, weight: np.float32, pool: sp.csr_matrix, own: sp.csr_matrix, n_items: int
) -> OneRow:
    """One customer's neighbour vector (`neighbour_sum`) with their own TIFU vector `own` (a canonical
    one-row CSR) beside it."""
    acc, touched = neighbour_sum(near, weight, pool, n_items)
    lo, hi = own.indptr[0], own.indptr[1]  # `own` is canonical: items ascending, no duplicates
    own_items = own.indices[lo:hi]
    bought = np.zeros(n_items, np.bool_)
    bought[own_items] = True
    # a product that rounds to zero is no weight
    fresh = touched[(acc[touched] != 0) & ~bought[touched]]
    return OneRow(acc, fresh, own_items, own.data[lo:hi].astype(np.float64))


@dataclass
class Candidates:
    row: np.ndarray
    item: np.ndarray
    X: np.ndarray  # (len(row), len(FEATURES)) float32, NaN where a feature does not apply


def item_statistics(ev: BasketEvents, n_items: int) -> np.ndarray:
    """(n_items, 3): buyers, repeat rate (share of buyers with 2+ baskets holding it), mean share of a
    buyer's baskets."""
    key = ev.row * n_items + ev.item
    uniq, cnt = np.unique(key, return_counts=True)
    item = uniq % n_items
    share = cnt / np.maximum(ev.n_baskets[uniq // n_items], 1)
    buyers = np.bincount(item, minlength=n_items).astype(np.float64)
    repeat = np.bincount(item, weights=(cnt >= 2).astype(np.float64), minlength=n_items)
    mean_share = np.bincount(item, weights=share, minlength=n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.column_stack([buyers, repeat / buyers, mean_share / buyers])


def candidates(
    ev: BasketEvents,
    n_items: int,
    config: NextBasketConfig,
    pool: sp.csr_matrix,
    pool_norm2: np.ndarray,
    self_rows: np.ndarray,
    items: np.ndarray,
    now: np.ndarray | None = None,
    pool_cols: sp.csc_matrix | None = None,
) -> Candidates:
    """Every row's re-buy and explore candidates with their FEATURES (module docstring). `pool_cols`,
    the pool by item (`pool_columns`), makes one customer's neighbour search read only their items'
    entries of the pool."""
    c = config
    n = ev.n_rows
    w = tifu_weights(ev, c.group_size, c.within_decay, c.group_decay)
    if n == 1:  # one row: its CSR straight from the events in their order, as the COO route lays it
        own = sp.csr_matrix((w.astype(np.float64), ev.item, np.array([0, len(w)])), shape=(1, n_items))
    else:
        own = sp.csr_matrix((w, (ev.row, ev.item)), shape=(n, n_items), dtype=np.float64)
    own.sum_duplicates()
    if n == 1:  # a served request: one customer's arrays, no sparse matrices built for them
        q = own.data[own.indptr[0] : own.indptr[1]].astype(np.float32)
        near, weight = nearest_one(
            own.indices, q, pool, pool_norm2, c.neighbours, int(self_rows[0]), pool_cols
        )
        one, nbr = _one_row_neighbours(near, weight, pool, own, n_items), None
    else:
        W = nearest_rows(sp.csr_matrix(own, dtype=np.float32), pool, pool_norm2, c.neighbours, self_rows)
        # float32 as the product gives it (read as float64, exactly): a big shop's block holds ~10^8
        one, nbr = None, sp.csr_matrix(W @ pool)

    # re-buy candidates: one row per distinct (customer, item) of the history
    key = ev.row * n_items + ev.item
    order = np.argsort(key, kind="stable")
    k, rank = key[order], ev.rank[order].astype(np.float64)
    start = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.empty(0, np.int64)
    row, item = k[start] // n_items, k[start] % n_items
    nb = ev.n_baskets[row].astype(np.float64)
    cnt = np.diff(np.r_[start, len(k)]).astype(np.float64)
    last = np.minimum.reduceat(rank, start) if len(k) else rank
    first = np.maximum.reduceat(rank, start) if len(k) else rank
    decayed = []
    for d in DECAYS:
        total = (1.0 - d**nb) / (1.0 - d)  # sum of d ** rank over all the customer's baskets
        decayed.append(np.add.reduceat(d**rank, start) / total if len(k) else rank)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(cnt > 1, (first - last) / (cnt - 1), np.nan)
        overdue = (last + 1) / gap
    days_since, gap_days, overdue_days, user_gap_days, now_days, now_days_since = _time_features(
        ev, order, start, row, cnt, n, now
    )
    streak, next_rate, recent_share = _sequence_features(k, rank, start, cnt, last, nb)

    # explore candidates: the neighbours' strongest items the customer never bought
    if one is None and c.explore > 0 and _explore_compiled is not None and nbr.nnz >= GATHER_COMPILED_FROM:
        fresh_row, fresh_col = _explore_compiled(
            nbr.indptr, nbr.indices, nbr.data, own.indptr, own.indices, n_items, c.explore
        )
    elif one is None:
        pattern = own.copy()
        pattern.data[:] = 1.0
        fresh = nbr - nbr.multiply(pattern)
        fresh.eliminate_zeros()
        # ties by lower item index, as a served request's `OneRow.explore` breaks them
        fresh = (
            row_topk_sparse(fresh, c.explore, by_index=True).tocoo()
            if c.explore > 0
            else sp.coo_matrix((n, n_items))
        )
        fresh_row, fresh_col = fresh.row, fresh.col
    else:
        fresh_col = one.explore(c.explore)
        fresh_row = np.zeros(len(fresh_col), np.int64)
    m = len(fresh_col)
    row = np.r_[row, fresh_row].astype(np.int64)
    item = np.r_[item, fresh_col].astype(np.int64)
    rebuy = item[: len(start)]
    tifu = np.r_[_lookup(own, row[: len(start)], rebuy) if one is None else one.own(rebuy), np.zeros(m)]
    nscore = _lookup(nbr, row, item) if one is None else one.nbr(item)
    with np.errstate(invalid="ignore", divide="ignore"):
        tifu_rel = tifu / _row_max(row, tifu, n)[row]
        nbr_rel = nscore / _row_max(row, nscore, n)[row]
    user_nb = ev.n_baskets.astype(np.float64)
    user_events = np.bincount(ev.row, minlength=n).astype(np.float64)
    user_distinct = np.bincount(k[start] // n_items if len(k) else np.empty(0, np.int64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        user_size = user_events / user_nb
        user_repeat = (user_events - user_distinct) / user_events
        now_rel = now_days / user_gap_days
        now_overdue = now_days_since / gap_days
    # re-buy candidates' rows first, then the explore candidates', which have no purchases of the
    # item: 0 for its counts and shares, NaN for what needs a purchase (a gap, a last time)
    of_purchases: dict[str, tuple[np.ndarray, float]] = {
        "n_baskets_with": (cnt, 0.0),
        "share": (cnt / nb, 0.0),
        **{f"decayed_share_{d}": (v, 0.0) for d, v in zip(DECAYS, decayed, strict=True)},
        "baskets_since": (last, np.nan),
        "mean_gap": (gap, np.nan),
        "overdue": (overdue, np.nan),
        "days_since": (days_since, np.nan),
        "gap_days": (gap_days, np.nan),
        "overdue_days": (overdue_days, np.nan),
        "streak": (streak, 0.0),
        "next_rate": (next_rate, np.nan),
        "recent_share": (recent_share, 0.0),
        "now_days_since": (now_days_since, np.nan),
        "now_overdue": (now_overdue, np.nan),
    }
    every_row = {
        "tifu": tifu,
        "tifu_rel": tifu_rel,
        "neighbours": nscore,
        "neighbours_rel": nbr_rel,
        "item_buyers": items[item, 0],
        "item_repeat_rate": items[item, 1],
        "item_mean_share": items[item, 2],
        "user_baskets": user_nb[row],
        "user_basket_size": user_size[row],
        "user_repeat_share": user_repeat[row],
        "user_gap_days": user_gap_days[row],
        "now_days": now_days[row],
        "now_days_rel": now_rel[row],
    }
    n_rebuy = len(start)
    X = np.empty((len(row), len(FEATURES)), np.float32)  # float64 values rounded to float32
    for j, name in enumerate(FEATURES):
        if name in every_row:
            X[:, j] = every_row[name]
        else:
            X[:n_rebuy, j], X[n_rebuy:, j] = of_purchases[name]
    return Candidates(row, item, X)


class NextBasket(Recommender):
    name = "next-basket"
    Config = NextBasketConfig
    # Tie-break in promotion: TIFU vectors, a neighbour search and a boosted-tree pass per customer.
    cost = 9
    search_space = (
        Param("group_size", "int", 1, 20),
        Param("within_decay", "float", 0.3, 1.0),
        Param("group_decay", "float", 0.1, 1.0),
        Param("neighbours", "int", 10, 1000, log=True),
        Param("explore", "int", 0, 100),
        Param("train_targets", "int", 1, 5),
        Param("learning_rate", "float", 0.01, 0.3, log=True),
        Param("leaves", "int", 7, 127, log=True),
    )
    config: NextBasketConfig

    def _pool(
        self, ev: BasketEvents, n_items: int, members: np.ndarray | None
    ) -> tuple[sp.csr_matrix, np.ndarray]:
        """The neighbour pool: the TIFU vectors of the customers in `members` (None: every row).

        Built from the members' own events: the matrix of every customer's vector, sliced to the
        members, has the same rows (each row's events in the same order, summed alike), but on a
        million-customer shop it and its weights cost gigabytes for 20,000 rows."""
        c = self.config
        n_rows = ev.n_rows
        if members is not None:
            at = np.full(ev.n_rows, -1, np.int64)
            at[members] = np.arange(len(members))
            ev = ev.select(at[ev.row] >= 0)
            n_rows = len(members)
        w = tifu_weights(ev, c.group_size, c.within_decay, c.group_decay)
        row = ev.row if members is None else at[ev.row]
        P = sp.csr_matrix((w, (row, ev.item)), shape=(n_rows, n_items), dtype=np.float64)
        P.sum_duplicates()
        P = sp.csr_matrix(P, dtype=np.float32)
        return P, pool_norm2(P)

    def _fit(self, data: TrainData, *, callback: Any = None) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        c = self.config
        n_items = data.n_items
        ev = history_events(History.of(data, np.arange(data.n_users)))
        self.pool_users_ = pool_members(ev.n_baskets > 0, c.pool_size, c.seed)
        self_rows = pool_rows(np.arange(data.n_users), self.pool_users_)
        learners = pool_members(ev.n_baskets > 1, c.train_customers, c.seed + 1)
        learns = np.ones(data.n_users, bool)
        if learners is not None:
            learns[:] = False
            learns[learners] = True
        rng = np.random.default_rng(c.seed)
        parts_X, parts_y, parts_w = [], [], []
        # shown on a terminal only: a big shop's candidates take minutes a target basket
        bar = tqdm(total=c.train_targets, desc="next-basket: target baskets", disable=None, leave=False)
        for t in range(c.train_targets):
            before = ev.rank > t
            hist = ev.select(before, shift=t + 1)
            at = (ev.rank == t) & (ev.n_baskets[ev.row] > t + 1) & learns[ev.row]
            if not at.any():
                break
            pool, norm2 = self._pool(hist, n_items, self.pool_users_)
            # "now" of each target basket: its own time (only the time, never its contents)
            now = np.full(data.n_users, np.nan)
            if ev.ts is not None:
                now[ev.row[at]] = ev.ts[at]
            stats = item_statistics(hist, n_items)
            size = np.bincount(ev.row[at], minlength=data.n_users).astype(np.float64)
            targets = np.unique(ev.row[at])
            # a small shop's customers in one block, as they are; a big shop's targets a block at a time
            whole = ev.n_rows <= FIT_BLOCK and learners is None
            blocks = [None] if whole else np.array_split(targets, -(-len(targets) // FIT_BLOCK))
            learning = hist if whole else hist.select(np.isin(hist.row, targets))
            for block in blocks:
                part = hist if block is None else learning.select(np.isin(learning.row, block))
                cand = candidates(part, n_items, c, pool, norm2, self_rows, stats, now)
                in_block = at if block is None else at & np.isin(ev.row, block)
                target = np.unique(ev.row[in_block] * n_items + ev.item[in_block])
                has_target = np.isin(cand.row, targets)
                y = np.isin(cand.row * n_items + cand.item, target)
                keep = has_target & (y | (rng.random(len(y)) < c.negatives))
                parts_X.append(cand.X[keep])
                parts_y.append(y[keep])
                parts_w.append(1.0 / np.maximum(size[cand.row[keep]], 1.0))
            bar.update()
        bar.close()
        self.pool_, self.pool_norm2_ = self._pool(ev, n_items, self.pool_users_)
        self.pool_cols_ = pool_columns(self.pool_)
        self.item_stats_ = item_statistics(ev, n_items)
        pop = self.item_stats_[:, 0]
        self.tiebreak_ = (1e-6 * pop / max(pop.max(), 1.0) - 1.0).astype(np.float32)
        self.ranker_ = None
        y = np.concatenate(parts_y) if parts_y else np.empty(0, bool)
        if y.sum() == 0 or y.all():
            self.fit_warnings.append(
                "next-basket: no customer with 2+ baskets; ranking by the TIFU-KNN blend"
            )
            return
        self.ranker_ = HistGradientBoostingClassifier(
            max_iter=c.iterations,
            learning_rate=c.learning_rate,
            max_leaf_nodes=c.leaves,
            early_stopping=len(y) >= 10_000,
            random_state=c.seed,
        ).fit(np.concatenate(parts_X), y, sample_weight=np.concatenate(parts_w))
        self.walk_ = ForestWalk(self.ranker_)

    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        n = history.user_items.shape[0]
        ev = history_events(history)
        cand = candidates(
            ev,
            self.n_items,
            self.config,
            self.pool_,
            self.pool_norm2_,
            pool_rows(users, getattr(self, "pool_users_", None)),
            self.item_stats_,
            history.now,
            getattr(self, "pool_cols_", None),
        )
        out = np.tile(self.tiebreak_, (n, 1))
        if len(cand.row):
            if self.ranker_ is not None:
                # a ranker saved before the newer features (appended last) reads the columns it knew
                if getattr(self, "walk_", None) is None or self.walk_.model is not self.ranker_:
                    self.walk_ = ForestWalk(self.ranker_)
                p = self.walk_(cand.X)
            else:
                # no ranker learned (nobody had two baskets): TIFU-KNN's own blend
                f = cand.X
                p = 0.7 * f[:, FEATURES.index("tifu")] + 0.3 * f[:, FEATURES.index("neighbours")]
            out[cand.row, cand.item] = p.astype(np.float32)
        return out

    def _forget_rows(self, users: np.ndarray) -> None:
        """A forgotten customer leaves the neighbour pool: their vector is emptied."""
        self.pool_ = forget_in_pool(self.pool_, getattr(self, "pool_users_", None), users)
        self.pool_norm2_ = pool_norm2(self.pool_)
        self.pool_cols_ = pool_columns(self.pool_)

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "pool.npz", self.pool_)
        np.save(path / "item_stats.npy", self.item_stats_)
        np.save(path / "tiebreak.npy", self.tiebreak_)
        if self.pool_users_ is not None:
            np.save(path / "pool_users.npy", self.pool_users_)
        with open(path / "ranker.pkl", "wb") as f:
            pickle.dump(self.ranker_, f)

    def _load_state(self, path: Path) -> None:
        self.pool_ = sp.load_npz(path / "pool.npz").tocsr()
        self.pool_norm2_ = pool_norm2(self.pool_)
        self.pool_cols_ = pool_columns(self.pool_)
        compile_neighbour_sum(self.pool_)
        self.item_stats_ = np.load(path / "item_stats.npy")
        self.tiebreak_ = np.load(path / "tiebreak.npy")
        members = path / "pool_users.npy"  # absent: every training customer (and older bundles)
        self.pool_users_ = np.load(members) if members.exists() else None
        with open(path / "ranker.pkl", "rb") as f:
            self.ranker_ = pickle.load(f)  # noqa: S301 - our own bundle, written by _save_state
        self.walk_ = ForestWalk(self.ranker_) if self.ranker_ is not None else None
