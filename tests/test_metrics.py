"""Metric functions on hand-computed cases, and evaluate() end to end on a split whose answer is known."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from training.base import History, ModelConfig, Recommender, TrainData
from training.data import Split, last_purchases_from_sequences
from training.evaluate import (
    coverage_at_k,
    evaluate,
    evaluate_baskets,
    hit_at_k,
    hit_matrix,
    map_at_k,
    ndcg_at_k,
    novelty_at_k,
    recall_at_k,
)

# user 0: 2 targets, hits at ranks 1 and 3; user 1: 1 target, hit at rank 2; user 2: 3 targets, none
HITS = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)
N_T = np.array([2, 1, 3])


def test_recall_hit():
    np.testing.assert_allclose(recall_at_k(HITS, N_T, 3), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(recall_at_k(HITS, N_T, 1), [0.5, 0.0, 0.0])
    np.testing.assert_allclose(hit_at_k(HITS, 1), [1, 0, 0])
    np.testing.assert_allclose(hit_at_k(HITS, 2), [1, 1, 0])


def test_ndcg_by_hand():
    # user 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG(2) = 1 + 1/log2(3) = 1.6309
    # user 1: DCG = 1/log2(3) = 0.6309; IDCG(1) = 1
    np.testing.assert_allclose(ndcg_at_k(HITS, N_T, 3), [1.5 / (1 + 1 / np.log2(3)), 1 / np.log2(3), 0.0])
    # at k=1 user 0 has 1 hit of min(2, 1) = 1 possible
    np.testing.assert_allclose(ndcg_at_k(HITS, N_T, 1), [1.0, 0.0, 0.0])


def test_map_by_hand():
    # user 0: precisions at hit ranks 1/1 and 2/3 -> (1 + 2/3) / 2; user 1: (1/2) / 1
    np.testing.assert_allclose(map_at_k(HITS, N_T, 3), [(1 + 2 / 3) / 2, 0.5, 0.0])


def test_coverage_and_novelty():
    ids = np.array([[0, 1], [0, 2], [-1, -1]])
    assert coverage_at_k(ids, 10, 2) == pytest.approx(0.3)
    assert coverage_at_k(ids, 10, 1) == pytest.approx(0.1)
    pop = np.array([0.5, 0.25, 0.125])
    # items 0, 1, 0, 2 -> (1 + 2 + 1 + 3) / 4
    assert novelty_at_k(ids, pop, 2) == pytest.approx(7 / 4)


def test_hit_matrix_ignores_padding():
    T = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], np.float32))
    ids = np.array([[2, 0, -1], [0, -1, -1]])
    np.testing.assert_array_equal(hit_matrix(ids, T), [[True, True, False], [False, False, False]])


class _Fixed(Recommender):
    """Scores every user with the same fixed vector: item i scores n_items - i (item 0 best)."""

    name = "fixed"

    class Config(ModelConfig):
        pass

    def _fit(self, data, *, callback=None):
        pass

    def score(self, users, history):
        return np.tile(np.arange(self.n_items, 0, -1, dtype=np.float32), (len(users), 1))


def _split(category_rebuy: pd.DataFrame) -> Split:
    # 3 users, 4 items. user 0 bought item 0 at t=0 (a staple), user 1 bought item 1 (a durable).
    X = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], np.float32))
    users = pd.DataFrame({"user_idx": [0, 1, 2], "user_id": ["a", "b", "c"]})
    items = pd.DataFrame(
        {"item_idx": range(4), "item_id": list("wxyz"), "category": ["food", "tech", "food", "tech"]}
    )
    seqs = [np.array([0]), np.array([1]), np.array([], np.int64)]
    ts = [np.array([0]), np.array([0]), np.array([], np.int64)]
    train = TrainData(
        X,
        users,
        items,
        sequences=seqs,
        category_rebuy=category_rebuy,
        last_purchases=last_purchases_from_sequences(seqs, ts, items),
    )
    day = 86_400
    test = pd.DataFrame({"user_idx": [0, 1, 2], "item_idx": [0, 1, 2], "ts": [30 * day, 30 * day, 30 * day]})
    valid = pd.DataFrame({"user_idx": [2], "item_idx": [3], "ts": [day]})
    return Split(train, valid, test, {"kind": "loo"}, ts)


def test_evaluate_exclusion_modes_and_segments():
    rebuy = pd.DataFrame(
        {"category": ["food", "tech"], "rebuyable": [True, False], "median_interval_days": [10.0, np.nan]}
    )
    split = _split(rebuy)
    model = _Fixed().fit(split.train)
    # never: everyone gets [0, 1, 2, 3]: user 0 hit at 1, user 1 at 2, user 2 at 3
    r = evaluate(model, split, ks=(1, 3), exclude_seen="never")
    assert r["hit@1"] == pytest.approx(1 / 3)
    assert r["ndcg@3"] == pytest.approx((1 + 1 / np.log2(3) + 0.5) / 3)
    # always: user 0 loses item 0 (its target), user 1 loses item 1, user 2 loses valid item 3
    r = evaluate(model, split, ks=(1, 3), exclude_seen="always")
    assert r["hit@3"] == pytest.approx(1 / 3)  # only user 2 (item 2 at rank 2 after 0, 1)
    # learned: food is rebuyable and 30 days > 0.5 * 10 -> user 0 gets item 0 back; tech never
    r = evaluate(model, split, ks=(1, 3), exclude_seen="learned")
    assert r["hit@1"] == pytest.approx(1 / 3) and r["hit@3"] == pytest.approx(2 / 3)
    assert r["n_users/new"] == 3 and r["recall@3/new"] == pytest.approx(2 / 3)
    assert r["coverage@1"] == pytest.approx(1 / 4)  # item 0 is everyone's first (user 1 excluded item 1 only)


def test_evaluate_hands_out_each_customer_s_metric_for_paired_intervals():
    split = _split(pd.DataFrame())
    model = _Fixed().fit(split.train)
    per_user: dict = {}
    r = evaluate(model, split, ks=(1, 3), exclude_seen="never", per_user_out=per_user)
    np.testing.assert_array_equal(per_user["users"], [0, 1, 2])
    # everyone gets [0, 1, 2, 3]; user u's target is item u, at rank u + 1
    np.testing.assert_allclose(per_user["hit@1"], [1, 0, 0])
    np.testing.assert_allclose(per_user["hit@3"], [1, 1, 1])
    assert r["hit@1"] == pytest.approx(per_user["hit@1"].mean())


def test_a_big_evaluation_takes_a_seeded_sample_the_same_for_every_model():
    """Above max_users held-out customers, a seeded sample is evaluated: its figures are the full
    evaluation's figures of exactly those customers, and another model gets the same customers."""
    split = _split(pd.DataFrame())
    model = _Fixed().fit(split.train)
    full: dict = {}
    evaluate(model, split, ks=(1, 3), exclude_seen="never", per_user_out=full)
    sampled: dict = {}
    r = evaluate(model, split, ks=(1, 3), exclude_seen="never", per_user_out=sampled, max_users=2)
    assert r["n_users"] == 2 and r["n_users_heldout"] == 3
    picked = np.isin(full["users"], sampled["users"])
    assert picked.sum() == 2
    assert r["hit@1"] == pytest.approx(full["hit@1"][picked].mean())
    assert r["ndcg@3"] == pytest.approx(full["ndcg@3"][picked].mean())

    class Reversed(_Fixed):
        def score(self, users, history):
            return -super().score(users, history)

    for _ in range(5):  # the same customers every time (an unseeded draw would differ by chance)
        again: dict = {}
        evaluate(
            Reversed().fit(split.train), split, ks=(1,), exclude_seen="never", per_user_out=again, max_users=2
        )
        np.testing.assert_array_equal(again["users"], sampled["users"])
    # at or under the cap every customer is evaluated and nothing says otherwise
    whole = evaluate(model, split, ks=(1,), exclude_seen="never", max_users=3)
    assert whole["n_users"] == 3 and "n_users_heldout" not in whole
    with pytest.raises(ValueError, match="max_users"):
        evaluate(model, split, max_users=0)


def test_promote_compares_runs_evaluated_on_the_same_customers_only(monkeypatch):
    import training.evaluate as ev
    from training.promote import same_customers

    monkeypatch.setattr(ev, "EVAL_CUSTOMERS", 100)
    assert same_customers({"eval_customers": "100"}, {"n_users": 100.0})
    assert not same_customers({"eval_customers": "50"}, {"n_users": 50.0})  # another cap: re-evaluate
    assert same_customers({}, {"n_users": 80.0})  # before the cap, on fewer customers: all, as now
    assert not same_customers({}, {"n_users": 700.0})  # before the cap, on more: not the same customers


def test_ratio_interval_covers_a_planted_ratio_and_says_how_often_it_clears_the_target():
    from benchmarks.bench_nbr import ratio_interval

    rng = np.random.default_rng(3)
    base = rng.uniform(0.0, 1.0, 2_000)
    ours = np.clip(base * 1.10 + rng.normal(0.0, 0.05, base.size), 0.0, None)  # planted: 10% better
    ci = ratio_interval(ours, base)
    assert ci["low"] < ours.mean() / base.mean() < ci["high"]
    assert ci["low"] > 1.05 and ci["high"] < 1.15
    assert ci["share_of_resamples_at_or_above_1.05"] > 0.99 and ci["customers"] == 2_000
    same = ratio_interval(base + rng.normal(0.0, 0.05, base.size), base)
    assert same["low"] < 1.0 < same["high"] and same["share_of_resamples_at_or_above_1.05"] < 0.01


def test_evaluate_rejects_bad_arguments():
    split = _split(pd.DataFrame())
    model = _Fixed().fit(split.train)
    with pytest.raises(ValueError, match="exclude_seen"):
        evaluate(model, split, exclude_seen="sometimes")
    with pytest.raises(ValueError, match="on must be"):
        evaluate(model, split, on="train")


def test_evaluate_baskets_hides_one_item():
    class Pairs(_Fixed):
        """Item 2i and 2i+1 are complements."""

        def score(self, users, history: History):
            s = np.zeros((len(users), self.n_items), np.float32)
            X = history.user_items.tocoo()
            s[X.row, X.col ^ 1] = 1.0
            return s

    X = sp.csr_matrix((2, 6), dtype=np.float32)
    data = TrainData(
        X,
        pd.DataFrame({"user_idx": [0, 1], "user_id": ["a", "b"]}),
        pd.DataFrame({"item_idx": range(6), "item_id": list("abcdef")}),
    )
    test = pd.DataFrame({"user_idx": [0, 0, 1, 1, 1], "item_idx": [0, 1, 2, 3, 3], "ts": [5, 5, 7, 7, 7]})
    split = Split(data, test.iloc[:0], test, {})
    r = evaluate_baskets(Pairs().fit(data), split, ks=(1,))
    assert r["n_baskets"] == 2 and r["basket_hit@1"] == 1.0


def test_load_split_reads_feature_files_and_drops_leaking_baskets(tmp_path):
    """A hand-written workspace: baskets at or after a customer's first held-out interaction, or
    holding a held-out (customer, item) pair, must not reach training."""
    from features.workspace import Workspace
    from training.data import load_split, load_train_data

    ws = Workspace.at(tmp_path)
    d = ws.split_dir("loo")
    d.mkdir(parents=True)
    pd.DataFrame({"user_idx": np.array([0, 1], np.int32), "user_id": ["a", "b"]}).to_parquet(
        ws.feature("users")
    )
    pd.DataFrame(
        {"item_idx": np.arange(4, dtype=np.int32), "item_id": list("wxyz"), "category": ["f", "f", "t", "t"]}
    ).to_parquet(ws.feature("items"))
    pd.DataFrame({"user_idx": [0, 1], "segment": ["vip", "new"]}).to_parquet(ws.feature("profiles"))
    pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [0, 1, 2], "value": np.float32([2, 1, 1])}).to_parquet(
        ws.feature("interactions")
    )
    pd.DataFrame({"user_idx": [0, 1], "item_idx": [[0, 1, 0], [2]], "ts": [[1, 2, 3], [5]]}).to_parquet(
        ws.feature("sequences")
    )
    pd.DataFrame(
        {
            "basket_id": [0, 1, 2, 3],
            "user_idx": [0, 0, 1, 1],
            "ts": [1, 10, 5, 6],
            "item_idx": [[0, 1], [0, 3], [2, 3], [2, 1]],
        }
    ).to_parquet(ws.feature("baskets"))
    pd.DataFrame({"user_idx": [0, 0], "item_idx": [0, 1], "value": np.float32([1, 1])}).to_parquet(
        d / "train.parquet"
    )
    pd.DataFrame({"user_idx": [0], "item_idx": [[0, 1, 0]], "ts": [[1, 2, 3]]}).to_parquet(
        d / "train_sequences.parquet"
    )
    pd.DataFrame({"user_idx": [0], "item_idx": [3], "ts": [10]}).to_parquet(d / "valid.parquet")
    pd.DataFrame({"user_idx": [0, 1], "item_idx": [2, 1], "ts": [11, 20]}).to_parquet(d / "test.parquet")

    full = load_train_data(ws)
    assert full.user_items.shape == (2, 4) and full.user_items[0, 0] == 2 and len(full.baskets) == 4
    assert full.users["segment"].tolist() == ["vip", "new"]
    split = load_split(ws, "loo")
    assert split.train.user_items.nnz == 2
    # loo is temporal: only basket 1 (user 0 at ts 10 = the first held-out time) goes; user 1's
    # baskets (ts 5, 6) are before its held-out item (ts 20)
    kept = sorted(tuple(b.tolist()) for b in split.train.baskets)
    assert kept == [(0, 1), (2, 1), (2, 3)]
    # the random split has no time order: a basket holding a held-out (customer, item) pair goes
    import shutil

    shutil.copytree(d, ws.split_dir("random"))
    rnd = load_split(ws, "random")
    assert sorted(tuple(b.tolist()) for b in rnd.train.baskets) == [(0, 1), (2, 3)]
    lp = split.train.last_purchases.sort_values("item_idx")
    assert lp["last_ts"].tolist() == [3, 2] and lp["n_purchases"].tolist() == [2, 1]
    assert lp["category"].tolist() == ["f", "f"]
    with pytest.raises(FileNotFoundError, match="features build"):
        load_split(ws, "time")
