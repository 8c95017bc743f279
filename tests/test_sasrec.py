"""SASRec: behaviour on tiny sequences whose right answer is known (seconds on one CPU thread)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from training.base import History, TrainData
from training.models.sasrec import SASRec, SASRecConfig, make_windows

N_ITEMS = 12
CYCLE = np.array([0, 3, 7, 1, 9, 4])  # next item after CYCLE[i] is always CYCLE[i + 1]


def _data(sequences: list[np.ndarray], n_items: int = N_ITEMS) -> TrainData:
    n_users = len(sequences)
    rows = np.repeat(np.arange(n_users), [len(s) for s in sequences])
    cols = np.concatenate(sequences)
    mat = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(n_users, n_items))
    users = pd.DataFrame({"user_idx": np.arange(n_users), "user_id": [f"u{u}" for u in range(n_users)]})
    items = pd.DataFrame({"item_idx": np.arange(n_items), "item_id": [f"i{i}" for i in range(n_items)]})
    return TrainData(user_items=mat, users=users, items=items, sequences=[np.asarray(s) for s in sequences])


def _cyclic(n_users: int = 24, seed: int = 0) -> TrainData:
    """Each user walks the cycle from a random start for 5–14 steps."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        start, length = rng.integers(len(CYCLE)), rng.integers(5, 15)
        seqs.append(CYCLE[(start + np.arange(length)) % len(CYCLE)])
    return _data(seqs)


TINY = SASRecConfig(
    max_len=8, dim=16, n_layers=1, n_heads=1, dropout=0.0, lr=0.02, batch_size=8, epochs=25,
    warmup_steps=5, patience=0, device="cpu", threads=1, progress=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def fitted() -> tuple[SASRec, TrainData]:
    data = _cyclic()
    return SASRec(TINY).fit(data), data


def test_learns_the_cyclic_next_item(fitted: tuple[SASRec, TrainData]) -> None:
    model, _ = fitted
    # Histories that end at every point of the cycle, some shorter than anything in training.
    histories = [CYCLE[(s + np.arange(n)) % len(CYCLE)] for s in range(len(CYCLE)) for n in (2, 5, 9)]
    expected = [CYCLE[(s + n) % len(CYCLE)] for s in range(len(CYCLE)) for n in (2, 5, 9)]
    scores = model.score(
        np.full(len(histories), -1), History(sp.csr_matrix((len(histories), N_ITEMS)), histories)
    )
    assert scores.shape == (len(histories), N_ITEMS)
    np.testing.assert_array_equal(scores.argmax(axis=1), expected)
    assert model.history[-1]["train_loss"] < 0.2 < model.history[0]["train_loss"]


def test_batch_scores_equal_single_user_scores(fitted: tuple[SASRec, TrainData]) -> None:
    model, data = fitted
    users = np.arange(data.n_users)
    batch = model.score(users, History.of(data, users))
    for u in (0, 5, 17):  # sequences of different lengths: padding must not change anything
        single = model.score(np.array([u]), History.of(data, np.array([u])))
        np.testing.assert_allclose(single[0], batch[u], rtol=1e-5, atol=1e-5)


def test_save_load_gives_identical_scores(fitted: tuple[SASRec, TrainData], tmp_path) -> None:
    model, data = fitted
    users = np.arange(data.n_users)
    model.save(tmp_path / "m")
    loaded = SASRec.load(tmp_path / "m")
    np.testing.assert_array_equal(
        loaded.score(users, History.of(data, users)), model.score(users, History.of(data, users))
    )
    assert loaded.config == model.config
    ids, _ = loaded.recommend(users, History.of(data, users), k=3, exclude=data.user_items)
    ids0, _ = model.recommend(users, History.of(data, users), k=3, exclude=data.user_items)
    np.testing.assert_array_equal(ids, ids0)


def test_unknown_user_scored_from_sequence_and_empty_history_gets_popularity(fitted) -> None:
    model, data = fitted
    history = History(sp.csr_matrix((2, N_ITEMS)), [np.array([9]), np.array([], dtype=np.int64)])
    scores = model.score(np.array([-1, -1]), history)
    assert scores[0].argmax() == 4  # after 9 comes 4
    counts = np.bincount(np.concatenate(data.sequences), minlength=N_ITEMS)
    np.testing.assert_allclose(scores[1], np.log1p(counts))
    assert counts[scores[1].argmax()] == counts.max()


def test_callback_raising_stops_training() -> None:
    seen: list[int] = []

    class Stop(Exception):
        pass

    def callback(step: int, metrics: dict) -> None:
        seen.append(step)
        assert metrics["train_loss"] > 0
        if step == 2:
            raise Stop

    model = SASRec(TINY)
    with pytest.raises(Stop):
        model.fit(_cyclic(), callback=callback)
    assert seen == [0, 1, 2]


def test_early_stopping_keeps_the_best_epoch() -> None:
    """A validation hook that peaks at epoch 2: training stops `patience` epochs later and the
    weights of epoch 2 come back (the hook sees them: it records the first row's scores)."""
    values = iter([0.1, 0.3, 0.5, 0.2, 0.1, 0.0, 0.0, 0.0])
    snapshots: list[np.ndarray] = []
    probe = History(sp.csr_matrix((1, N_ITEMS)), [np.array([0, 3])])

    def hook(model: SASRec) -> float:
        snapshots.append(model.score(np.array([-1]), probe)[0])
        return next(values)

    model = SASRec(TINY.with_overrides({"patience": 2}), validation=hook)
    model.fit(_cyclic())
    assert len(model.history) == 5
    np.testing.assert_allclose(model.score(np.array([-1]), probe)[0], snapshots[2], rtol=1e-6)


def test_deterministic_for_a_seed_on_cpu() -> None:
    cfg = TINY.with_overrides({"epochs": 3})
    data = _cyclic()
    users = np.arange(data.n_users)
    a = SASRec(cfg).fit(data).score(users, History.of(data, users))
    b = SASRec(cfg).fit(data).score(users, History.of(data, users))
    np.testing.assert_array_equal(a, b)
    c = SASRec(cfg.with_overrides({"seed": 1})).fit(data).score(users, History.of(data, users))
    assert not np.allclose(a, c)


def test_similar_items_from_embeddings(fitted: tuple[SASRec, TrainData]) -> None:
    model, _ = fitted
    ids, scores = model.similar_items(np.array([0, 3]), k=N_ITEMS + 2)
    assert ids.shape == (2, N_ITEMS + 2)
    assert 0 not in ids[0] and 3 not in ids[1]  # an item is never its own neighbour
    assert (ids[:, N_ITEMS - 1 :] == -1).all()  # 11 other items, then padding
    assert np.all(np.diff(scores[:, : N_ITEMS - 1], axis=1) <= 1e-6)
    emb = torch.nn.functional.normalize(model.net.item_emb.weight[1:].detach(), dim=1).numpy()
    assert scores[0, 0] == pytest.approx(float(emb[0] @ emb[ids[0, 0]]), abs=1e-5)


def test_windows_cover_every_transition_once() -> None:
    seq = np.arange(10)
    windows = make_windows([seq, np.array([5]), np.array([], dtype=np.int64)], max_len=3)
    pairs = [(int(w[i]), int(w[i + 1])) for w in windows for i in range(len(w) - 1)]
    assert sorted(pairs) == [(i, i + 1) for i in range(9)]
    assert all(len(w) <= 4 for w in windows)


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown config key"):
        SASRecConfig.from_dict({"hidden": 64})
    with pytest.raises(ValueError, match="divisible"):
        SASRecConfig(dim=10, n_heads=3)
    assert SASRecConfig.from_dict({"epochs": "7", "dropout": "0.1"}).epochs == 7
    with pytest.raises(ValueError, match="sequences"):
        SASRec(TINY).fit(TrainData(sp.csr_matrix((1, 3)), pd.DataFrame({"user_idx": [0], "user_id": ["a"]}),
                                    pd.DataFrame({"item_idx": [0, 1, 2], "item_id": list("abc")})))  # fmt: skip
    with pytest.raises(RuntimeError, match="not fitted"):
        SASRec(TINY).score(np.array([0]), History(sp.csr_matrix((1, 3)), [np.array([1])]))


def test_validation_hook_scores_without_dropout() -> None:
    """Regression: the hook ran while the network was still in training mode, so dropout made
    validation scores noisy and early stopping picked epochs by chance."""
    probe = History(sp.csr_matrix((1, N_ITEMS)), [np.array([0, 3, 7])])
    pairs: list[tuple[np.ndarray, np.ndarray]] = []

    def hook(model: SASRec) -> float:
        pairs.append((model.score(np.array([-1]), probe)[0], model.score(np.array([-1]), probe)[0]))
        return 0.0

    SASRec(TINY.with_overrides({"dropout": 0.5, "epochs": 2}), validation=hook).fit(_cyclic())
    assert len(pairs) == 2
    for first, second in pairs:
        np.testing.assert_array_equal(first, second)


def test_ensemble_scores_are_the_mean_of_its_seeds(tmp_path) -> None:
    """n_models = 2 trains the networks of seeds 0 and 1 (each as a 1-network fit of its seed
    would) and scores with their mean logits; similar items use the mean cosine; save/load keeps
    both networks."""
    cfg = TINY.with_overrides({"epochs": 3, "dropout": 0.2, "ease_weight": 0.0})  # logits alone
    data = _cyclic()
    users = np.arange(data.n_users)
    hist = History.of(data, users)
    one = [SASRec(cfg.with_overrides({"seed": s})).fit(data) for s in (0, 1)]
    pair = SASRec(cfg.with_overrides({"n_models": 2})).fit(data)
    assert len(pair.nets) == 2
    expected = (one[0].score(users, hist) + one[1].score(users, hist)) / 2
    np.testing.assert_allclose(pair.score(users, hist), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(pair.score(users, hist), one[0].score(users, hist), atol=1e-3)

    def unit(m: SASRec) -> np.ndarray:
        return torch.nn.functional.normalize(m.net.item_emb.weight[1:].detach(), dim=1).numpy()

    ids, scores = pair.similar_items(np.array([0]), k=1)
    cos = [float(unit(m)[0] @ unit(m)[ids[0, 0]]) for m in one]
    assert scores[0, 0] == pytest.approx(np.mean(cos), abs=1e-5)

    pair.save(tmp_path / "pair")
    loaded = SASRec.load(tmp_path / "pair")
    np.testing.assert_array_equal(loaded.score(users, hist), pair.score(users, hist))


def test_loads_weights_saved_by_a_single_network_model(fitted, tmp_path) -> None:
    """Bundles written before ensembles existed hold one network's state dict (no "0." prefix)."""
    model, data = fitted
    model.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    torch.save({k.removeprefix("0."): v for k, v in state.items()}, tmp_path / "m" / "weights.pt")
    users = np.arange(data.n_users)
    loaded = SASRec.load(tmp_path / "m")
    np.testing.assert_array_equal(
        loaded.score(users, History.of(data, users)), model.score(users, History.of(data, users))
    )


def test_dlae_blend_is_z_logits_plus_weight_times_z_linear_scores_of_the_whole_sequence(tmp_path) -> None:
    """ease_weight = w: score = z(logits) + w · z(X·B) per row, B = DLAE's closed form on the 0/1
    matrix of the training sequences, X = the 0/1 row of the WHOLE sequence (also items older than
    max_len); w = 0 is the transformer alone. The blend survives save/load."""
    from training.models.ease import closed_form

    data = _cyclic()
    cfg = TINY.with_overrides({"epochs": 2, "ease_weight": 0.3, "ease_lambda": 2.0, "ease_dropout": 0.5})
    blended = SASRec(cfg).fit(data)
    alone = SASRec(cfg.with_overrides({"ease_weight": 0.0})).fit(data)  # the same network (seed)
    assert alone.ease_B is None
    users = np.arange(data.n_users)
    hist = History.of(data, users)
    X = np.zeros((data.n_users, N_ITEMS))
    for u, seq in enumerate(data.sequences):
        X[u, seq] = 1.0
    assert max(len(q) for q in data.sequences) > TINY.max_len  # the linear part sees past max_len
    B = closed_form(X.T @ X, 2.0, 0.5, zero_diagonal=False)

    def z(a: np.ndarray) -> np.ndarray:
        return (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)

    want = z(alone.score(users, hist).astype(np.float64)) + 0.3 * z(X @ B)
    np.testing.assert_allclose(blended.score(users, hist), want, rtol=1e-4, atol=1e-4)
    blended.save(tmp_path / "b")
    np.testing.assert_array_equal(SASRec.load(tmp_path / "b").score(users, hist), blended.score(users, hist))
    with pytest.raises(ValueError, match="ease_weight"):
        SASRecConfig(ease_weight=-1.0)


def test_dlae_blend_is_skipped_with_a_warning_above_ease_max_items() -> None:
    data = _cyclic()
    with pytest.warns(UserWarning, match="ease_max_items"):
        model = SASRec(TINY.with_overrides({"epochs": 1, "ease_max_items": N_ITEMS - 1})).fit(data)
    assert model.ease_B is None


def test_sampled_softmax_above_full_softmax_items_still_learns_the_cycle() -> None:
    """A catalogue above `full_softmax_items` trains against a sample of items per step (here 6 of
    12, fewer than the catalogue); the ranking over the whole catalogue must still be right."""
    cfg = TINY.with_overrides({"full_softmax_items": 5, "sampled_negatives": 6, "ease_weight": 0.0})
    model = SASRec(cfg).fit(_cyclic())
    assert model._proposal is not None and len(model._proposal) == N_ITEMS
    histories = [CYCLE[(s + np.arange(n)) % len(CYCLE)] for s in range(len(CYCLE)) for n in (2, 5)]
    expected = [CYCLE[(s + n) % len(CYCLE)] for s in range(len(CYCLE)) for n in (2, 5)]
    scores = model.score(
        np.full(len(histories), -1), History(sp.csr_matrix((len(histories), N_ITEMS)), histories)
    )
    np.testing.assert_array_equal(scores.argmax(axis=1), expected)
    # below the threshold the full softmax is used: no proposal
    assert SASRec(TINY.with_overrides({"epochs": 1})).fit(_cyclic())._proposal is None
