"""The shop state is live: a stock, catalogue or customer change applies to the very next answer of
every channel, without a retrain (serving/state.py), on the tiny shop of tests/test_pipeline.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.pipeline import Context, Engine, EngineConfig
from serving.store import InMemoryStore
from tests.test_pipeline import IDX, NOW, ids, tiny_state, write_tiny_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("live"))


@pytest.fixture()
def engine(bundle_dir: Path) -> Engine:
    return Engine.from_bundle(bundle_dir, tiny_state(), store=InMemoryStore())


def _everywhere(engine: Engine, item: str) -> list[str]:
    """The channels where `item` still shows up (web, e-mail batch, popular, bought-together)."""
    found = []
    if item in ids(engine.recommend("carl", 12, now=NOW)):
        found.append("recommend")
    if item in ids(engine.recommend_batch(["carl", "zed"], 12, Context(channel="email"), now=NOW)["carl"]):
        found.append("recommend_batch")
    if item in ids(engine.popular(12)):
        found.append("popular")
    if item in ids(engine.bought_together(["dogfood"], 12)):
        found.append("bought_together")
    return found


def test_a_sold_out_item_leaves_every_channel_at_once_and_comes_back_when_restocked(engine: Engine) -> None:
    assert _everywhere(engine, "dogtoy") == ["recommend", "recommend_batch", "popular", "bought_together"]
    before = engine.state.current.version
    engine.state.apply("stock", [{"item_id": "dogtoy", "size": "", "quantity": 0}])
    assert engine.state.current.version > before
    assert _everywhere(engine, "dogtoy") == []
    engine.state.apply("stock", [{"item_id": "dogtoy", "size": "", "quantity": 3}])
    assert "popular" in _everywhere(engine, "dogtoy")


def test_a_size_that_sells_out_stops_showing_for_that_size_only(engine: Engine) -> None:
    assert "tee" in ids(engine.recommend("alice", 12, Context(size="M"), now=NOW))
    engine.state.apply(
        "stock",
        [{"item_id": "tee", "size": "M", "quantity": 0}, {"item_id": "tee", "size": "L", "quantity": 4}],
    )
    assert "tee" not in ids(engine.recommend("alice", 12, Context(size="M"), now=NOW))
    assert "tee" in ids(engine.popular(13, context=Context(size="L")))


def test_a_row_without_a_size_sells_a_sized_item_out_in_every_size(engine: Engine) -> None:
    """A shop selling out "the tee" sends one row without a size: gone for every size, also from
    a catalogue built from the folded table (what a restart after `features build` loads)."""
    from serving import filters as F

    assert "tee" in ids(engine.popular(13, context=Context(size="M")))
    engine.state.apply("stock", [{"item_id": "tee", "quantity": 0}])
    for size in (None, "S", "M", "L"):
        assert "tee" not in ids(engine.popular(13, context=Context(size=size))), size
    assert "tee" not in ids(engine.recommend("alice", 12, Context(size="M"), now=NOW))
    cat = engine.state.current.catalog
    table = pd.DataFrame(
        [{"item_id": "tee", "size": s, "quantity": 5} for s in ("S", "M", "L")]
        + [{"item_id": "tee", "size": "", "quantity": 0}]
    )
    rebuilt = F.build_catalog(pd.DataFrame({"item_id": list(cat.item_ids)}), table)
    i = rebuilt.index["tee"]
    assert not rebuilt.in_stock[i] and not any(m[i] for m in rebuilt.size_stock.values())
    engine.state.apply("stock", [{"item_id": "tee", "quantity": 2}])  # the item as a whole back
    assert "tee" in ids(engine.popular(13))


def test_an_inactive_item_leaves_every_answer_and_a_price_change_is_seen_by_cheaper_alternatives(
    engine: Engine,
) -> None:
    engine.state.apply("catalog", [{"item_id": "dogtoy", "active": False}])
    assert _everywhere(engine, "dogtoy") == []
    assert engine.state.items.set_index("item_id").loc["dogtoy", "title"] == "Dog toy"  # the rest is kept
    cheaper = ids(engine.similar_items("lbox_a", 5, context=Context(cheaper=True)))
    assert "lbox_new" in cheaper  # 28.0 < 30.0
    engine.state.apply("catalog", [{"item_id": "lbox_new", "price": 45.0}])
    assert "lbox_new" not in ids(engine.similar_items("lbox_a", 5, context=Context(cheaper=True)))


def test_a_new_item_is_served_at_once_through_catalogue_neighbours_and_new_in_your_category(
    engine: Engine,
) -> None:
    engine.state.apply(
        "catalog",
        [{"item_id": "catfood_new", "title": "Cat food Nova", "category": "pets/cats/food", "brand": "Paws", "price": 11.0}],
    )  # fmt: skip
    assert engine.state.current.catalog.index["catfood_new"] == 13  # appended: no index moves
    similar = engine.similar_items("catfood_new", 3)
    assert ids(similar)[0] == "catfood" and similar[0].reason == "similar to Cat food Nova"
    # alice buys cat food: the new one takes a place in her block, saying why
    block = engine.recommend("alice", 6, now=NOW)
    assert len(block) == 6
    new = [r for r in block if r.item_id == "catfood_new"]
    assert new and new[0].reason == "new in food"
    # carl has nothing to do with cats: no new cat food for him
    assert "catfood_new" not in ids(engine.recommend("carl", 6, now=NOW))
    assert engine.bought_together(["catfood_new"], 3)  # an answer, never an error
    assert engine.popular(3, category="pets/cats/food")


def test_a_withdrawn_consent_makes_the_next_answer_non_personal(engine: Engine) -> None:
    assert engine.recommend("alice", 5, now=NOW) != engine.popular(5)
    engine.state.apply("customers", [{"user_id": "alice", "consent_personalisation": False}])
    # exactly the shared block, the litter box she bought included: filtering it by her purchases
    # would be using her data to tailor it
    assert engine.recommend("alice", 5, now=NOW) == engine.popular(5)
    assert engine.record_events([{"user_id": "alice", "item_id": "tee", "event_type": "view"}]) == 0
    engine.state.apply("customers", [{"user_id": "alice", "consent_personalisation": True}])
    assert engine.recommend("alice", 5, now=NOW) != engine.popular(5)


def test_non_consenting_customers_all_get_the_same_block_for_a_context(engine: Engine) -> None:
    engine.state.apply(
        "customers",
        [{"user_id": "carl", "consent_personalisation": False}, {"user_id": "newbie", "consent_personalisation": False}],
    )  # fmt: skip
    for cx in (Context(), Context(page_category="pets/dogs"), Context(current_item="lbox_a", size="M")):
        blocks = {tuple(engine.recommend(u, 5, cx, now=NOW)) for u in ("bob", "carl", "newbie")}
        assert len(blocks) == 1 and list(blocks.pop()) == engine.popular(5, context=cx)


def test_an_item_bought_a_moment_ago_is_not_in_the_next_answer_even_when_it_is_rebought(
    engine: Engine,
) -> None:
    # cat food is a re-bought category whose window (fraction 0 of 30 days) has passed for alice:
    # it is due ("buy it again") ...
    assert "catfood" in ids(engine.recommend("alice", 8, now=NOW))
    # ... until she buys it again now: not in the very next answer, on any channel.
    engine.record_events(
        [{"user_id": "alice", "item_id": "catfood", "event_type": "purchase", "timestamp": NOW}]
    )
    assert "catfood" not in ids(engine.recommend("alice", 8, now=NOW + 0.5))
    assert "catfood" not in ids(engine.recommend_batch(["alice"], 8, now=NOW + 0.5)["alice"])


def test_stock_updates_build_new_masks_without_touching_unchanged_arrays(engine: Engine) -> None:
    cat = engine.state.current.catalog
    engine.state.apply("stock", [{"item_id": "dress", "size": "S", "quantity": 5}])
    new = engine.state.current.catalog
    assert new.prefix_items is cat.prefix_items and new.brand is cat.brand  # shared, not copied
    assert new.size_stock["S"][IDX["dress"]] and not cat.size_stock["S"][IDX["dress"]]
    assert np.array_equal(new.size_stock["M"], cat.size_stock["M"])
    # alice's learned dress size S is back in stock: the dress comes back for her
    assert "dress" in ids(engine.recommend("alice", 12, now=NOW))


def test_bad_rows_are_refused_whole_with_the_row_named(engine: Engine) -> None:
    before = engine.state.current.version
    with pytest.raises(ValueError, match="stock row 1: quantity"):
        engine.state.apply(
            "stock", [{"item_id": "tee", "size": "M", "quantity": 2}, {"item_id": "tee", "quantity": -1}]
        )
    with pytest.raises(ValueError, match="catalog row 0: price"):
        engine.state.apply("catalog", [{"item_id": "tee", "price": "cheap"}])
    with pytest.raises(ValueError, match="unknown live table"):
        engine.state.apply("orders", [{"x": 1}])
    assert engine.state.current.version == before  # nothing applied


def test_engines_of_one_state_see_the_same_change(bundle_dir: Path) -> None:
    """The champion and the challenger (or the engine before and after a hot swap) share the
    process's shop state: one update, both answer from it."""
    state = tiny_state()
    a = Engine.from_bundle(bundle_dir, state)
    b = Engine.from_bundle(bundle_dir, state, config=EngineConfig(max_per_brand=1))
    state.apply("stock", [{"item_id": "dogfood", "size": "", "quantity": 0}])
    assert "dogfood" not in ids(a.popular(10)) and "dogfood" not in ids(b.popular(10))


def test_explain_names_the_rule_that_removed_each_item(engine: Engine) -> None:
    from serving.explain import removed_items

    block = engine.recommend("alice", 4, now=NOW)
    removed = dict(removed_items(engine, "alice", 4, Context(), block, top=13, now=NOW))
    assert not set(removed) & set(ids(block))
    assert removed["leash"] == "sold out"
    assert removed["shirt"] == "not in the women's collection"
    assert removed["dress"] == "not in stock in the customer's size"  # her learned size S
    assert removed["laptop"] == "bought: not due again (re-buy policy)"
    engine.state.apply("catalog", [{"item_id": "dogtoy", "active": False}])
    block = engine.recommend("alice", 4, now=NOW)
    assert dict(removed_items(engine, "alice", 4, Context(), block, top=13, now=NOW))["dogtoy"].startswith(
        "inactive"
    )
