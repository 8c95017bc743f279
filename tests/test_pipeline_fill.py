"""Bought-together without a pass over the catalogue (serving.fill.Fill.rank) gives exactly the blocks
of the dense ranking: same items, order, score bits and reasons, for single items and carts.

The tiny shop of tests/test_pipeline.py is small enough to try every item and every cart of two or
three items, under each request rule (size, gender, cart, a customer's purchases) and with
tight brand / leaf caps, so the fill tiers (the parents' items, then the rest by popularity) and
the "all leaf categories of a parent are full" skip are all exercised.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from serving.pipeline import Context, Engine, EngineConfig
from serving.ranking import top_by_index as _top_by_index
from serving.state import ShopState
from tests.test_pipeline import ITEMS, STOCK, tiny_state, write_tiny_bundle


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Callable[[], ShopState]]:
    return write_tiny_bundle(tmp_path_factory.mktemp("fill")), tiny_state


def _nested_state() -> ShopState:
    """The tiny shop with a shallower tree in places: the cat toy sits in 'pets/cats' and the dog
    toy and leash in 'pets', so a cart's parents can nest ('pets' holds 'pets/cats')."""
    plain = tiny_state()
    items = plain.items.drop(columns="active")
    moved = {"cattoy": "pets/cats", "dogtoy": "pets", "leash": "pets"}
    items["category"] = [moved.get(i, c) for i, c in zip(items["item_id"], items["category"], strict=True)]
    return ShopState(
        items, stock=STOCK, customers=plain.customers, histories=plain.histories, has_customers_table=True
    )


@pytest.fixture(scope="module")
def nested(tiny: tuple[Path, Callable[[], ShopState]]) -> tuple[Path, Callable[[], ShopState]]:
    return tiny[0], _nested_state


def _engines(shop: tuple[Path, Callable[[], ShopState]], caps: int) -> tuple[Engine, Engine, dict[str, int]]:
    """(candidate-set engine, dense engine, call counts of the pruned one's paths)."""
    path, state = shop
    tight = {"max_per_brand": caps, "max_per_category": caps}
    pruned = Engine.from_bundle(path, state(), config=EngineConfig(prune_min_items=1, **tight))
    dense = Engine.from_bundle(path, state(), config=EngineConfig(prune_min_items=10**9, **tight))
    calls = {"dense": 0, "fill_walk": 0}
    fill = pruned._structure(pruned.state.current)["fill"]
    fill_vector, fill_walk = fill.vector, fill.walk

    def counted_fill_vector(*a, **kw):  # only the dense bought-together path builds the vector
        calls["dense"] += 1
        return fill_vector(*a, **kw)

    def counted_fill_walk(*a, **kw):
        calls["fill_walk"] += 1
        return fill_walk(*a, **kw)

    fill.vector = counted_fill_vector  # type: ignore[method-assign]
    fill.walk = counted_fill_walk  # type: ignore[method-assign]
    return pruned, dense, calls


@pytest.mark.parametrize(("shop", "caps"), [("tiny", 3), ("tiny", 1), ("nested", 3), ("nested", 1)])
def test_bought_together_candidate_walk_equals_dense_for_items_and_carts(
    shop: str, caps: int, request: pytest.FixtureRequest
) -> None:
    pruned, dense, calls = _engines(request.getfixturevalue(shop), caps)
    names = [row[0] for row in ITEMS]
    carts = [[x] for x in names] + [list(c) for r in (2, 3) for c in itertools.combinations(names, r)]
    contexts = [
        Context(),
        Context(size="M"),
        Context(gender="men", cart=("scoop",)),
        Context(size="S", gender="women"),
    ]
    compared = nesting = 0
    for j, cart in enumerate(carts):
        fill = pruned._structure(pruned.state.current)["fill"]
        parents = set(fill.parent_keys([pruned.state.current.catalog.index[x] for x in cart]))
        nesting += any(b.startswith(a + "/") for a in parents for b in parents)
        for k in (1, 3, 5, 13):
            cx = contexts[j % len(contexts)]
            user = ("alice", None, "carl")[j % 3]
            got = pruned.bought_together(cart, k, user, cx)
            want = dense.bought_together(cart, k, user, cx)
            assert got == want, (cart, k, user, cx)
            assert [r.score for r in got] == [r.score for r in want]  # (== on floats: same bits)
            compared += 1
    assert calls["dense"] == 0  # every answer came from the candidate walk, none from the fallback
    assert calls["fill_walk"] > compared // 4  # and the fill tiers were walked, not only complements
    assert (nesting > 0) == (shop == "nested")  # carts whose parents nest ('pets' > 'pets/cats')


def test_carts_with_repeated_parents_lift_them_once_per_source(tiny) -> None:  # noqa: ANN001
    # Two sources under pets/cats lift its items by 1.0 twice, as the dense fill vector does.
    pruned, dense, calls = _engines(tiny, 1)
    for cart in (["lbox_a", "catfood"], ["lbox_a", "lbox_b", "cattoy"], ["lbox_new", "dogtoy", "catfood"]):
        for k in (4, 8, 12):
            assert pruned.bought_together(cart, k) == dense.bought_together(cart, k)
    assert calls["dense"] == 0 and calls["fill_walk"] > 0


def test_top_by_index_takes_equal_values_at_the_cut_by_lower_index() -> None:
    # argpartition alone returns an arbitrary few of the tied values; the dense and candidate-set
    # rankings then disagree on which equal-scored complements a cart's block shows.
    values = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 3.0, 0.5, 3.0])
    assert sorted(_top_by_index(values, 3).tolist()) == [0, 2, 4]
    assert sorted(_top_by_index(values, 6).tolist()) == [0, 2, 3, 4, 5, 7]
    index = np.array([70, 10, 60, 5, 20, 30, 1, 0])  # ties by the item index given, not position
    assert sorted(index[_top_by_index(values, 2, index)].tolist()) == [0, 20]
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = rng.integers(0, 4, size=40).astype(np.float64)
        c = int(rng.integers(1, 40))
        want = np.lexsort((np.arange(40), -v))[:c]
        assert sorted(_top_by_index(v, c).tolist()) == sorted(want.tolist())
