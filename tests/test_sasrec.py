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


def _skewed(n_users: int = 80, n_items: int = 40, seed: int = 0) -> TrainData:
    """Popular and rare items (Zipf-like) walked in a fixed item order from random starts, so the
    next item is mostly known and the item x item part has popular and rare columns."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1)
    p /= p.sum()
    order = rng.permutation(n_items)
    seqs = []
    for _ in range(n_users):
        start = rng.choice(n_items, p=p)
        walk = order[(np.flatnonzero(order == start)[0] + np.arange(rng.integers(4, 12))) % n_items]
        noise = rng.choice(n_items, size=len(walk), p=p)
        seqs.append(np.where(rng.random(len(walk)) < 0.2, noise, walk))
    return _data(seqs, n_items)


def test_bounded_blend_ranks_like_the_exact_blend(tmp_path) -> None:
    """ease_max_items below the catalogue: DLAE covers the most popular items only, the others
    get a neutral linear part (0 after the z-score). The same network blended with the exact and
    the bounded item x item part ranks alike: most of each top 5 agrees."""
    data = _skewed()
    cfg = TINY.with_overrides({"epochs": 4, "ease_weight": 0.5, "ease_lambda": 5.0, "ease_dropout": 0.5})
    exact = SASRec(cfg).fit(data)
    bounded = SASRec(cfg.with_overrides({"ease_max_items": 20})).fit(data)  # half the catalogue
    assert exact.ease_kept is None and exact.ease_B.shape == (40, 40)
    counts = np.diff(sp.csc_matrix(data.user_items).indptr)
    assert bounded.ease_B.shape == (20, 20) and len(bounded.ease_kept) == 20
    assert counts[bounded.ease_kept].min() >= np.sort(counts)[::-1][19]  # the 20 most popular
    users = np.arange(data.n_users)
    hist = History.of(data, users)
    a, b = exact.score(users, hist), bounded.score(users, hist)
    top_a, top_b = np.argsort(-a, axis=1)[:, :5], np.argsort(-b, axis=1)[:, :5]
    overlap = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(top_a, top_b, strict=True)])
    assert overlap >= 0.8, overlap
    # the linear part of items outside the bounded set is neutral: their score is the
    # transformer's alone (z-scored), as the same network without the blend gives it
    alone = SASRec(cfg.with_overrides({"ease_weight": 0.0})).fit(data).score(users, hist).astype(np.float64)
    z_alone = (alone - alone.mean(1, keepdims=True)) / alone.std(1, keepdims=True)
    out = np.setdiff1d(np.arange(40), bounded.ease_kept)
    np.testing.assert_allclose(b[:, out], z_alone[:, out], rtol=1e-4, atol=1e-4)
    bounded.save(tmp_path / "b")
    np.testing.assert_array_equal(SASRec.load(tmp_path / "b").score(users, hist), b)


def test_sampled_softmax_gradient_is_the_full_softmax_gradient_in_the_limit() -> None:
    """With the logQ correction, the gradient the sampled softmax gives each other item's logit is
    a self-normalised importance-sampling estimate of its full-softmax probability among the other
    items: with many draws it matches p_j / (1 - p_target). Drawing by popularity without the
    correction would weigh item j by q_j as well, and this test would fail."""
    from training.models.sasrec import _NegativeSampler, _SASRecNet

    torch.manual_seed(0)
    net = _SASRecNet(N_ITEMS, TINY)
    net.item_emb.sparse = True
    counts = np.array([50, 1, 3, 20, 0, 7, 9, 2, 30, 4, 1, 12])  # a skewed proposal
    sampler = _NegativeSampler(counts, n_negatives=400_000)
    hidden = torch.randn(1, TINY.dim) * 3
    target = torch.tensor([3])
    loss = sampler.loss(net, hidden, target, torch.Generator().manual_seed(0))
    loss.backward()
    grad_rows = net.item_emb.weight.grad.to_dense()[1:]  # d loss / d e_j = (d loss / d s_j) * h
    h = hidden[0]
    d_scores = (grad_rows @ h / (h @ h)).detach().numpy()
    with torch.no_grad():
        p = torch.softmax(net.logits(hidden)[0].double(), dim=0).numpy()
    want = p / (1 - p[3])
    others = np.arange(N_ITEMS) != 3
    np.testing.assert_allclose(d_scores[others], want[others], atol=0.01)
    assert d_scores[3] == pytest.approx(-1.0, abs=0.01)  # the target's own gradient


def test_sampled_softmax_learns_what_the_full_softmax_learns() -> None:
    """The same network trained with the full and the sampled softmax (3 negatives of 12 items a
    batch) learns the cyclic next item alike: the same first item for every history, and the same
    items in each top 3."""
    data = _cyclic()
    full = SASRec(TINY.with_overrides({"loss": "full"})).fit(data)
    sampled = SASRec(TINY.with_overrides({"loss": "sampled", "n_negatives": 3})).fit(data)
    assert sampled.sampled_loss(N_ITEMS) and not full.sampled_loss(N_ITEMS)
    histories = [CYCLE[(s + np.arange(n)) % len(CYCLE)] for s in range(len(CYCLE)) for n in (2, 5, 9)]
    expected = [CYCLE[(s + n) % len(CYCLE)] for s in range(len(CYCLE)) for n in (2, 5, 9)]
    hist = History(sp.csr_matrix((len(histories), N_ITEMS)), histories)
    a, b = full.score(np.full(len(histories), -1), hist), sampled.score(np.full(len(histories), -1), hist)
    np.testing.assert_array_equal(b.argmax(axis=1), expected)
    np.testing.assert_array_equal(a.argmax(axis=1), b.argmax(axis=1))
    top_a, top_b = np.argsort(-a, axis=1)[:, :3], np.argsort(-b, axis=1)[:, :3]
    assert np.mean([len(set(x) & set(y)) / 3 for x, y in zip(top_a, top_b, strict=True)]) >= 0.6


def test_sampled_softmax_moves_only_the_item_rows_a_batch_touches() -> None:
    """Lazy updates: one step with one negative changes the rows of the batch's items and the
    drawn one, and no other item's vector (a dense Adam with decay would move them all)."""
    from training.models.sasrec import _NegativeSampler, _optimisers, _SASRecNet

    torch.manual_seed(0)
    cfg = TINY.with_overrides({"loss": "sampled", "n_negatives": 1})
    net = _SASRecNet(N_ITEMS, cfg)
    before = net.item_emb.weight.detach().clone()
    opts = _optimisers(net, cfg, sparse_items=True)
    sampler = _NegativeSampler(np.ones(N_ITEMS), 1)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.tensor([[1, 4, 8]])  # items 0, 3, 7
    drawn = int(sampler.draw(torch.Generator().manual_seed(0))[0])
    loss = sampler.loss(net, net(tokens[:, :-1])[0], tokens[0, 1:] - 1, gen)
    loss.backward()
    for o in opts:
        o.step()
    moved = np.flatnonzero((net.item_emb.weight.detach() != before).any(dim=1).numpy()[1:])
    assert set(moved) == {0, 3, 7, drawn}


def test_loss_config_is_checked() -> None:
    with pytest.raises(ValueError, match="loss"):
        SASRecConfig(loss="softmax")
    with pytest.raises(ValueError, match="n_negatives"):
        SASRecConfig(n_negatives=0)
    model = SASRec(SASRecConfig(full_softmax_max_items=100))
    assert not model.sampled_loss(100) and model.sampled_loss(101)
