"""The visit's context: the planted effect in the synthetic shop, the learned lift with known answers
on hand-made visits, and the serving boost only where a lift was learned (engine level and over
real HTTP).

The tiny shop (`make_context_shop`): 100 customers, one visit each; candles (c0, c1) and mugs (m0, m1) in home.
Rainy sessions are 28 candle visits (all c0) and 12 mug visits, sunny ones 10 candle (c1) and 50 mug
visits: lift(candles | rain) = (28/40) / (38/100) = 1.842, lift(mugs | sunny) = (50/60) / (62/100)
= 1.344, both significant; every visit is on mobile in Utrecht, so device and city are never tested.
m0 and m1 (31 visits each) are more popular than c0 (28), so without context a mug leads every
block; in the rain c0 does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

CANDLES, MUGS = "home/decor/candles", "home/kitchen/mugs"


def _visits(spec: list[tuple[str, str, int]]) -> pd.DataFrame:
    """(weather, item, n sessions) -> view events, one session each, on mobile in Utrecht."""
    rows = []
    for weather, item, n in spec:
        for _ in range(n):
            s = len(rows)
            rows.append(
                dict(item_id=item, session_id=f"s{s}", weather=weather, device="mobile", city="Utrecht")
            )
    return pd.DataFrame(rows)


CATS = pd.DataFrame({"item_id": ["c0", "c1", "m0", "m1"], "category": [CANDLES, CANDLES, MUGS, MUGS]})
PLANTED = [("rain", "c0", 28), ("rain", "m0", 6), ("rain", "m1", 6), ("sunny", "c1", 10), ("sunny", "m0", 25),
           ("sunny", "m1", 25)]  # fmt: skip


def test_lift_known_answer() -> None:
    from training.context import ContextLift

    got = ContextLift.fit(_visits(PLANTED), CATS)
    assert {(x.field, x.value, x.category): x.lift for x in got.lifts} == {
        ("weather", "rain", CANDLES): pytest.approx(28 / 40 / 0.38, abs=1e-3),
        ("weather", "sunny", MUGS): pytest.approx(50 / 60 / 0.62, abs=1e-3),
    }
    assert got.tested == 4  # weather x 2 categories; device and city have one value each


def test_lift_counts_a_visit_once_and_learns_nothing_without_an_effect() -> None:
    from training.context import ContextLift

    ev = _visits(PLANTED)
    repeated = pd.concat([ev, ev[ev.item_id == "c0"]] * 3)  # the same sessions' views again
    assert [x.lift for x in ContextLift.fit(repeated, CATS).lifts] == [
        x.lift for x in ContextLift.fit(ev, CATS).lifts
    ]
    null = _visits([("rain", "c0", 20), ("rain", "m0", 30), ("sunny", "c1", 20), ("sunny", "m0", 30)])
    assert not ContextLift.fit(null, CATS)
    small = _visits([("rain", "c0", 6), ("rain", "m0", 2), ("sunny", "c1", 2), ("sunny", "m0", 10)])
    assert not ContextLift.fit(small, CATS)  # the same shares, too few visits to be sure
    assert not ContextLift.fit(ev.drop(columns=["weather", "device", "city"]), CATS)


def test_synthetic_shop_plants_rain_jackets_and_the_learner_finds_only_that(tmp_path: Path) -> None:
    from features.synthetic import ShopParams, generate
    from training.context import ContextLift

    generate(tmp_path, customers=1500, items=400, days=90, seed=5, progress=False)
    ev = pd.read_parquet(tmp_path / "events.parquet")
    cat = pd.read_parquet(tmp_path / "catalog.parquet", columns=["item_id", "category"])
    assert ev["device"].notna().all() and ev["weather"].notna().all()
    assert set(ev["weather"]) == {w for w, _ in ShopParams().weather_shares}
    # every event of a session shares its context
    assert (ev.groupby("session_id")[["device", "weather", "city"]].nunique(dropna=False) <= 1).all().all()
    got = ContextLift.fit(ev, cat)
    assert [(x.field, x.value, x.category) for x in got.lifts] == [
        ("weather", "rain", ShopParams().rain_leaf)
    ]
    assert 1.6 < got.lifts[0].lift < 2.5


# -- serving -----------------------------------------------------------------------------------------


def make_context_shop(root: Path) -> Path:
    """The tiny shop of the module docstring: raw tables + features build; returns root."""
    from features.build import build_features
    from features.config import FeatureConfig
    from features.workspace import Workspace

    now = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(days=20)
    visits = _visits(PLANTED)
    visits["user_id"] = [f"v{n}" for n in range(len(visits))]
    visits["event_type"] = "view"
    visits["timestamp"] = [now + pd.Timedelta(minutes=n) for n in range(len(visits))]
    # c1 and m1 are also bought (so the model knows every item); the others only viewed.
    extra = pd.DataFrame(
        dict(
            user_id=["v1", "v2"], item_id=["c1", "m1"], event_type="purchase", timestamp=now, session_id=None
        )
    )
    root.mkdir(parents=True, exist_ok=True)
    pd.concat([visits, extra], ignore_index=True).to_parquet(root / "events.parquet")
    pd.DataFrame(
        dict(
            item_id=["c0", "c1", "m0", "m1"],
            title=["Candle 0", "Candle 1", "Mug 0", "Mug 1"],
            category=[CANDLES, CANDLES, MUGS, MUGS],
            brand=["b"] * 4,
            price=[10.0] * 4,
        )
    ).to_parquet(root / "catalog.parquet")
    build_features(Workspace.at(root), FeatureConfig())
    return root


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_context_shop(tmp_path_factory.mktemp("context") / "shop")


def _engine(shop: Path, *, without_lift: bool = False):
    from features.workspace import Workspace
    from serving.pipeline import Engine
    from serving.state import ShopState
    from training.bundle import write_bundle
    from training.data import load_train_data
    from training.models import get_model_class

    ws = Workspace.at(shop)
    path = shop / "bundle"
    if not (path / "bundle.json").exists():
        write_bundle(get_model_class("popular")().fit(load_train_data(ws)), ws, path)
    engine = Engine.from_bundle(path, ShopState.from_workspace(ws))
    if without_lift:
        from serving.context import ContextBoost

        engine.context_lift = ContextBoost(None)
    return engine


def test_bundle_carries_the_learned_lift(shop: Path) -> None:
    from training.context import ContextLift

    _engine(shop)
    lift = ContextLift.load(shop / "bundle")
    assert {(x.value, x.category) for x in lift.lifts} == {("rain", CANDLES), ("sunny", MUGS)}


@pytest.mark.parametrize("who", ["v3", "a-visitor"])  # a known customer and a cold start
def test_rain_lifts_candles_only_where_learned(shop: Path, who: str) -> None:
    from serving.pipeline import Context
    from training.context import ContextLift, strength

    engine = _engine(shop)
    plain = engine.recommend(who, 4, Context())
    assert plain[0].item_id.startswith("m")  # mugs are the more popular
    rain = engine.recommend(who, 4, Context(weather="rain"))
    ids = [r.item_id for r in rain]
    assert ids.index("c0") < [r.item_id for r in plain].index("c0")
    c0 = {r.item_id: r for r in rain}["c0"]
    assert c0.reason == "candles: popular on rain days"
    # c0 is the most popular candle: the full boost, context_boost x log2(lift), on its plain score.
    lift = {x.category: x.lift for x in ContextLift.load(shop / "bundle").lifts}[CANDLES]
    gain = c0.score - {r.item_id: r for r in plain}["c0"].score
    assert gain == pytest.approx(engine.config.context_boost * strength(lift), abs=1e-9)
    if who == "v3":
        assert ids[0] == "c0"  # for this customer the boost carries it to the top
    # No lift learned for mobile (one value), none for fog (never seen): the plain block, bit for bit.
    assert engine.recommend(who, 4, Context(device="mobile")) == plain
    assert engine.recommend(who, 4, Context(weather="fog")) == plain
    # The same bundle without its lifts: rain changes nothing.
    assert _engine(shop, without_lift=True).recommend(who, 4, Context(weather="rain")) == plain


def test_rerank_uses_the_context_lift(shop: Path) -> None:
    from serving.pipeline import Context
    from training.context import ContextLift, strength

    engine = _engine(shop)
    given = ["m1", "m0", "c0", "c1"]
    plain = {r.item_id: r for r in engine.rerank("v3", given, Context())}
    rain = {r.item_id: r for r in engine.rerank("v3", given, Context(weather="RAIN"))}
    assert rain["c0"].reason == "candles: popular on rain days" and "rain" not in plain["c0"].reason
    lift = {x.category: x.lift for x in ContextLift.load(shop / "bundle").lifts}[CANDLES]
    want = engine.config.context_boost * strength(lift)
    assert rain["c0"].score - plain["c0"].score == pytest.approx(want, abs=1e-9)
    assert rain["m0"].score == plain["m0"].score  # no lift for mugs in the rain


@pytest.mark.server
@pytest.mark.slow
def test_context_over_http(shop: Path) -> None:
    import httpx

    from tests.test_http_live import server

    _engine(shop)  # writes the bundle (one visit per customer leaves no split to evaluate a training run on)
    with server(shop, SHOPREC_BUNDLE=str(shop / "bundle")) as url:

        def first(context: dict) -> dict:
            r = httpx.post(f"{url}/recommend", json={"user_id": "v3", "k": 4, "context": context}, timeout=10)
            assert r.status_code == 200, r.text
            return r.json()["items"][0]

        assert first({})["item_id"].startswith("m")
        rainy = first({"weather": "rain", "device": "mobile", "city": "Utrecht"})
        assert rainy["item_id"].startswith("c") and rainy["reason"] == "candles: popular on rain days"
        assert first({"device": "mobile"})["item_id"].startswith("m")
        bad = httpx.post(f"{url}/recommend", json={"user_id": "v3", "context": {"weather": 7}}, timeout=10)
        assert bad.status_code == 400 and "weather" in bad.text
