"""Next-basket models (training/models/tifu.py, next_basket.py) on tiny data with answers worked out
by hand: baskets from event times, TIFU vectors, the neighbour blend, and a learned ranker that must
find a rhythm TIFU's decay cannot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from training.base import History, TrainData
from training.models import get_model_class
from training.models.tifu import (
    TIFUKNN,
    TIFUConfig,
    basket_events,
    history_events,
    history_vectors,
    nearest_one,
    nearest_rows,
    pool_columns,
    pool_members,
    pool_rows,
)


def frames(n_users: int, n_items: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = pd.DataFrame({"user_idx": np.arange(n_users), "user_id": [f"u{i}" for i in range(n_users)]})
    items = pd.DataFrame({"item_idx": np.arange(n_items), "item_id": [f"i{i}" for i in range(n_items)]})
    return users, items


def data_of(baskets_per_user: list[list[list[int]]], n_items: int) -> TrainData:
    """Each user's baskets, oldest first; basket b of a user happens at time 100 * b."""
    seqs, times, rows, cols = [], [], [], []
    for u, baskets in enumerate(baskets_per_user):
        s = [i for b in baskets for i in b]
        t = [100 * k for k, b in enumerate(baskets) for _ in b]
        seqs.append(np.asarray(s, np.int64))
        times.append(np.asarray(t, np.int64))
        rows += [u] * len(s)
        cols += s
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(seqs), n_items))
    users, items = frames(len(seqs), n_items)
    return TrainData(X, users, items, sequences=seqs, sequence_ts=times)


def random_shop(seed: int, n_customers: int, n_items: int, max_size: int) -> TrainData:
    """Customers with 0-8 baskets of 1 to max_size - 1 distinct random items each."""
    rng = np.random.default_rng(seed)
    baskets = [
        [list(rng.choice(n_items, size=int(rng.integers(1, max_size)), replace=False)) for _ in range(int(n))]
        for n in rng.integers(0, 9, n_customers)
    ]
    return data_of(baskets, n_items)


def test_baskets_are_events_at_one_time_newest_first_and_deduplicated():
    ev = basket_events(
        [np.array([4, 1, 1, 2, 3]), np.array([5, 6])],
        [np.array([10, 20, 20, 20, 30]), np.array([])],  # user 1 has no times: one basket
        3,
    )
    got = sorted(zip(ev.row.tolist(), ev.item.tolist(), ev.rank.tolist(), strict=True))
    assert got == [(0, 1, 1), (0, 2, 1), (0, 3, 0), (0, 4, 2), (1, 5, 0), (1, 6, 0)]
    assert ev.n_baskets.tolist() == [3, 1, 0]


def test_tifu_vectors_by_hand():
    """Customer 0, oldest first: {0, 1}, {1}, {2}; m = 2, r_b = 0.5, r_g = 0.25. Newest first the
    baskets are j = 0 {2}, j = 1 {1} (group 0, two baskets) and j = 2 {0, 1} (group 1, one basket),
    two groups:  w(0) = 1 / 2 / 2 = 0.25,  w(1) = 0.5 / 2 / 2 = 0.125,  w(2) = 0.25 / 1 / 2 = 0.125.
    So item 0 = 0.125, item 1 = 0.125 + 0.125 = 0.25, item 2 = 0.25. Customer 1, one basket {3}: 1."""
    data = data_of([[[0, 1], [1], [2]], [[3]]], 4)
    cfg = TIFUConfig(group_size=2, within_decay=0.5, group_decay=0.25)
    V = history_vectors(History.of(data, np.arange(2)), 4, cfg).toarray()
    np.testing.assert_allclose(V, [[0.125, 0.25, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0]], atol=1e-7)


def test_tifu_blends_own_vector_with_the_nearest_customers():
    """Three customers with one basket each: a {0}, b {0, 1}, c {2}. b's nearest other customer is
    a (distance 1) not c (distance sqrt 3); with k = 1 and alpha = 0.25 b scores
    0.25 * [1, 1, 0] + 0.75 * [1, 0, 0] = [1, 0.25, 0]."""
    data = data_of([[[0]], [[0, 1]], [[2]]], 3)
    model = TIFUKNN(TIFUConfig(neighbours=1, alpha=0.25)).fit(data)
    s = model.score(np.array([1]), History.of(data, np.array([1])))[0]
    np.testing.assert_allclose(s, [1.0, 0.25, 0.0], atol=1e-6)
    # an unknown customer with b's history has b among the pool and finds b itself first
    s = model.score(np.array([-1]), History.of(data, np.array([1])))[0]
    np.testing.assert_allclose(s, [1.0, 1.0, 0.0], atol=1e-6)


def test_nearest_rows_leaves_out_self_empty_pool_rows_and_empty_queries():
    P = sp.csr_matrix(np.array([[1, 0], [0, 0], [1, 1], [0, 1]], np.float32))
    norm2 = np.asarray(P.multiply(P).sum(axis=1)).ravel()
    Q = sp.csr_matrix(np.array([[1, 0], [0, 0]], np.float32))
    W = nearest_rows(Q, P, norm2, 2, np.array([0, -1])).toarray()
    # query 0 is pool row 0 (left out); row 1 is empty; rows 2 (distance 1) and 3 (sqrt 2) remain
    np.testing.assert_allclose(W[0], [0, 0, 0.5, 0.5])
    assert not W[1].any()


def test_nearest_rows_request_path_picks_the_same_neighbours_as_the_batch_path(monkeypatch):
    """A served request (a few query rows) takes dense query columns and a partition before the
    sort; the neighbours and their weights must be exactly the batch path's, ties by lower index."""
    import training.models.tifu as tifu

    rng = np.random.default_rng(5)
    # small integer weights: many equal distances, so tie-breaking is exercised
    P = sp.csr_matrix(rng.integers(0, 3, (200, 40)) * (rng.random((200, 40)) < 0.2), dtype=np.float32)
    P[17] = 0  # an empty pool row is never a neighbour
    P.eliminate_zeros()
    norm2 = np.asarray(P.multiply(P).sum(axis=1)).ravel().astype(np.float64)
    Q = sp.csr_matrix(P[:5].toarray() + (rng.random((5, 40)) < 0.05), dtype=np.float32)
    exclude = np.array([0, 1, -1, 3, 250])
    for k in (1, 7, 50, 199, 500):
        fast = nearest_rows(Q, P, norm2, k, exclude)
        monkeypatch.setattr(tifu, "DENSE_QUERIES", 0)
        slow = nearest_rows(Q, P, norm2, k, exclude)
        monkeypatch.undo()
        assert (fast != slow).nnz == 0, k
        np.testing.assert_array_equal(fast.indices, slow.indices)
        assert not fast[:, 17].nnz and not fast[0, 0] and not fast[3, 3]
        # one query row without sparse matrices (nearest_one): the same rows, order and weight bits,
        # with the dot products over every pool row and through the pool's columns (a big catalogue)
        for r in range(len(Q.indptr) - 1):
            cols = Q.indices[Q.indptr[r] : Q.indptr[r + 1]]
            values = Q.data[Q.indptr[r] : Q.indptr[r + 1]]
            monkeypatch.setattr(tifu, "BY_COLUMN", 2.0)  # whatever the share of entries read
            by_column = nearest_one(cols, values, P, norm2, k, exclude[r], pool_columns(P))
            monkeypatch.undo()
            for near, weight in (nearest_one(cols, values, P, norm2, k, exclude[r]), by_column):
                np.testing.assert_array_equal(near, slow.indices[slow.indptr[r] : slow.indptr[r + 1]])
                assert (slow.data[slow.indptr[r] : slow.indptr[r + 1]] == weight).all()
    empty = nearest_one(np.zeros(0, np.int64), np.zeros(0, np.float32), P, norm2, 5, -1)
    assert len(empty[0]) == 0  # an empty history has no neighbours


def brute_force_neighbours(Q: np.ndarray, P: np.ndarray, k: int, exclude: np.ndarray) -> list[list[int]]:
    """Each query row's k nearest non-empty pool rows, itself and nothing for an empty row left out,
    by a full stable sort of float64 distances: the definition, written out."""
    out = []
    for r, q in enumerate(Q):
        if not q.any():
            out.append([])
            continue
        d = ((P.astype(np.float64) - q.astype(np.float64)) ** 2).sum(axis=1)
        d[~P.any(axis=1)] = np.inf
        if 0 <= exclude[r] < len(P):
            d[exclude[r]] = np.inf
        order = np.argsort(d, kind="stable")[:k]
        out.append(sorted(int(i) for i in order if np.isfinite(d[i])))
    return out


def test_a_big_shop_s_neighbours_are_searched_in_blocks_with_the_same_answer(monkeypatch):
    """A fit over a big shop's customers holds at most MAX_DISTANCES distances at once: the query
    rows in blocks (here 32 rows against 60 pool rows, four blocks of a 110-row query), with the
    neighbours of the definition and weights 1 / (neighbours found)."""
    import training.models.tifu as tifu

    rng = np.random.default_rng(3)
    P = (rng.integers(0, 3, (60, 12)) * (rng.random((60, 12)) < 0.3)).astype(np.float32)  # many ties
    P[[4, 9]] = 0
    Q = (rng.integers(0, 3, (110, 12)) * (rng.random((110, 12)) < 0.3)).astype(np.float32)
    Q[[0, 50, 51]] = 0  # empty histories: no neighbours
    Q[60:70] = P[:10]  # some queries are pool customers themselves, left out below
    exclude = np.full(110, -1)
    exclude[60:70] = np.arange(10)
    norm2 = (P.astype(np.float64) ** 2).sum(axis=1)
    Ps, Qs = sp.csr_matrix(P), sp.csr_matrix(Q)
    for k in (1, 5, 58, 100):
        whole = nearest_rows(Qs, Ps, norm2, k, exclude)
        monkeypatch.setattr(tifu, "MAX_DISTANCES", 32 * 60)
        blocks = nearest_rows(Qs, Ps, norm2, k, exclude)
        monkeypatch.undo()
        assert (whole != blocks).nnz == 0 and whole.nnz > 0
        want = brute_force_neighbours(Q, P, k, exclude)
        for r in range(110):
            got = blocks.indices[blocks.indptr[r] : blocks.indptr[r + 1]]
            assert sorted(got.tolist()) == want[r], (k, r)
            assert (
                blocks.data[blocks.indptr[r] : blocks.indptr[r + 1]] == np.float32(1 / max(len(got), 1))
            ).all()


def test_the_neighbour_pool_is_a_seeded_sample_of_customers_with_a_history():
    has = np.zeros(1000, bool)
    has[::3] = True  # 334 customers with a history
    assert pool_members(has, 0) is None and pool_members(has, 1000) is None  # every row, as it is
    sample = pool_members(has, 100, seed=7)
    assert len(sample) == 100 and has[sample].all() and (np.diff(sample) > 0).all()
    np.testing.assert_array_equal(sample, pool_members(has, 100, seed=7))
    assert not np.array_equal(sample, pool_members(has, 100, seed=8))
    np.testing.assert_array_equal(pool_members(has, 500), np.flatnonzero(has))  # fewer than asked: all
    rows = pool_rows(np.array([sample[0], sample[99], 1, -1, 5000]), sample)
    assert rows.tolist() == [0, 99, -1, -1, -1]
    assert pool_rows(np.array([3, -1]), None).tolist() == [3, -1]


def test_a_sampled_pool_gives_neighbours_from_the_pool_only_and_survives_save_and_forget(tmp_path):
    """TIFU-KNN with pool_size 8 of 30 customers: every customer's neighbour part is the mean of its
    nearest pool customers by the definition (a pool customer never its own neighbour); the pool's
    customers survive a save and load; a forgotten pool customer leaves the pool."""
    rng = np.random.default_rng(11)
    baskets = [[list(rng.choice(10, size=int(rng.integers(1, 4)), replace=False))] for _ in range(30)]
    data = data_of(baskets, 10)
    cfg = TIFUConfig(neighbours=3, alpha=0.0, pool_size=8)
    model = TIFUKNN(cfg).fit(data)
    members = model.pool_users_
    assert len(members) == 8 and model.pool_.shape[0] == 8
    users = np.arange(30)
    V = history_vectors(History.of(data, users), 10, cfg).toarray()
    exclude = pool_rows(users, members)
    want = brute_force_neighbours(V, V[members], 3, exclude)
    s = model.score(users, History.of(data, users)) - model.tiebreak_
    for u in users:
        np.testing.assert_allclose(s[u], V[members][want[u]].mean(axis=0), atol=1e-6)
        assert u not in members[want[u]]

    model.save(tmp_path / "m")
    loaded = TIFUKNN.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.pool_users_, members)
    np.testing.assert_array_equal(
        loaded.score(users, History.of(data, users)), model.score(users, History.of(data, users))
    )

    gone = int(members[0])
    loaded.forget_users([f"u{gone}"])
    assert loaded.pool_[0].nnz == 0 and loaded.pool_[1:].nnz == model.pool_[1:].nnz


def test_next_basket_s_sampled_pool_is_the_whole_pool_s_member_rows_to_the_bit():
    """The pool is built from its members' events only; it must be the matrix of every customer's
    TIFU vector sliced to the members: the same rows, entries and float32 bits."""
    from training.models.tifu import tifu_weights

    rng = np.random.default_rng(12)
    baskets = [
        [list(rng.choice(30, size=int(rng.integers(1, 6)), replace=True)) for _ in range(int(n))]
        for n in rng.integers(0, 7, 60)
    ]  # repeats within a basket and customers without baskets included
    data = data_of(baskets, 30)
    nb = get_model_class("next-basket")
    model = nb(nb.Config(group_size=3, within_decay=0.7, group_decay=0.6))
    ev = history_events(History.of(data, np.arange(data.n_users)))
    members = pool_members(ev.n_baskets > 0, 17, seed=3)
    P, norm2 = model._pool(ev, 30, members)
    w = tifu_weights(ev, 3, 0.7, 0.6)
    full = sp.csr_matrix((w, (ev.row, ev.item)), shape=(ev.n_rows, 30), dtype=np.float64)
    full.sum_duplicates()
    want = sp.csr_matrix(full[members], dtype=np.float32)
    assert P.shape == want.shape == (17, 30)
    np.testing.assert_array_equal(P.indptr, want.indptr)
    np.testing.assert_array_equal(P.indices, want.indices)
    np.testing.assert_array_equal(P.data, want.data)
    np.testing.assert_array_equal(norm2, np.asarray(want.multiply(want).sum(axis=1)).ravel())
    everyone, _ = model._pool(ev, 30, None)
    assert (everyone != sp.csr_matrix(full, dtype=np.float32)).nnz == 0


def test_next_basket_on_a_big_shop_learns_from_a_sample_in_blocks(monkeypatch):
    """A shop past `train_customers` and FIT_BLOCK (here 60 and 16 of 200 customers, and a pool of
    50): the ranker learns the rhythm from the sampled customers, block by block, and serves every
    customer, a request exactly as the batch."""
    import training.models.next_basket as next_basket

    monkeypatch.setattr(next_basket, "FIT_BLOCK", 16)
    data = rhythm_data(200)
    users = np.arange(data.n_users)
    last = np.array([data.sequences[u][-2] for u in users])
    other = np.where(last % 2 == 0, last + 1, last - 1)
    nb = get_model_class("next-basket")
    cfg = nb.Config(neighbours=5, explore=5, train_targets=4, iterations=50, train_customers=60, pool_size=50)
    model = nb(cfg).fit(data)
    assert len(model.pool_users_) == 50
    ids, _ = model.recommend(users, History.of(data, users), 1)
    assert (ids[:, 0] == other).mean() >= 0.95
    batch = model.score(users[:20], History.of(data, users[:20]))
    one = np.vstack([model.score(np.array([u]), History.of(data, np.array([u]))) for u in users[:20]])
    np.testing.assert_array_equal(one, batch)
    member = int(model.pool_users_[3])  # a forgotten pool customer leaves the sampled pool
    model.forget_users([f"u{member}"])
    assert model.pool_[3].nnz == 0 and model.pool_norm2_[3] == 0 and model.pool_.nnz > 0


def test_served_next_basket_probabilities_are_scikit_learn_s_own_bits():
    """ForestWalk (every tree in one compiled loop) against predict_proba, NaNs included."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from training.models.forest import ForestWalk

    rng = np.random.default_rng(0)
    X = rng.random((3_000, 6))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 3]) > 0.9) ^ (rng.random(3_000) < 0.2)
    for leaves in (3, 31, 127):
        model = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=leaves, random_state=0).fit(X, y)
        walk = ForestWalk(model)
        assert walk.fast is not None  # the compiled walk, not the fallback
        Q = X[:300].astype(np.float32)
        np.testing.assert_array_equal(walk(Q), model.predict_proba(Q)[:, 1])
        # a wider candidate matrix (features added after the model was fitted) reads the columns it knew
        wide = np.hstack([Q, np.ones((len(Q), 2), np.float32)])
        np.testing.assert_array_equal(walk(wide), model.predict_proba(Q)[:, 1])
        assert len(walk(Q[:0])) == 0
    # missing values sent the way the split learned (a feature missing only at predict time included)
    Q = X[:50].copy()
    Q[:, 1] = np.nan
    np.testing.assert_array_equal(walk(Q), model.predict_proba(Q)[:, 1])


def test_forest_walk_falls_back_to_scikit_learn_for_categorical_splits():
    from sklearn.ensemble import HistGradientBoostingClassifier

    from training.models.forest import ForestWalk

    rng = np.random.default_rng(1)
    X = np.column_stack([rng.integers(0, 5, 2_000), rng.random(2_000)])
    y = (X[:, 0] % 2 == 0) ^ (rng.random(2_000) < 0.1)
    model = HistGradientBoostingClassifier(max_iter=10, categorical_features=[0], random_state=0).fit(X, y)
    walk = ForestWalk(model)
    assert walk.fast is None
    np.testing.assert_array_equal(walk(X[:40]), model.predict_proba(X[:40])[:, 1])


def rhythm_data(n_users: int = 60, n_baskets: int = 12) -> TrainData:
    """Every customer alternates between two staples (item a in even, item b in odd baskets) and
    buys one random filler item from 10..29 in every basket. Customers end on a or b by parity."""
    rng = np.random.default_rng(0)
    out = []
    for u in range(n_users):
        a, b = (2 * (u % 5), 2 * (u % 5) + 1)
        nb = n_baskets + (u % 2)
        out.append([[a if k % 2 == 0 else b, int(rng.integers(10, 30))] for k in range(nb)])
    return data_of(out, 30)


def test_next_basket_learns_the_rhythm_tifu_decay_misses():
    """After a basket with b comes a basket with a: the learned ranker puts the overdue staple
    first; TIFU (recency-decayed frequency) puts the one just bought first."""
    data = rhythm_data()
    users = np.arange(data.n_users)
    last = np.array([data.sequences[u][-2] for u in users])  # the staple of the newest basket
    other = np.where(last % 2 == 0, last + 1, last - 1)
    nb = get_model_class("next-basket")
    model = nb(nb.Config(neighbours=5, explore=5, train_targets=4, iterations=50)).fit(data)
    ids, _ = model.recommend(users, History.of(data, users), 1)
    assert (ids[:, 0] == other).mean() >= 0.95
    tifu = TIFUKNN(TIFUConfig(group_size=20, neighbours=5, alpha=1.0)).fit(data)
    ids, _ = tifu.recommend(users, History.of(data, users), 1)
    assert (ids[:, 0] == last).mean() >= 0.95


@pytest.mark.parametrize("path", ["compiled", "numpy"])
def test_a_request_scores_each_customer_exactly_as_the_batch_does(monkeypatch, path):
    """One customer at a time (a served request: the neighbour search through the pool's columns,
    the neighbours' sum compiled or in numpy, the explore top-k by a partition, the trees walked one
    by one) gives the batch path's scores to the bit, for customers with many, few and no baskets."""
    import training.models.tifu as tifu

    monkeypatch.setattr(tifu, "BY_COLUMN", 2.0)  # the column path for every request of this tiny shop
    if path == "numpy":
        monkeypatch.setattr(tifu, "_sum_neighbours_compiled", None)
    data = random_shop(1, 80, 40, 6)
    nb = get_model_class("next-basket")
    model = nb(nb.Config(neighbours=7, explore=6, train_targets=3, iterations=30)).fit(data)
    users = np.arange(data.n_users)
    batch = model.score(users, History.of(data, users))
    one = np.vstack([model.score(np.array([u]), History.of(data, np.array([u]))) for u in users])
    np.testing.assert_array_equal(one, batch)
    assert model.pool_cols_ is not None
    # TIFU-KNN's request path (`_score_one`): the same blend's bits, its pool whole or a sample
    for cfg in (TIFUConfig(neighbours=7), TIFUConfig(neighbours=5, alpha=0.13, pool_size=30)):
        knn = TIFUKNN(cfg).fit(data)
        assert knn.pool_cols_ is not None
        one = np.vstack([knn.score(np.array([u]), History.of(data, np.array([u]))) for u in users])
        np.testing.assert_array_equal(one, knn.score(users, History.of(data, users)))


def test_dot_products_through_the_pool_s_columns_have_scipy_s_bits():
    """The column path adds each pool row's products in ascending item order into a float32 zero,
    as scipy's row-wise product does: the same bits, where another order of the same float32 terms
    would round differently."""
    from training.models.tifu import _dots_by_column

    rng = np.random.default_rng(3)
    P = sp.random(300, 500, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    P.data = (rng.random(P.nnz) * 10.0 ** rng.integers(-3, 3, P.nnz)).astype(np.float32)
    assert P.dtype == np.float32 and P.has_sorted_indices
    items = np.sort(rng.choice(500, 200, replace=False)).astype(np.int64)
    q = rng.random(200).astype(np.float32)
    dense = np.zeros(500, np.float32)
    dense[items] = q
    want = P @ dense
    np.testing.assert_array_equal(_dots_by_column(items, q, pool_columns(P)), want)
    # the check can fail: the same terms summed in reverse item order differ in some rows
    assert (_dots_by_column(items[::-1], q[::-1], pool_columns(P)) != want).any()


def test_a_request_s_explore_items_are_the_batch_top_k_ties_by_lower_index():
    """The request's explore candidates (a partition of the items the neighbours touched, in any
    order) are the batch path's top-k of the neighbours' vector without the customer's own items,
    equal weights going to the lower item index."""
    from training.models.bought_together import row_topk_sparse
    from training.models.next_basket import _one_row_neighbours

    rng = np.random.default_rng(4)
    # weights from a few levels: many equal sums, so the tie-break decides
    pool = sp.csr_matrix(rng.integers(0, 3, (30, 60)) * (rng.random((30, 60)) < 0.3), dtype=np.float32)
    near = np.sort(rng.choice(30, 6, replace=False))
    own = sp.csr_matrix((np.ones(8), (np.zeros(8, int), rng.choice(60, 8, replace=False))), shape=(1, 60))
    own.sum_duplicates()
    one = _one_row_neighbours(near, np.float32(1 / 6), pool, own, 60)
    W = sp.csr_matrix((np.full(6, 1 / 6, np.float32), (np.zeros(6, int), near)), shape=(1, 30))
    nbr = sp.csr_matrix(W @ pool, dtype=np.float64)
    np.testing.assert_array_equal(one.nbr(np.arange(60)), nbr.toarray()[0])
    pattern = own.copy()
    pattern.data[:] = 1.0
    fresh = nbr - nbr.multiply(pattern)
    fresh.eliminate_zeros()
    for k in (1, 3, 5, 10, 100):
        want = np.sort(row_topk_sparse(fresh, k, by_index=True).tocoo().col)
        np.testing.assert_array_equal(one.explore(k), want, err_msg=f"k={k}")


def test_the_pool_is_read_by_column_only_where_its_rows_are_in_item_order():
    """The column path adds each row's products in item order, which is scipy's order only for a
    pool whose rows store their items ascending; any other pool keeps the product over every row."""
    P = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], np.float32))
    cols = pool_columns(P)
    assert cols is not None and (cols.toarray() == P.toarray()).all()
    unsorted = sp.csr_matrix((np.array([2, 1], np.float32), np.array([2, 0]), np.array([0, 2])), shape=(1, 3))
    assert not unsorted.has_sorted_indices and pool_columns(unsorted) is None


def test_next_basket_without_two_baskets_falls_back_to_the_tifu_blend():
    data = data_of([[[0, 1]], [[0, 2]], [[3]]], 4)
    nb = get_model_class("next-basket")
    model = nb(nb.Config(neighbours=1)).fit(data)
    assert model.fit_warnings and "TIFU-KNN" in model.fit_warnings[0]
    ids, _ = model.recommend(np.array([0]), History.of(data, np.array([0])), 1, exclude=data.user_items[[0]])
    assert ids[0, 0] == 2  # customer 1, the nearest, also bought item 2


@pytest.mark.parametrize("bad", [{"group_size": 0}, {"alpha": 1.5}, {"within_decay": 0.0}])
def test_tifu_config_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="tifu"):
        TIFUConfig(**bad)


def test_the_served_engine_gives_a_next_basket_model_the_history_s_times(tmp_path) -> None:
    """Serving scores a time-aware model (tifu) with the customer's basket times from the feature
    build, the same scores as the model's own over the training history, not one merged basket."""
    import importlib.util
    from pathlib import Path

    from features.workspace import Workspace
    from serving.bundle import load_bundle
    from serving.loader import ServeConfig, load_state
    from serving.pipeline import Engine
    from training.data import load_train_data

    spec = importlib.util.spec_from_file_location("_svc", Path(__file__).with_name("test_service.py"))
    svc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(svc)
    bundle_dir = svc.build_tiny_bundle(tmp_path / "shop", "tifu")
    engine = Engine(load_bundle(bundle_dir), load_state(ServeConfig(shop=tmp_path / "shop")))
    model = engine.model
    data = load_train_data(Workspace.at(tmp_path / "shop"))
    u = int(model.users.set_index("user_id").loc["u2", "user_idx"])
    customer = engine._customer("u2")
    cat = engine.state.current.catalog
    row, seq = engine._history_row(customer, [], cat), engine._sequence(customer, [], cat)
    times = engine._sequence_ts(customer, [])
    assert times is not None and len(times) == len(seq) and len(np.unique(times)) > 1  # several baskets
    served = engine.scorer.model_scores(u, row, seq, cat.n, times)
    users = np.array([u])
    own = np.asarray(model.score(users, History.of(data, users)), dtype=np.float64)[0]
    one_basket = np.asarray(model.score(users, History(data.user_items[users], [data.sequences[u]])))[0]
    state_of = engine.scorer.items.scores_to_state
    np.testing.assert_allclose(served, state_of(own, cat.n), rtol=1e-6)
    assert not np.allclose(state_of(own, cat.n), state_of(one_basket.astype(np.float64), cat.n))


DAY = 86_400


def cycle_data(n_users: int = 80, seed: int = 0) -> TrainData:
    """Customers shop after 1 or 4 days at random, one random filler from 10..29 a basket, and buy
    their staple (item u % 10) whenever 6 days or more have passed since they last bought it.
    Whether the staple is due next depends on when it is asked for."""
    rng = np.random.default_rng(seed)
    seqs, times, rows, cols = [], [], [], []
    for u in range(n_users):
        staple, t, last, s, ts = u % 10, 0, -(10**9), [], []
        for _ in range(16):
            t += int(rng.choice([1, 4])) * DAY
            basket = [int(rng.integers(10, 30))]
            if t - last >= 6 * DAY:
                basket.append(staple)
                last = t
            s += basket
            ts += [t] * len(basket)
        seqs.append(np.asarray(s, np.int64))
        times.append(np.asarray(ts, np.int64))
        rows += [u] * len(s)
        cols += s
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, 30))
    users, items = frames(n_users, 30)
    return TrainData(X, users, items, sequences=seqs, sequence_ts=times)


def test_next_basket_reads_now_the_time_the_basket_is_asked_for():
    """The staple was just bought: asked 1 day later it is not due (a filler comes first), asked 8
    days later it is (it comes first). Same history, only `History.now` differs; the ranker learned
    this from each training target basket's own time (never its contents)."""
    data = cycle_data()
    users = np.arange(data.n_users)
    nb = get_model_class("next-basket")
    model = nb(nb.Config(neighbours=5, explore=5, train_targets=8, iterations=60)).fit(data)
    staple = users % 10
    # each customer's history up to (and with) the basket where they last bought their staple
    cut = [int(np.flatnonzero(data.sequences[u] == staple[u]).max()) + 1 for u in users]
    seqs = [data.sequences[u][:c] for u, c in zip(users, cut, strict=True)]
    times = [data.sequence_ts[u][:c] for u, c in zip(users, cut, strict=True)]
    X = data.user_items[users]
    last = np.array([t.max() for t in times], np.float64)
    soon = model.recommend(users, History(X, seqs, times, last + DAY), 1)[0]
    later = model.recommend(users, History(X, seqs, times, last + 8 * DAY), 1)[0]
    assert (later[:, 0] == staple).mean() >= 0.9
    assert (soon[:, 0] != staple).mean() >= 0.9
    # without a time the model assumes one typical gap after the newest basket: an answer, no error
    assert model.recommend(users, History(X, seqs, times), 1)[0].shape == (data.n_users, 1)


def test_history_now_is_kept_per_row_in_batches_and_checked():
    data = cycle_data(n_users=6)
    users = np.arange(6)
    seen: list[np.ndarray] = []

    class Spy(TIFUKNN):
        def score(self, users, history):
            seen.append(history.now.copy())
            return super().score(users, history)

    model = Spy(TIFUConfig(neighbours=2)).fit(data)
    hist = History.of(data, users)
    now = np.arange(6, dtype=np.float64) * 1e6
    model.recommend(users, History(hist.user_items, hist.sequences, hist.sequence_ts, now), 2, batch_size=4)
    np.testing.assert_array_equal(np.concatenate(seen), now)
    with pytest.raises(ValueError, match="now"):
        History(hist.user_items, now=np.zeros(3))


def test_evaluation_tells_the_model_the_held_out_basket_s_time_not_its_contents():
    """evaluate() gives the model `now` = each customer's held-out basket time (valid: the validation
    basket's, test: the test basket's), and the held-out items never reach the history."""
    from training.data import Split
    from training.evaluate import evaluate

    data = cycle_data(n_users=4)
    seen: dict[str, tuple[np.ndarray, sp.csr_matrix]] = {}

    class Spy(TIFUKNN):
        def score(self, users, history):
            seen[self.on] = (history.now.copy(), history.user_items.copy())
            return super().score(users, history)

    valid = pd.DataFrame({"user_idx": [0, 1, 2, 3], "item_idx": [20, 21, 22, 23], "ts": [100 * DAY] * 4})
    test = pd.DataFrame(
        {
            "user_idx": [0, 1, 2, 3, 3],
            "item_idx": [24, 25, 26, 27, 28],
            "ts": [140 * DAY] * 3 + [141 * DAY, 142 * DAY],
        }
    )
    split = Split(data, valid, test, {"kind": "loo"})
    model = Spy(TIFUConfig(neighbours=2)).fit(data)
    for on, frame in (("valid", valid), ("test", test)):
        model.on = on
        evaluate(model, split, on=on, exclude_seen="never", ks=(2,))
        now, X = seen[on]
        np.testing.assert_array_equal(now, frame.groupby("user_idx")["ts"].min().to_numpy(np.float64))
        expected = data.user_items.toarray()
        if on == "test":  # the validation basket happened before: it is history
            expected[valid["user_idx"], valid["item_idx"]] = np.maximum(
                expected[valid["user_idx"], valid["item_idx"]], 1
            )
        np.testing.assert_array_equal(X.toarray(), expected)


def test_the_served_engine_scores_as_of_the_request_s_time(tmp_path) -> None:
    """A request's time reaches the model as `History.now` on every path that scores a customer
    (the web block, the e-mail batch, a re-rank), as evaluation gives it the held-out basket's time."""
    import importlib.util
    from pathlib import Path

    from serving.bundle import load_bundle
    from serving.loader import ServeConfig, load_state
    from serving.pipeline import Context, Engine

    spec = importlib.util.spec_from_file_location("_svc", Path(__file__).with_name("test_service.py"))
    svc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(svc)
    bundle_dir = svc.build_tiny_bundle(tmp_path / "shop", "tifu")
    engine = Engine(load_bundle(bundle_dir), load_state(ServeConfig(shop=tmp_path / "shop")))
    model = engine.scorer.model
    seen: list[np.ndarray | None] = []
    score = model.score

    def spy(users, history):
        seen.append(None if history.now is None else history.now.copy())
        return score(users, history)

    model.score = spy
    t = 1_800_000_000.0
    engine.recommend("u2", 3, now=t)
    engine.recommend_batch(["u2", "u3"], 3, now=t + 1)
    engine.rerank("u2", ["i0", "i1"], Context(), now=t + 2)
    assert seen and all(s is not None for s in seen)
    assert sorted({float(s[0]) for s in seen}) == [t, t + 1, t + 2]


def test_a_ranker_saved_before_the_as_of_now_features_still_scores():
    """Bundles written before the four as-of-now columns (appended last) hold a ranker fitted on the
    first 25: it must keep serving, reading the columns it knew."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from training.models.next_basket import FEATURES

    data = cycle_data(n_users=20)
    users = np.arange(20)
    nb = get_model_class("next-basket")
    model = nb(nb.Config(neighbours=3, explore=2, train_targets=2, iterations=5)).fit(data)
    rng = np.random.default_rng(0)
    old = len(FEATURES) - 4
    model.ranker_ = HistGradientBoostingClassifier(max_iter=3).fit(
        rng.random((50, old)), rng.random(50) < 0.5
    )
    ids, _ = model.recommend(users, History.of(data, users), 3)
    assert (ids >= 0).all()


def test_the_compiled_top_k_of_each_row_keeps_exactly_the_vectorised_entries(monkeypatch):
    """row_topk_sparse on a big matrix (a fit's neighbour items) runs compiled; the entries it keeps
    are the vectorised lexsort's, ties by position in the row or by column index included."""
    import training.models.bought_together as bt

    M = sp.random(300, 500, density=0.1, format="csr", random_state=3, dtype=np.float64)
    M.data = np.round(M.data * 4) / 4 + 0.25  # four values: ties everywhere
    M[7] = 0  # an empty row
    M.eliminate_zeros()
    # a sparse product's rows: columns stored out of order, so the two tie rules keep different entries
    shuffled = M.copy()
    rng = np.random.default_rng(0)
    for r in range(shuffled.shape[0]):
        s, e = shuffled.indptr[r], shuffled.indptr[r + 1]
        p = s + rng.permutation(e - s)
        shuffled.indices[s:e], shuffled.data[s:e] = shuffled.indices[p], shuffled.data[p]
    shuffled.has_sorted_indices = False
    differ = 0
    for k in (0, 1, 30, 60, 600):
        for by_index in (False, True):
            monkeypatch.setattr(bt, "TOPK_COMPILED_FROM", 10**12)
            numpy_path = bt.row_topk_sparse(shuffled, k, by_index=by_index)
            monkeypatch.setattr(bt, "TOPK_COMPILED_FROM", 0)
            compiled = bt.row_topk_sparse(shuffled, k, by_index=by_index)
            assert (numpy_path != compiled).nnz == 0, (k, by_index)
            np.testing.assert_array_equal(np.diff(compiled.indptr), np.minimum(np.diff(M.indptr), k))
        # ties by index keep what the sorted matrix keeps by position, whatever the stored order
        by_index = bt.row_topk_sparse(shuffled, k, by_index=True)
        assert (by_index != bt.row_topk_sparse(M, k)).nnz == 0, k
        differ += (bt.row_topk_sparse(shuffled, k) != by_index).nnz > 0
    assert differ  # the stored order decides ties by position: the check can fail


def test_a_big_unsorted_product_is_read_without_sorting_and_gives_the_same_values(monkeypatch):
    """_lookup reads a sparse product's unsorted rows through a compiled scratch row; every pair
    (stored, missing, on an empty row, asked twice, in any order) gets the sorted path's value."""
    import training.models.next_basket as nb

    rng = np.random.default_rng(5)
    W = sp.random(200, 80, density=0.05, format="csr", random_state=1, dtype=np.float32)
    W[3] = 0  # a customer without neighbours: an empty row
    P = sp.random(80, 400, density=0.05, format="csr", random_state=2, dtype=np.float32)
    M = sp.csr_matrix(W @ P, dtype=np.float64)
    row = rng.integers(0, 200, 5000)
    col = rng.integers(0, 400, 5000)
    stored = M.tocoo()
    row = np.r_[row, stored.row, stored.row[:50]]  # every stored entry too, some twice
    col = np.r_[col, stored.col, stored.col[:50]]
    monkeypatch.setattr(nb, "GATHER_COMPILED_FROM", 10**12)
    sorted_path = nb._lookup(M.copy(), row, col)
    monkeypatch.setattr(nb, "GATHER_COMPILED_FROM", 0)
    calls = []
    if nb._gather_compiled is not None:
        gather = nb._gather_compiled
        monkeypatch.setattr(nb, "_gather_compiled", lambda *a: calls.append(1) or gather(*a))
    assert not M.has_sorted_indices  # a product's rows come out unsorted
    gathered = nb._lookup(M, row, col)
    assert len(calls) == (nb._gather_compiled is not None)  # the compiled path ran, where numba is
    np.testing.assert_array_equal(gathered, sorted_path)
    assert (gathered != 0).sum() >= stored.nnz  # the stored entries were found, not zeros everywhere


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_a_fit_s_explore_top_k_without_matrix_copies_keeps_the_same_items(path):
    """The fit's explore candidates taken row by row (`_explore_topk`: skipping the customer's own
    items and zero weights, ties by lower item) are what the sparse route keeps: the neighbours'
    vectors minus the own items, zeros dropped, `row_topk_sparse(..., by_index=True)`."""
    from training.models.bought_together import row_topk_sparse
    from training.models.next_basket import _explore_compiled, _explore_topk

    fn = _explore_compiled if path == "compiled" else _explore_topk
    if fn is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(7)
    n, n_items = 40, 50
    # few levels of weight (many ties), explicit zeros, rows emptier than k, an empty row
    dense = rng.integers(0, 4, (n, n_items)) * (rng.random((n, n_items)) < 0.4)
    dense[3] = 0
    nbr = sp.csr_matrix(dense, dtype=np.float32)
    nbr.data[rng.random(nbr.nnz) < 0.05] = 0.0  # stored zeros, as a product's underflow leaves
    for r in range(n):  # a product's rows are not sorted by item
        s, e = nbr.indptr[r], nbr.indptr[r + 1]
        p = s + rng.permutation(e - s)
        nbr.indices[s:e], nbr.data[s:e] = nbr.indices[p].copy(), nbr.data[p].copy()
    nbr.has_sorted_indices = False
    assert (nbr.data == 0).any()
    own = sp.csr_matrix((rng.random((n, n_items)) < 0.3).astype(np.float64))
    pattern = own.copy()
    pattern.data[:] = 1.0
    fresh = nbr - nbr.multiply(pattern)
    fresh.eliminate_zeros()
    for k in (1, 2, 5, 12, 60):
        want = row_topk_sparse(fresh, k, by_index=True).tocoo()
        got_row, got_col = fn(nbr.indptr, nbr.indices, nbr.data, own.indptr, own.indices, n_items, k)
        np.testing.assert_array_equal(got_row, want.row, err_msg=f"k={k}")
        np.testing.assert_array_equal(got_col, want.col, err_msg=f"k={k}")


def test_a_fit_s_candidates_are_the_same_by_either_explore_route(monkeypatch):
    """Every candidate and feature of a fit's batch is the same whether the explore items come from
    the compiled row-by-row selection or the sparse route."""
    import training.models.next_basket as nbm

    if nbm._explore_compiled is None:
        pytest.skip("numba is not installed")
    data = random_shop(3, 120, 60, 7)
    nb = get_model_class("next-basket")
    users = np.arange(data.n_users)
    out = {}
    for route, at in (("compiled", 0), ("sparse", 10**12)):
        monkeypatch.setattr(nbm, "GATHER_COMPILED_FROM", at)
        model = nb(nb.Config(neighbours=9, explore=5, train_targets=3, iterations=30)).fit(data)
        out[route] = model.score(users, History.of(data, users))
    np.testing.assert_array_equal(out["compiled"], out["sparse"])
