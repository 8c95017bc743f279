"""The serving Engine on a tiny hand-built shop whose right answers are known.

The shop: cat people buy a litter box with a scoop (and cat food, again and again), dog people buy
dog food with a leash, women buy dresses and tees, men shirts and tees. The bundle is written by
hand in the layout of docs/workspace.md with real models (`itemknn` as the main model,
`bought-together` as the complements), so these tests exercise the same loading path as a
registered version.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from serving.pipeline import Context, Engine, EngineConfig, Rec  # noqa: F401 - used below
from serving.state import Customer, ShopState, histories_from_purchases
from serving.store import InMemoryStore
from training.base import TrainData
from training.policy import RebuyPolicy

try:  # the real models (training/); without them these tests cannot mean anything
    from training.models import get_model_class

    get_model_class("itemknn")
    get_model_class("bought-together")
except Exception as e:  # pragma: no cover - only while training's models are missing
    pytest.skip(f"training models unavailable: {e}", allow_module_level=True)

DAY = 86_400
NOW = 1_750_000_000.0

ITEMS = [
    # item_id, title, category, brand, price, gender
    ("lbox_a", "Litter box Deluxe", "pets/cats/litter-boxes", "Kitty", 30.0, "unisex"),
    ("lbox_b", "Litter box Basic", "pets/cats/litter-boxes", "Paws", 15.0, "unisex"),
    ("scoop", "Litter scoop", "pets/cats/litter-accessories", "Kitty", 5.0, "unisex"),
    ("catfood", "Cat food 2kg", "pets/cats/food", "Paws", 10.0, "unisex"),
    ("dogfood", "Dog food 5kg", "pets/dogs/food", "Woof", 20.0, "unisex"),
    ("dress", "Summer dress", "fashion/women/dresses", "Mode", 40.0, "women"),
    ("shirt", "Oxford shirt", "fashion/men/shirts", "Mode", 35.0, "men"),
    ("laptop", "Laptop 14", "electronics/laptops", "Tech", 900.0, "unisex"),
    ("tee", "Basic tee", "fashion/unisex/tshirts", "Mode", 15.0, "unisex"),
    ("lbox_new", "Litter box Nova", "pets/cats/litter-boxes", "Kitty", 28.0, "unisex"),
    ("cattoy", "Cat toy", "pets/cats/toys", "Paws", 4.0, "unisex"),
    ("leash", "Dog leash", "pets/dogs/accessories", "Woof", 12.0, "unisex"),
    ("dogtoy", "Dog toy", "pets/dogs/toys", "Woof", 6.0, "unisex"),
]
IDX = {row[0]: i for i, row in enumerate(ITEMS)}

# Baskets of the background customers (each basket is also that customer's history).
GROUPS = {
    "cat": [["lbox_a", "scoop"], ["lbox_b", "scoop", "catfood"], ["catfood", "cattoy"]],
    "dog": [["dogfood", "leash"], ["dogfood", "dogtoy"]],
    "women": [["dress", "tee"]],
    "men": [["shirt", "tee"]],
    "tech": [["laptop"]],
}


def _shop() -> tuple[pd.DataFrame, pd.DataFrame, list[np.ndarray], dict[str, list[str]]]:
    """(users, items, baskets, history per user)."""
    history: dict[str, list[str]] = {}
    baskets: list[np.ndarray] = []
    for group, group_baskets in GROUPS.items():
        for copy in range(4):
            for b, basket in enumerate(group_baskets):
                uid = f"{group}{copy}_{b}"
                history[uid] = list(basket)
                baskets.append(np.array([IDX[i] for i in basket]))
    # The customers under test.
    history["alice"] = ["lbox_a", "scoop", "catfood", "laptop", "dress"]
    history["bob"] = ["dogfood", "leash"]
    history["carl"] = ["shirt", "dogfood"]
    users = pd.DataFrame({"user_idx": np.arange(len(history), dtype=np.int32), "user_id": list(history)})
    items = pd.DataFrame(ITEMS, columns=["item_id", "title", "category", "brand", "price", "gender"])
    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int32))
    return users, items, baskets, history


def write_tiny_bundle(path: Path, model_name: str = "itemknn") -> Path:
    """The tiny shop's learned part as a serving bundle (docs/workspace.md layout): real itemknn
    (or `model_name`) + bought-together + the re-buy policy learned from CATEGORY_REBUY."""
    users, items, baskets, history = _shop()
    ui, sequences = _history_matrix(users, items, history)
    data = TrainData(user_items=ui, users=users, items=items, sequences=sequences, baskets=baskets)
    settings = (
        {"num_threads": 1} if model_name != "als" else {"num_threads": 1, "factors": 8, "iterations": 5}
    )
    model = get_model_class(model_name)(get_model_class(model_name).Config.from_dict(settings)).fit(data)
    comp_cls = get_model_class("bought-together")
    comp = comp_cls(comp_cls.Config.from_dict({"min_count": 2, "fallback_neighbours": 0})).fit(data)
    model.save(path / "model")
    comp.save(path / "complements")
    RebuyPolicy.from_frame(CATEGORY_REBUY).save(path / "policy")
    (path / "bundle.json").write_text(json.dumps({"model": model_name, "data_hash": "tiny", "metrics": {}}))
    return path


CATEGORY_REBUY = pd.DataFrame(
    {
        "category": ["pets/cats/food", "electronics/laptops"],
        "n_buyers": [20, 4],
        "n_repeat_buyers": [15, 0],
        "rebuy_rate": [0.75, 0.0],
        "median_interval_days": [30.0, None],
        "rebuyable": [True, False],
    }
)
STOCK = pd.DataFrame(
    [
        ("dress", "S", 0), ("dress", "M", 3), ("shirt", "M", 2), ("shirt", "L", 0),
        ("tee", "S", 0), ("tee", "M", 1), ("leash", "", 0), ("dogfood", "", 7),
    ],
    columns=["item_id", "size", "quantity"],
)  # fmt: skip


def _history_matrix(users: pd.DataFrame, items: pd.DataFrame, history: dict[str, list[str]]) -> tuple:
    rows, cols = [], []
    for u, uid in enumerate(users["user_id"]):
        for it in history[uid]:
            rows.append(u)
            cols.append(IDX[it])
    ui = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(items)))
    sequences = [np.array([IDX[i] for i in history[uid]]) for uid in users["user_id"]]
    return ui, sequences


def tiny_state() -> ShopState:
    """The tiny shop's live state: catalogue with popularity, stock, customers (bob refuses
    personalisation; alice shops women's and wears S dresses; carl shops men's) and histories
    (alice bought cat food, a laptop and a litter box 40 days before NOW)."""
    users, items, _, history = _shop()
    ui, sequences = _history_matrix(users, items, history)
    pop = np.asarray(ui.sum(axis=0)).ravel()
    catalog = items.drop(columns="item_idx").assign(n_users=pop, popularity=pop.astype(float))
    uidx = dict(zip(users["user_id"], users["user_idx"], strict=True))
    affinity = {"alice": "women", "carl": "men"}
    customers = {
        uid: Customer(int(row), uid != "bob", True, "active", affinity.get(uid)) for uid, row in uidx.items()
    }
    last = pd.DataFrame(
        {
            "user_idx": [uidx["alice"]] * 3,
            "item_idx": [IDX["catfood"], IDX["laptop"], IDX["lbox_a"]],
            "category": ["pets/cats/food", "electronics/laptops", "pets/cats/litter-boxes"],
            "last_ts": [int(NOW - 40 * DAY)] * 3,
        }
    )
    histories = histories_from_purchases(
        ui, dict(enumerate(sequences)), {uidx["alice"]: {"fashion/women/dresses": "S"}}, last
    )
    return ShopState(catalog, stock=STOCK, customers=customers, histories=histories, has_customers_table=True)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture()
def engine(bundle_dir: Path) -> Engine:
    return Engine.from_bundle(bundle_dir, tiny_state(), store=InMemoryStore(), model_version="v7")


def ids(recs: list[Rec]) -> list[str]:
    return [r.item_id for r in recs]


def test_engine_loads_and_reports_health(engine: Engine) -> None:
    h = engine.health()
    assert h["items"] == len(ITEMS)
    assert h["store"].startswith("memory ok")
    assert h["model"] == "itemknn" and h["model_version"] == "v7" and h["complements"] is True
    assert engine.model_version == "v7"


def test_purchases_stay_out_for_their_window_and_staples_come_back_with_buy_it_again(
    engine: Engine, bundle_dir: Path, tmp_path: Path
) -> None:
    # Alice bought cat food, a laptop and a litter box 40 days ago. Cat food is re-bought every
    # ~30 days: back, "buy it again". Laptops and litter boxes are not rebuyable categories: never.
    recs = engine.recommend("alice", 8, now=NOW)
    by_id = {r.item_id: r for r in recs}
    assert "catfood" in by_id and by_id["catfood"].reason == "buy it again"
    assert "laptop" not in by_id and "lbox_a" not in by_id
    # training.policy's default window is 0 (a staple may come back at once): five days after the
    # purchase the cat food is already back, the laptop still out.
    soon = {r.item_id: r.reason for r in engine.recommend("alice", 8, now=NOW - 35 * DAY)}
    assert soon.get("catfood") == "buy it again" and "laptop" not in soon
    # A shop's cooling-off window (half the median interval, 15 days) keeps it out for now: the
    # policy is the bundle's (learned), the purchases the shop state's.
    import shutil

    shutil.copytree(bundle_dir, tmp_path / "cooling")
    RebuyPolicy.from_frame(CATEGORY_REBUY, window_fraction=0.5).save(tmp_path / "cooling" / "policy")
    cooling = Engine.from_bundle(tmp_path / "cooling", tiny_state(), store=InMemoryStore())
    soon = ids(cooling.recommend("alice", 8, now=NOW - 35 * DAY))
    assert "catfood" not in soon and "laptop" not in soon
    assert "catfood" in ids(cooling.recommend("alice", 8, now=NOW - 20 * DAY))  # 20 days > 15


def test_stock_size_and_gender_rules_apply_to_the_block(engine: Engine) -> None:
    everything = ids(engine.recommend("alice", 12, now=NOW))
    assert "shirt" not in everything  # men-only, she shops women's (learned affinity)
    assert "leash" not in everything  # sold out
    assert "dress" not in everything  # her learned dress size S is sold out
    with_m = ids(engine.recommend("alice", 12, Context(size="M"), now=NOW))
    assert "dress" in with_m  # size M is in stock; the request's size wins
    assert "tee" in with_m
    with_s = ids(engine.recommend("alice", 12, Context(size="S"), now=NOW))
    assert "tee" not in with_s and "dress" not in with_s  # both sold out in S
    carl = ids(engine.recommend("carl", 12, now=NOW))
    assert "dress" not in carl and "leash" not in carl
    # An explicit gender in the request beats the learned affinity.
    assert "shirt" not in ids(engine.recommend("carl", 12, Context(gender="women"), now=NOW))


def test_cached_context_masks_are_the_rules_own_and_private_to_each_request(engine: Engine) -> None:
    from serving import filters as F

    snap = engine.state.current
    cat = snap.catalog
    cases = [(None, "alice"), (None, "carl"), ("M", "alice"), ("S", None), (None, None)]
    for _ in range(2):  # the second pass answers from the cache
        for size, uid in cases:
            user = engine._customer(uid)
            mask = engine._context_mask(snap, Context(size=size), user)
            learned = engine.state.histories.sizes.get(user.row) if user is not None and not size else None
            want = F.stock_mask(cat, size=size, sizes_by_garment=learned)
            gender = F.resolve_gender(None, user.gender_affinity if user is not None else None)
            if gender in ("women", "men"):
                want &= F.gender_mask(cat, gender)
            np.testing.assert_array_equal(mask, want)
            assert mask.flags.writeable
            mask[:] = False  # a request excludes its cart in place: the next one must not see it
    assert engine._context_mask(snap, Context(), None).all() == F.stock_mask(cat).all()
    assert len(snap.masks) == len(cases)


def test_plain_popular_blocks_are_kept_per_k_segment_and_context(engine: Engine) -> None:
    snap = engine.state.current
    contexts = [Context(), Context(gender="men"), Context(size="S"), Context(size="M", gender="women")]
    for _ in range(2):  # the second pass answers from the kept blocks
        for cx in contexts:
            for k, segment in ((3, None), (8, None), (8, "active"), (8, "unknown-segment")):
                got = engine.popular(k, segment=segment, context=cx)
                assert got == engine._rank_popular(snap, k, segment, None, cx, None, [])
                got.clear()  # the caller's list is its own
    assert len(snap.popular_blocks) == len(contexts) * 3  # an unknown segment is no segment
    # a cold-start customer with a session is ranked afresh: the views boost their neighbours
    engine.record_events([{"user_id": "new-1", "item_id": "dogfood", "event_type": "view", "timestamp": NOW}])
    fresh = engine.recommend("new-1", 5, now=NOW)
    assert fresh == engine._rank_popular(
        snap, 5, "new", None, Context(), None, engine.store.recent("new-1", 50)
    )
    assert len(snap.popular_blocks) == len(contexts) * 3  # (that block is not kept)


def test_sparse_boosts_add_and_read_back_as_a_dense_array_would() -> None:
    from serving.ranking import Boost

    rng = np.random.default_rng(3)
    dense, sparse = np.zeros(50), Boost()
    for step in range(20):
        ids_ = rng.integers(0, 50, size=int(rng.integers(0, 8)))  # repeats within one add, too
        vals = (rng.random(len(ids_)) * 0.5).astype(np.float32 if step % 2 else np.float64)
        dense[ids_] += vals
        sparse.add(ids_, vals)
        if step % 5 == 0:
            dense[ids_[:2]] += 0.3  # the re-buy boost: one scalar
            sparse.add(ids_[:2], 0.3)
    items = np.arange(50)
    assert sparse.at(items).tobytes() == dense.tobytes()  # same bits
    some = np.array([2, 7, 30, 49])
    assert sparse.at(some).tobytes() == dense[some].tobytes()
    np.testing.assert_array_equal(sparse.nonzero(), np.sort(np.flatnonzero(dense)))
    assert Boost().at(some).tobytes() == np.zeros(4).tobytes()


def test_block_is_full_whenever_enough_items_are_eligible(engine: Engine) -> None:
    # 13 items: alice loses laptop, lbox_a (purchased), leash (stock), dress (size), shirt (gender).
    # With the diversity cap raised nothing else removes items, so exactly 8 remain.
    loose = Engine(engine.bundle, tiny_state(), config=EngineConfig(max_per_brand=10, max_per_category=10))
    assert len(loose.recommend("alice", 8, now=NOW)) == 8
    assert len(loose.recommend("alice", 20, now=NOW)) == 8  # k larger than what is eligible
    # With the default cap (3 per brand) the Paws/Kitty/Mode/Woof brands still fill 8.
    assert len(engine.recommend("alice", 8, now=NOW)) == 8


def test_diversity_caps_brands_and_leaf_categories_per_block(engine: Engine) -> None:
    strict = Engine(engine.bundle, tiny_state(), config=EngineConfig(max_per_brand=1, max_per_category=1))
    recs = strict.recommend("zed", 10)
    brands = [ITEMS[IDX[r.item_id]][3] for r in recs]
    leaves = [ITEMS[IDX[r.item_id]][2] for r in recs]
    assert len(brands) == len(set(brands)) and len(leaves) == len(set(leaves))
    assert len(recs) == 5  # one item of each of the five brands, then the order runs out


def test_litter_box_page_shows_the_scoop_not_dog_food(engine: Engine) -> None:
    for user in ("zed", "carl"):  # unknown user and a dog/men customer alike
        recs = engine.recommend(user, 5, Context(current_item="lbox_a"), now=NOW)
        got = ids(recs)
        assert got[0] == "scoop", (user, got)
        assert recs[0].reason == "bought together with Litter box Deluxe"
        assert "lbox_a" not in got
        cat_items = [i for i in got if ITEMS[IDX[i]][2].startswith("pets/cats")]
        assert got[: len(cat_items)] == cat_items  # cat things before anything else
        assert "dogfood" not in got[:3]


def test_category_page_puts_that_part_of_the_tree_first_and_skips_the_cart(engine: Engine) -> None:
    recs = engine.recommend("carl", 4, Context(page_category="pets/cats", cart=("scoop",)), now=NOW)
    got = ids(recs)
    assert all(ITEMS[IDX[i]][2].startswith("pets/cats") for i in got[:3])
    assert "scoop" not in got


def test_no_consent_gets_exactly_the_non_personal_answer_and_no_events_are_kept(engine: Engine) -> None:
    for ctx in (Context(), Context(current_item="lbox_a"), Context(page_category="pets", size="M")):
        assert engine.recommend("bob", 5, ctx, now=NOW) == engine.popular(5, context=ctx)
    stored = engine.record_events([{"user_id": "bob", "item_id": "dogfood", "event_type": "view"}])
    assert stored == 0 and engine.store.recent("bob") == []


def test_unknown_user_gets_popular_for_context_and_segment(engine: Engine) -> None:
    recs = engine.recommend("nobody-knows-me", 3)
    assert recs == engine.popular(3, segment="new")
    assert ids(recs)[0] == "dogfood"  # the most bought item of the shop (10 buyers)
    assert recs[0].reason == "popular in food"
    assert all(r.reason.startswith("popular in") for r in recs)
    dog = engine.popular(3, category="pets/dogs")
    assert set(ids(dog)) <= {"dogfood", "dogtoy"}  # leash is sold out
    assert dog[0].reason == "popular in dogs"


def test_a_purchase_event_is_excluded_from_the_very_next_answer(engine: Engine) -> None:
    top = ids(engine.recommend("carl", 3, now=NOW))[0]
    assert (
        engine.record_events(
            [{"user_id": "carl", "item_id": top, "event_type": "purchase", "timestamp": NOW}]
        )
        == 1
    )
    assert top not in ids(engine.recommend("carl", 10, now=NOW))
    # Its complements are lifted and say why.
    after = engine.recommend("carl", 10, now=NOW)
    assert any(r.reason.startswith("bought together with") for r in after)


def test_recent_views_rerank_the_next_answer(engine: Engine) -> None:
    before = ids(engine.recommend("zed", 13))
    engine.record_events([{"user_id": "zed", "item_id": "dogfood", "event_type": "view"}])
    after = engine.recommend("zed", 13)
    # Dog things move up; the reason names the viewed item.
    assert ids(after).index("dogtoy") < before.index("dogtoy")
    assert next(r for r in after if r.item_id == "dogtoy").reason == "because you viewed Dog food 5kg"


def test_bought_together_for_an_item_and_for_a_cart(engine: Engine) -> None:
    one = engine.bought_together(["lbox_a"], 2)
    assert ids(one)[0] == "scoop" and one[0].reason == "bought together with Litter box Deluxe"
    cart = engine.bought_together(["lbox_a", "catfood", "dogfood"], 5)
    got = ids(cart)
    assert not {"lbox_a", "catfood", "dogfood"} & set(got)  # never the cart items themselves
    assert "scoop" in got and "dogtoy" in got  # complements of everything in it
    assert "leash" not in got  # the dog food complement is sold out
    assert len(got) == 5  # a short complement list is filled with popular items
    # Unknown ids are not an error; with no known id the answer is popular.
    assert engine.bought_together(["nope", "lbox_a"], 2) == one
    assert engine.bought_together(["nope"], 3) == engine.popular(3)


def test_similar_items_cheaper_alternatives_new_and_unknown_items(engine: Engine) -> None:
    cheaper = engine.similar_items("lbox_a", 5, context=Context(cheaper=True))
    prices = [ITEMS[IDX[r.item_id]][4] for r in cheaper]
    assert len(cheaper) == 5 and max(prices) < 30.0
    assert cheaper[0].reason == "a cheaper alternative to Litter box Deluxe"
    budget = engine.similar_items("lbox_a", 5, context=Context(max_price=10.0))
    assert budget and all(ITEMS[IDX[r.item_id]][4] <= 10.0 for r in budget)
    # A new item without interactions: catalogue neighbours (same leaf and brand first).
    new = engine.similar_items("lbox_new", 3)
    assert ids(new)[0] == "lbox_a" and new[0].reason == "similar to Litter box Nova"
    assert engine.similar_items("no-such-item", 3) == engine.popular(3)


def test_forget_erases_the_store_and_stops_personalising(engine: Engine) -> None:
    engine.record_events([{"user_id": "alice", "item_id": "tee", "event_type": "view"}])
    assert engine.store.recent("alice")
    engine.forget("alice")
    assert engine.store.recent("alice") == []
    assert engine.recommend("alice", 4, now=NOW) == engine.popular(4, segment="new")
    assert engine.record_events([{"user_id": "alice", "item_id": "tee", "event_type": "view"}]) == 0


def test_every_item_carries_a_readable_reason_and_batch_equals_single(engine: Engine) -> None:
    users = ["alice", "bob", "carl", "zed", "cat0_0"]
    batch = engine.recommend_batch(users, 5, Context(channel="email"))
    assert list(batch) == users
    for u in users:
        assert batch[u] == engine.recommend(u, 5, Context(channel="email"))
        assert all(r.reason and "<" not in r.reason for r in batch[u])
        scores = [r.score for r in batch[u]]
        assert scores == sorted(scores, reverse=True)


def test_bad_input_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(ValueError, match="k must be between 1"):
        engine.recommend("alice", 0)
    with pytest.raises(ValueError, match="k must be an integer"):
        engine.popular("5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event 1: event_type"):
        engine.record_events([{"user_id": "u", "item_id": "a", "event_type": "view"},
                              {"user_id": "u", "item_id": "a", "event_type": "like"}])  # fmt: skip
    with pytest.raises(ValueError, match="unknown config key.*EngineConfig"):
        EngineConfig.from_dict({"max_per_brnad": 2})


def _dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_engine_keeps_answering_when_redis_is_gone(bundle_dir: Path) -> None:
    from serving.store import RedisStore

    engine = Engine.from_bundle(
        bundle_dir, tiny_state(), store=RedisStore(f"redis://127.0.0.1:{_dead_port()}/0")
    )
    recs = engine.recommend("carl", 4, now=NOW)
    assert len(recs) == 4  # the answer without the newest events
    assert engine.record_events([{"user_id": "carl", "item_id": "tee", "event_type": "purchase"}]) == 0
    assert engine.health()["store"].startswith("redis unreachable")


@pytest.mark.services
def test_a_purchase_through_real_redis_changes_the_next_answer_on_another_replica(bundle_dir: Path) -> None:
    import uuid

    from serving.store import RedisStore

    store = RedisStore("redis://127.0.0.1:6379/0", prefix=f"shoprec-test-{uuid.uuid4().hex[:12]}")
    if not store.health().startswith("redis ok"):
        pytest.skip(f"no Redis at 127.0.0.1:6379 ({store.health()})")
    try:
        a = Engine.from_bundle(bundle_dir, tiny_state(), store=store)
        b = Engine.from_bundle(bundle_dir, tiny_state(), store=RedisStore(store.url, prefix=store.prefix))
        top = ids(b.recommend("carl", 3, now=NOW))[0]
        assert a.record_events([{"user_id": "carl", "item_id": top, "event_type": "purchase"}]) == 1
        assert top not in ids(b.recommend("carl", 10, now=NOW))
        assert a.health()["store"] == "redis ok"
        # /forget on one replica: the other stops personalising and keeps no new events.
        c = Engine.from_bundle(
            bundle_dir, tiny_state(), store=RedisStore(store.url, prefix=store.prefix, forgotten_refresh_s=0)
        )
        assert c.recommend("carl", 4, now=NOW) != c.popular(4, segment="new")
        a.forget("carl")
        assert c.recommend("carl", 4, now=NOW) == c.popular(4, segment="new")
        assert c.record_events([{"user_id": "carl", "item_id": top, "event_type": "view"}]) == 0
    finally:
        for key in store._client.scan_iter(f"{store.prefix}:*"):  # every key this test wrote
            store._client.delete(key)


def test_items_added_after_training_are_mapped_not_shifted(tmp_path: Path) -> None:
    # The shop state lists an item the model was not trained on, *first*, so every state index
    # differs from the model's (another feature build's order): scores must follow the ids, and
    # the new item gets catalogue neighbours.
    users, items, _, history = _shop()
    ui, sequences = _history_matrix(users, items, history)
    plain_state = tiny_state()
    fresh = pd.DataFrame([{"item_id": "lbox_x", "title": "Litter box X", "category": "pets/cats/litter-boxes",
                           "brand": "Kitty", "price": 29.0, "gender": "unisex", "n_users": 0, "popularity": 0.0}])  # fmt: skip
    catalog = pd.concat([fresh, plain_state.items.drop(columns="active")], ignore_index=True)
    h = plain_state.histories
    shifted_h = histories_from_purchases(
        sp.hstack([sp.csr_matrix((ui.shape[0], 1), dtype=np.float32), ui]).tocsr(),
        {u: s + 1 for u, s in h.sequences.items()},
        h.sizes,
        pd.DataFrame(
            {"user_idx": h.p_row, "item_idx": h.p_item + 1, "category": h.p_category, "last_ts": h.p_ts}
        ),
    )
    state = ShopState(
        catalog, stock=STOCK, customers=plain_state.customers, histories=shifted_h, has_customers_table=True
    )
    d = write_tiny_bundle(tmp_path / "b")
    shifted = Engine.from_bundle(d, state)
    plain = Engine.from_bundle(d, tiny_state())
    assert not shifted.items.identity  # the mapping path is the one under test
    for user in ("alice", "carl"):
        a = [r for r in shifted.recommend(user, 6, now=NOW) if r.item_id != "lbox_x"]
        b = plain.recommend(user, 6, now=NOW)
        assert ids(a) == ids(b)[: len(a)]
    assert shifted.bought_together(["lbox_a"], 1)[0].item_id == "scoop"
    new = shifted.similar_items("lbox_x", 2)
    assert ids(new)[0] in {"lbox_a", "lbox_new"} and new[0].reason == "similar to Litter box X"


def test_precomputed_complements_are_the_complements_models_own(engine: Engine) -> None:
    # The engine precomputes every item's bought-together list from the sparse similarity at load;
    # each must hold what the model's similar_items gives for that item (best first, scores > 0).
    assert engine.complements.precomputed  # the precomputed path is the one under test
    for i in range(engine.state.current.n):
        ids_t, sc_t = engine.complements.of(i)
        got = engine.complements.batch(np.array([i]))[0]  # model.similar_items for this one item
        ids_m, sc_m = (got[0][got[1] > 0], got[1][got[1] > 0]) if got is not None else ([], [])
        assert sorted(zip(ids_t.tolist(), sc_t.tolist(), strict=True)) == sorted(
            zip(ids_m.tolist(), sc_m.tolist(), strict=True)
        )
        assert list(sc_t) == sorted(sc_t, reverse=True) and (sc_t > 0).all() and i not in ids_t
    assert engine.state.current.catalog.item_ids[engine.complements.of(IDX["lbox_a"])[0][0]] == "scoop"


def test_factor_model_fast_path_answers_exactly_as_the_model_scores(tmp_path: Path) -> None:
    # For ALS the engine scores a known user with one product over the item factors instead of
    # asking model.score with a sparse history row; every answer must be the same, events included.
    engine = Engine.from_bundle(
        write_tiny_bundle(tmp_path / "als", "als"), tiny_state(), store=InMemoryStore()
    )
    assert engine.scorer.user_factors is not None  # the fast path is the one under test
    reference = Engine.from_bundle(tmp_path / "als", tiny_state(), store=engine.store)
    reference.scorer.user_factors = None  # model.score with the history row, as for any other model
    engine.record_events([{"user_id": "carl", "item_id": "lbox_a", "event_type": "view", "timestamp": NOW}])
    contexts = [
        Context(),
        Context(page_category="pets"),
        Context(current_item="lbox_a"),
        Context(cart=("scoop",)),
    ]
    background = next(u for u in engine.state.customers if u not in ("alice", "bob", "carl"))
    for user in ("alice", "carl", background, "a-new-customer"):
        for cx in contexts:
            assert engine.recommend(user, 5, cx, now=NOW) == reference.recommend(user, 5, cx, now=NOW)
    assert len(engine.recommend("alice", 5, now=NOW)) == 5


@pytest.mark.slow
def test_engine_serves_a_real_bundle_from_the_synthetic_shop(tmp_path: Path) -> None:
    """End to end over the other stages' real code: synthetic shop -> features -> itemknn ->
    training.bundle.write_bundle -> Engine. Checks rules that hold whatever the model learned."""
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from features.workspace import Workspace
    from training.bundle import write_bundle
    from training.data import load_train_data

    ws = Workspace.at(tmp_path / "shop")
    generate(ws.root, customers=300, items=200, days=60, seed=3, progress=False)
    build_features(ws, FeatureConfig())
    data = load_train_data(ws)
    model = get_model_class("itemknn")(get_model_class("itemknn").Config.from_dict({"num_threads": 1})).fit(
        data
    )
    state = ShopState.from_workspace(ws)
    engine = Engine.from_bundle(
        write_bundle(model, ws, tmp_path / "bundle", data=data), state, model_version="e2e"
    )
    assert engine.health()["rebuy_policy"] is True and engine.health()["complements"] is True

    stock = pd.read_parquet(ws.validated("stock"))
    sold_out = set(stock.groupby("item_id")["quantity"].sum().loc[lambda q: q == 0].index)
    consenting = [u for u, c in state.customers.items() if c.consent and c.row >= 0][:60]
    refusing = [u for u, c in state.customers.items() if not c.consent][:5]
    assert consenting and refusing
    reasons = []
    for uid in consenting:
        recs = engine.recommend(uid, 10)
        assert len(recs) == 10 and not sold_out & set(ids(recs))
        reasons += [r.reason for r in recs]
    assert any(r == "buy it again" for r in reasons)  # the shop plants re-bought consumables
    assert any(r.startswith("because you viewed") for r in reasons)
    for uid in refusing:
        assert engine.recommend(uid, 5) == engine.popular(5)
    top = engine.popular(1)[0].item_id
    together = engine.bought_together([top], 5)
    assert len(together) == 5 and top not in ids(together)


@pytest.mark.slow
def test_pruned_factor_scoring_gives_exactly_the_blocks_of_scoring_every_item(als_shop) -> None:
    """serving/mips.py on a real ALS bundle: with pruning on for any catalogue, every block (page
    contexts, carts, size and gender rules, fresh views and purchases that boost and exclude; the
    cold-start popular block; bought-together with its popular fill) is the block of the engine
    that ranks all items, while most requests score far fewer items."""
    for caps in (3, 1):  # 1 per brand and leaf: short blocks that must fetch past full groups
        _check_pruned_equals_dense(als_shop, caps)


def _check_pruned_equals_dense(shop, caps: int) -> None:  # noqa: ANN001 - conftest.Shop
    from serving.fill import Fill

    path = shop.bundle
    tight = {"max_per_brand": caps, "max_per_category": caps}
    pruned = Engine.from_bundle(
        path, shop.state(), config=EngineConfig(prune_min_items=1, prune_block=32, **tight)
    )
    dense = Engine.from_bundle(path, shop.state(), config=EngineConfig(prune_min_items=10**9, **tight))
    assert pruned.scorer.by_length is not None and dense.scorer.by_length is None
    fallbacks = []  # bought-together answers the candidate walk left to the dense ranking
    fill = pruned._structure(pruned.state.current)["fill"]
    fill_vector = fill.vector
    fill.vector = lambda src: fallbacks.append(src) or fill_vector(src)  # type: ignore[method-assign]
    assert isinstance(fill, Fill)

    catalog = pruned.state.current.catalog
    items = catalog.item_ids.astype(str)
    users = shop.user_ids[:120]
    users += [f"new-{j}" for j in range(30)]  # cold start: the popular block, with fresh events
    cats = catalog.categories
    contexts = [
        Context(),
        Context(cart=(items[3], items[40])),
        Context(current_item=items[7]),
        Context(size="M", gender="women"),
        Context(page_category=cats[11].rsplit("/", 1)[0]),
    ]
    # Item and category pages rank their part of the catalogue first (tiers): their own scans.
    pages = [
        lambda j: Context(current_item=items[(j * 37) % len(items)]),
        lambda j: Context(page_category=cats[(j * 41) % len(items)].rsplit("/", 1)[0]),
        lambda j: Context(page_category=cats[(j * 43) % len(items)].split("/", 1)[0], size="M"),
        lambda j: Context(current_item=items[(j * 47) % len(items)], cart=(items[j % len(items)],)),
    ]
    page_blocks = []  # page blocks the page scans answered (not the dense ranking)
    page_rank = pruned.scorer._page_rank

    def counting_page_rank(*args):  # type: ignore[no-untyped-def]
        out = page_rank(*args)
        page_blocks.append(len(out))
        return out

    pruned.scorer._page_rank = counting_page_rank  # type: ignore[method-assign]
    scanned = []
    for j, uid in enumerate(users):
        if j % 3 == 0:  # fresh events: views boost neighbours, a purchase is excluded
            events = [
                {"user_id": uid, "item_id": items[(j * 7) % len(items)], "event_type": "view", "timestamp": NOW},
                {"user_id": uid, "item_id": items[(j * 13) % len(items)], "event_type": "purchase",
                 "timestamp": NOW + 1},
            ]  # fmt: skip
            assert pruned.record_events(events) == dense.record_events(events)
        for k in (10, 60):
            cx = contexts[j % len(contexts)]
            assert pruned.recommend(uid, k, cx, now=NOW) == dense.recommend(uid, k, cx, now=NOW)
            cx = pages[j % len(pages)](j)
            assert pruned.recommend(uid, k, cx, now=NOW) == dense.recommend(uid, k, cx, now=NOW)
        it = items[(j * 31) % len(items)]
        assert pruned.bought_together([it], 10, uid) == dense.bought_together([it], 10, uid)
        cart = [it, items[(j * 17) % len(items)], items[(j * 29 + 5) % len(items)]][: 2 + j % 2]
        for k in (10, 40):  # k=40: past the complements, into the parents' and popular items
            assert pruned.bought_together(cart, k, uid) == dense.bought_together(cart, k, uid)
        assert pruned.popular(10, segment="active") == dense.popular(10, segment="active")
        midx = pruned.scorer.user_index(uid)
        if midx >= 0:
            allowed = np.ones(catalog.n, dtype=bool)
            scanned.append(
                len(pruned.scorer.by_length.scan(pruned.scorer.user_factors[midx], allowed, 40, 32).items)
            )
    assert np.median(scanned) < 0.7 * catalog.n  # the pruning is real, not a full scan
    assert len(page_blocks) >= 50  # page contexts took their own scans, not only the dense path
    assert fallbacks == []
