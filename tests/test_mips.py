"""serving.mips: length-pruned top scores are exactly the top of scoring every item."""

from __future__ import annotations

import numpy as np
import pytest

from serving.mips import ROWS, NormOrdered


def _skewed_factors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    """Item factors with the length spread of implicit-feedback models: a few long, most short."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return (x * rng.pareto(1.5, size=(n, 1)).astype(np.float32) * 0.05).astype(np.float32)


def _top(items: np.ndarray, scores: np.ndarray, need: int) -> dict[int, float]:
    best = np.argsort(-scores, kind="stable")[:need]
    return dict(zip(items[best].tolist(), scores[best].tolist(), strict=True))


@pytest.mark.parametrize("n", [1003, 4096])
def test_scan_finds_the_exact_top_allowed_items_while_scoring_few(n: int) -> None:
    x = _skewed_factors(n)
    index = NormOrdered.build(x)
    rng = np.random.default_rng(1)
    scored = []
    for trial in range(40):
        q = (rng.standard_normal(x.shape[1]) * 0.1 + x[trial]).astype(np.float32)  # like a user
        allowed = rng.random(n) > 0.3
        need = int(rng.integers(1, 60))
        scan = index.scan(q, allowed, need, first_block=64)
        full = x @ q
        ok = np.flatnonzero(allowed)
        want = _top(ok, full[ok], need)
        got_ok = allowed[scan.items]
        got = _top(scan.items[got_ok], scan.scores[got_ok], need)
        assert got == want  # same items, bit-identical scores
        assert scan.scores.tobytes() == full[scan.items].tobytes()  # every scored item, tail rows too
        if not scan.complete:  # no unscored item can beat `bound`, and `need` scored ones do
            assert full[~np.isin(np.arange(n), scan.items)].max() <= scan.bound
            assert np.count_nonzero(scan.scores[got_ok] > scan.bound) >= need
            # `floor`, the need-th best allowed score found, lies above the bound (the ranking
            # then picks its first candidates among the few items at or above it)
            assert scan.floor is not None and scan.floor > scan.bound
            assert np.count_nonzero(scan.scores[got_ok] >= scan.floor) >= need - ROWS  # tail bits
        assert scan.prefix and np.array_equal(scan.items, index.order[: len(scan.items)])
        scored.append(len(scan.items))
    assert np.median(scored) < n / 2  # the bound prunes: most items are never scored


def test_scan_scores_everything_when_nothing_scores_above_zero() -> None:
    x = _skewed_factors(500)
    index = NormOrdered.build(x)
    q = np.zeros(x.shape[1], dtype=np.float32)  # every item scores 0: no bound rules one out
    scan = index.scan(q, np.ones(500, dtype=bool), need=5, first_block=16)
    assert scan.complete and len(scan.items) == 500 and scan.bound is None


def test_products_over_any_rows_keep_the_full_products_bits() -> None:
    n = 10 * ROWS + 7  # a leftover tail the BLAS kernel rounds its own way
    x = np.random.default_rng(2).standard_normal((n, 64)).astype(np.float32)
    index = NormOrdered.build(x)
    rng = np.random.default_rng(3)
    for _ in range(50):
        q = rng.standard_normal(64).astype(np.float32)
        full = x @ q
        items = rng.choice(n, size=int(rng.integers(1, 40)), replace=False)
        assert np.array_equal(index.score(items, q), full[items])
    assert np.array_equal(index.score(np.arange(n - 3, n), q), full[-3:])  # the leftover rows


def test_build_refuses_what_it_cannot_score_exactly() -> None:
    with pytest.raises(ValueError, match="float32"):
        NormOrdered.build(np.ones((4, 3), dtype=np.float64))


@pytest.mark.parametrize("prefix", [256, 1003])
def test_rescan_from_a_batch_products_scores_gives_the_exact_top(prefix: int) -> None:
    # recommend_batch scores many users' longest items with one matrix product, which rounds
    # differently from a single user's matrix-vector product: those scores only choose which items
    # to score exactly, so the top `need` are still the bits of scoring everything.
    n = 1003
    x = _skewed_factors(n)
    index = NormOrdered.build(x)
    rng = np.random.default_rng(4)
    queries = (rng.standard_normal((60, x.shape[1])) * 0.1 + x[:60]).astype(np.float32)
    approx = queries @ index.factors[:prefix].T  # (queries, prefix): the batch product
    assert not np.array_equal(approx[0], index.factors[:prefix] @ queries[0])  # really other bits
    answered = 0
    for j, q in enumerate(queries):
        allowed = rng.random(n) > 0.3
        need = int(rng.integers(1, 40))
        got = index.rescan(approx[j], q, allowed, need)
        if got is None:  # the prefix cannot make the top certain: the caller scans
            assert prefix < n
            continue
        answered += 1
        full = x @ q
        assert np.array_equal(got.scores, full[got.items])  # exact bits
        assert allowed[got.items].all()
        ok = np.flatnonzero(allowed)
        assert _top(got.items, got.scores, need) == _top(ok, full[ok], need)
        rest = np.setdiff1d(ok, got.items)
        assert not len(rest) or full[rest].max() <= got.bound  # nothing unscored reaches the bound
        assert np.count_nonzero(got.scores > got.bound) >= need
        assert len(got.items) < len(ok) / 2  # only the few near the top are scored exactly
    assert answered >= (50 if prefix == n else 10)  # a short prefix leaves some to the scan


def test_a_subsets_scan_finds_the_exact_top_of_its_items_tail_rows_included() -> None:
    # A category page ranks its own items first: a scan over a subset (here half the items,
    # including the catalogue's leftover tail rows) gives its exact top with the full bits.
    n = 10 * ROWS * 8 + 11
    x = _skewed_factors(n, seed=7)
    index = NormOrdered.build(x)
    rng = np.random.default_rng(8)
    subset = np.sort(np.concatenate([rng.choice(n - 11, size=n // 2, replace=False), np.arange(n - 11, n)]))
    part = index.subset(subset)
    assert part.n == len(subset) and set(part.order.tolist()) == set(subset.tolist())
    assert np.all(np.diff(part.lengths[:-1]) <= 0)  # longest first
    for trial in range(30):
        q = (rng.standard_normal(x.shape[1]) * 0.1 + x[subset[trial]]).astype(np.float32)
        allowed = rng.random(n) > 0.2
        need = int(rng.integers(1, 40))
        scan = part.scan(q, allowed, need, first_block=32)
        full = x @ q
        assert np.isin(scan.items, subset).all() and not scan.prefix
        assert scan.scores.tobytes() == full[scan.items].tobytes()  # tail rows: the full product's bits
        ok = subset[allowed[subset]]
        got_ok = allowed[scan.items]
        assert _top(scan.items[got_ok], scan.scores[got_ok], need) == _top(ok, full[ok], need)
        if not scan.complete:
            rest = np.setdiff1d(subset, scan.items)
            assert full[rest].max() <= scan.bound
    tail_scored = part.scan(x[-1], np.ones(n, dtype=bool), need=len(subset)).items
    assert set(range(n - 11, n)) <= set(tail_scored.tolist())  # the tail rows were exercised
