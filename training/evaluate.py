"""Honest offline evaluation: full ranking over the whole catalogue, no sampled negatives.

For every customer with held-out interactions the model ranks all items, told the time the
recommendation is asked for (`History.now`: the held-out basket's time, as a request knows its
own); items the customer may not be shown (`exclude_seen`: learned re-buy policy, always, never)
are removed first; metrics are averaged over customers, overall and per segment. When evaluating
`test`, the validation interactions are part of the customer's history (they happened before the
test ones), never of the training data. Metric functions are pure and take a (n_users, K) hit matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from training.base import History, Recommender, TrainData
from training.data import Split
from training.policy import RebuyPolicy

EXCLUDE_MODES = ("learned", "always", "never")
# A customer with fewer distinct training items than this counts as "new" (cold start) in the
# per-segment metrics; everyone else is "returning".
NEW_USER_MAX_ITEMS = 5
# Customers whose exclusions are built at once in `evaluate` (a multiple of its batch size).
EXCLUSION_SLICE = 32_768
# `evaluate` scores at most this many held-out customers: a seeded sample of them, the same sample for
# every model on a split, so their figures stay comparable (`shoprec promote`). A metric averaged over
# 100,000 customers moves by ~0.001-0.002 from sample to sample; scoring all 700k test customers of
# the 1M-customer shop took next-basket ~1.8 hours. Every shop below it is evaluated whole.
EVAL_CUSTOMERS = 100_000
EVAL_SEED = 0


def evaluated_users(users: np.ndarray, max_users: int | None = EVAL_CUSTOMERS) -> np.ndarray:
    """The held-out customers (sorted, distinct) that are evaluated: all of them, or above `max_users`
    a seeded sample of that many (sorted), the same for every model on the same split."""
    if max_users is None or len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(EVAL_SEED).choice(users, size=max_users, replace=False))


# -- pure metric functions: hits (n, K) bool, n_targets (n,) int -> (n,) float per user --------------
def recall_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """Share of a user's held-out items found in the top k."""
    return hits[:, :k].sum(axis=1) / np.maximum(n_targets, 1)


def hit_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 when at least one held-out item is in the top k."""
    return hits[:, :k].any(axis=1).astype(np.float64)


def ndcg_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """DCG of the top k (binary relevance, log2 discount) over the ideal DCG for min(|T|, k) hits."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * disc[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(n_targets, k)]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def map_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """Average precision at k: Σ over hit ranks r of precision@r, divided by min(|T|, k)."""
    h = hits[:, :k].astype(np.float64)
    prec = np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1)
    denom = np.minimum(n_targets, k)
    return np.divide((prec * h).sum(axis=1), denom, out=np.zeros(len(h)), where=denom > 0)


def coverage_at_k(ids: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one user's top k."""
    top = ids[:, :k]
    return float(len(np.unique(top[top >= 0])) / max(n_items, 1))


def novelty_at_k(ids: np.ndarray, item_popularity: np.ndarray, k: int) -> float:
    """Mean self-information -log2 p(i) of recommended items, p(i) = share of training users who
    interacted with i (unseen items count as 1 user): higher = less obvious recommendations."""
    top = ids[:, :k]
    top = top[top >= 0]
    if top.size == 0:
        return 0.0
    return float(np.mean(-np.log2(item_popularity[top])))


def _item_popularity(user_items: sp.csr_matrix) -> np.ndarray:
    n_users = max(user_items.shape[0], 1)
    counts = np.bincount(user_items.tocsr().indices, minlength=user_items.shape[1]).astype(np.float64)
    return np.maximum(counts, 1.0) / n_users


def hit_matrix(ids: np.ndarray, targets: sp.csr_matrix) -> np.ndarray:
    """(n, K) bool: ids[i, r] is one of row i's targets (ids -1 = padding, never a hit)."""
    n, k = ids.shape
    rows = np.repeat(np.arange(n), k)
    cols = np.clip(ids.ravel(), 0, None)
    hit = np.asarray(targets[rows, cols]).ravel() > 0
    return (hit & (ids.ravel() >= 0)).reshape(n, k)


def _history_for(split: Split, users: np.ndarray, on: str) -> tuple[History, pd.DataFrame]:
    """History rows for `users`; for `test`, validation interactions join the history."""
    tr = split.train
    X = tr.user_items[users]
    seqs = [tr.sequences[u] for u in users] if tr.sequences else []
    times = [tr.sequence_ts[u] for u in users] if tr.sequence_ts else []
    extra = pd.DataFrame(columns=["user_idx", "item_idx", "ts"])
    if on == "test" and not split.valid.empty:
        extra = split.valid[split.valid["user_idx"].isin(users)]
        row_of = pd.Series(np.arange(len(users)), index=users)
        r = row_of[extra["user_idx"].to_numpy()].to_numpy()
        V = sp.csr_matrix(
            (np.ones(len(extra), np.float32), (r, extra["item_idx"].to_numpy(np.int64))), shape=X.shape
        )
        X = sp.csr_matrix(X.maximum(V))  # seen in valid -> in the history (value kept if larger)
        if seqs:
            seqs, times = list(seqs), list(times)
            ordered = extra.sort_values("ts", kind="stable")
            for u, g in ordered.groupby("user_idx", sort=False):
                row = int(row_of[u])
                seqs[row] = np.concatenate([seqs[row], g["item_idx"].to_numpy(np.int64)])
                if times:
                    times[row] = np.concatenate([times[row], g["ts"].to_numpy(np.int64)])
    return History(X, seqs, times), extra


def exclusion_matrix(
    split: Split,
    users: np.ndarray,
    history: History,
    extra: pd.DataFrame,
    now: np.ndarray,
    mode: str,
    policy: RebuyPolicy | None = None,
) -> sp.csr_matrix | None:
    """The items each row may not be shown: none, everything in its history, or the learned policy
    (`policy`, default: learned from the split's training part)."""
    if mode == "never":
        return None
    if mode == "always":
        M = sp.csr_matrix(history.user_items, copy=True)
        M.data[:] = 1.0
        return M
    if policy is None:
        policy = RebuyPolicy.from_frame(split.train.category_rebuy, customer_rebuy=split.train.customer_rebuy)
    lp = split.train.last_purchases
    if not extra.empty:
        items = split.train.items
        add = extra.rename(columns={"ts": "last_ts"}).assign(n_purchases=1)
        cat = items.set_index("item_idx")["category"] if "category" in items.columns else None
        add["category"] = add["item_idx"].map(cat) if cat is not None else pd.NA
        lp = pd.concat(
            [lp, add[["user_idx", "item_idx", "category", "last_ts", "n_purchases"]]], ignore_index=True
        )
        lp = lp.sort_values("last_ts").drop_duplicates(["user_idx", "item_idx"], keep="last")
    items = split.train.items
    cats = items["category"].to_numpy(object) if "category" in items.columns else None
    return policy.exclusions(users, lp, now, split.train.n_items, item_categories=cats)


def evaluate(
    model: Recommender,
    split: Split,
    *,
    on: str = "test",
    ks: tuple[int, ...] = (5, 10, 20),
    exclude_seen: str = "learned",
    batch_size: int = 2048,
    policy: RebuyPolicy | None = None,
    per_user_out: dict[str, np.ndarray] | None = None,
    max_users: int | None = EVAL_CUSTOMERS,
) -> dict[str, float]:
    """Full-ranking metrics of `model` on the split's `on` part ("test" or "valid"); `policy` is the
    re-buy policy of exclude_seen="learned" (default: learned from the split's training part).
    `per_user_out`, when given, receives the evaluated `users` and each accuracy metric per user (for
    paired bootstrap intervals between two models on the same customers).

    Returns recall@K, ndcg@K, map@K, hit@K, coverage@K, novelty@K for every K in ks, the same
    accuracy metrics per segment (`ndcg@10/new`, `ndcg@10/returning`, and `ndcg@10/segment_<name>`
    for the customers' profile segments when known), and n_users / n_users/<segment>.

    With more than `max_users` held-out customers (None: no limit), a seeded sample of that many is
    evaluated (the same for every model) and `n_users_heldout` says how many there were.
    """
    if on not in ("test", "valid"):
        raise ValueError(f"on must be 'test' or 'valid', got {on!r}")
    if exclude_seen not in EXCLUDE_MODES:
        raise ValueError(f"exclude_seen must be one of {EXCLUDE_MODES}, got {exclude_seen!r}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive, got {ks!r}")
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be >= 1 or None, got {max_users!r}")
    tr = split.train
    targets = split.test if on == "test" else split.valid
    if targets.empty:
        raise ValueError(f"split has no {on} interactions to evaluate on")
    bad = (targets["user_idx"] >= tr.n_users) | (targets["item_idx"] >= tr.n_items)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} {on} rows index users/items outside the training matrix")
    users = np.sort(targets["user_idx"].unique()).astype(np.int64)
    n_heldout = len(users)
    users = evaluated_users(users, max_users)
    if len(users) < n_heldout:
        targets = targets[targets["user_idx"].isin(users)]
    row_of = pd.Series(np.arange(len(users)), index=users)
    r = row_of[targets["user_idx"].to_numpy()].to_numpy()
    T = sp.csr_matrix(
        (np.ones(len(targets), np.float32), (r, targets["item_idx"].to_numpy(np.int64))),
        shape=(len(users), tr.n_items),
    )
    T.sum_duplicates()
    T.data[:] = 1.0
    n_targets = np.diff(T.indptr)
    now = targets.groupby("user_idx")["ts"].min().reindex(users).to_numpy(np.float64)

    history, extra = _history_for(split, users, on)
    if exclude_seen == "learned" and policy is None:
        policy = RebuyPolicy.from_frame(split.train.category_rebuy, customer_rebuy=split.train.customer_rebuy)
    kmax = max(ks)
    ids = np.full((len(users), kmax), -1, dtype=np.int64)
    # The exclusions are built one slice of customers at a time: a durable bought recently excludes
    # its whole category, and for a million customers that is billions of (customer, item) pairs at
    # once (ALS evaluation on the 1M-customer shop was killed at 22 GB). Each customer's answer
    # depends on their own row only, so the result is the same.
    step = max(batch_size, EXCLUSION_SLICE // batch_size * batch_size)
    bar = tqdm(  # shown on a terminal only: a million customers take minutes
        total=len(users), desc=f"evaluating on {on}", unit="customer", disable=None, leave=False
    )
    for start in range(0, len(users), step):
        rows = slice(start, start + step)
        # "Now" is the time the recommendation is asked for: the held-out basket's time (its first
        # event), as a served request knows its own time. Only the time; never the basket's contents.
        part = History(
            history.user_items[rows], history.sequences[rows], history.sequence_ts[rows], now[rows]
        )
        part_extra = extra[extra["user_idx"].isin(users[rows])] if not extra.empty else extra
        exclude = exclusion_matrix(split, users[rows], part, part_extra, now[rows], exclude_seen, policy)
        ids[rows], _ = model.recommend(users[rows], part, kmax, exclude=exclude, batch_size=batch_size)
        bar.update(len(users[rows]))
    bar.close()
    hits = hit_matrix(ids, T)

    pop = _item_popularity(tr.user_items)
    per_user = {}
    for k in ks:
        per_user[f"recall@{k}"] = recall_at_k(hits, n_targets, k)
        per_user[f"ndcg@{k}"] = ndcg_at_k(hits, n_targets, k)
        per_user[f"map@{k}"] = map_at_k(hits, n_targets, k)
        per_user[f"hit@{k}"] = hit_at_k(hits, k)
    if per_user_out is not None:
        per_user_out.update(per_user, users=users)
    out: dict[str, float] = {name: float(v.mean()) for name, v in per_user.items()}
    for k in ks:
        out[f"coverage@{k}"] = coverage_at_k(ids, tr.n_items, k)
        out[f"novelty@{k}"] = novelty_at_k(ids, pop, k)
    out["n_users"] = float(len(users))
    if len(users) < n_heldout:
        out["n_users_heldout"] = float(n_heldout)

    n_train_items = np.diff(tr.user_items.indptr)[users]
    segments: dict[str, np.ndarray] = {
        "new": n_train_items < NEW_USER_MAX_ITEMS,
        "returning": n_train_items >= NEW_USER_MAX_ITEMS,
    }
    if "segment" in tr.users.columns:
        seg = tr.users.set_index("user_idx")["segment"].reindex(users).astype("string")
        for name in sorted(seg.dropna().unique()):
            segments[f"segment_{name}"] = (seg == name).to_numpy(dtype=bool)
    for seg_name, mask in segments.items():
        out[f"n_users/{seg_name}"] = float(mask.sum())
        if mask.any():
            for name, v in per_user.items():
                out[f"{name}/{seg_name}"] = float(v[mask].mean())
    return out


def heldout_baskets(frame: pd.DataFrame, min_size: int = 2) -> list[tuple[int, np.ndarray]]:
    """(user_idx, distinct items) per held-out basket = the rows of one user at one timestamp."""
    out = []
    for (u, _), g in frame.groupby(["user_idx", "ts"], sort=True):
        items = np.unique(g["item_idx"].to_numpy(np.int64))
        if len(items) >= min_size:
            out.append((int(u), items))
    return out


def evaluate_baskets(
    model: Recommender,
    split: Split,
    *,
    on: str = "test",
    ks: Sequence[int] = (5, 10, 20),
    seed: int = 0,
    max_baskets: int | None = 20_000,
    batch_size: int = 2048,
) -> dict[str, float]:
    """Complements: hide one random item of each held-out basket (≥ 2 items) and ask the model for
    it from the other items alone (scored as an unknown customer, so only the basket counts);
    the basket's other items are excluded. basket_hit@K = share of baskets whose hidden item is in
    the top K; basket_ndcg@K its rank-discounted version."""
    frame = split.test if on == "test" else split.valid
    rng = np.random.default_rng(seed)
    baskets = heldout_baskets(frame)
    if not baskets:
        raise ValueError(f"no held-out {on} basket has 2 or more items")
    if max_baskets is not None and len(baskets) > max_baskets:
        pick = rng.choice(len(baskets), size=max_baskets, replace=False)
        baskets = [baskets[i] for i in np.sort(pick)]
    n = len(baskets)
    hidden = np.empty(n, np.int64)
    rows, cols, seqs = [], [], []
    for i, (_, items) in enumerate(baskets):
        h = int(rng.integers(len(items)))
        hidden[i] = items[h]
        rest = np.delete(items, h)
        rows.extend([i] * len(rest))
        cols.extend(rest.tolist())
        seqs.append(rest)
    Q = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, split.train.n_items))
    kmax = max(ks)
    ids, _ = model.recommend(np.full(n, -1), History(Q, seqs), kmax, exclude=Q, batch_size=batch_size)
    T = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), hidden)), shape=Q.shape)
    hits = hit_matrix(ids, T)
    ones = np.ones(n, np.int64)
    out = {"n_baskets": float(n)}
    for k in ks:
        out[f"basket_hit@{k}"] = float(hit_at_k(hits, k).mean())
        out[f"basket_ndcg@{k}"] = float(ndcg_at_k(hits, ones, k).mean())
    return out


def score_latency(
    model: Recommender, data: TrainData, *, requests: int = 200, warmup: int = 10, seed: int = 0
) -> dict[str, float]:
    """How long the model takes to score one customer, as a served request asks it (one row, the
    customer's history, the whole catalogue): `score_ms` the median and `score_ms_p99` the 99th
    percentile of `requests` calls for customers drawn from those with a history, after `warmup`
    calls that are not timed (caches, a compiled loop). Wall time on this machine, so noisy on a
    shared one; `shoprec promote` compares the median with its budget."""
    import time

    has_history = np.flatnonzero(np.diff(sp.csr_matrix(data.user_items).indptr) > 0)
    if not len(has_history) or requests <= 0:
        return {}
    rng = np.random.default_rng(seed)
    users = rng.choice(has_history, size=warmup + requests, replace=True)
    took = np.empty(requests)
    for i, u in enumerate(users):
        one = np.array([u], dtype=np.int64)
        start = time.perf_counter()
        model.score(one, History.of(data, one))
        if i >= warmup:
            took[i - warmup] = time.perf_counter() - start
    return {"score_ms": float(np.median(took) * 1e3), "score_ms_p99": float(np.percentile(took, 99) * 1e3)}
