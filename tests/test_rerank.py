"""Social proof and `/rerank` on a tiny shop whose right answers are known, at the engine level
(the same over real HTTP: tests/test_rerank_live.py).

The shop (`make_rerank_shop`): jeans of two brands, Acme (j0, j1) and Zed (j2, j3), and a lamp (j4,
Zed). Zed is what everybody buys (u1..u6), so popularity puts j2 first; customer `fan` bought two
Acme tops (t0, t1) in size M only. Stock: j0 in size M, j1 only in L, j2 in M, j3 sold out, j4
unsized in stock; of two new tops, Acme's t2 only in L and Zed's t3 only in M.
`private` bought the same as `fan` but gave no consent for personalisation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_rerank_shop(root: Path, now: pd.Timestamp | None = None) -> Path:
    """Raw tables + features build (no model) of the shop described above; returns root."""
    from features.build import build_features
    from features.config import FeatureConfig
    from features.workspace import Workspace

    now = now if now is not None else pd.Timestamp.now(tz="UTC").floor("s")
    old = now - pd.Timedelta(days=30)
    rows = []

    def buy(user: str, item: str, when: pd.Timestamp, size: str | None = None) -> None:
        rows.append(
            dict(user_id=user, item_id=item, event_type="purchase", quantity=1, order_id=f"o{len(rows)}",
                 timestamp=when, size=size)
        )  # fmt: skip

    for u in range(1, 7):
        buy(f"u{u}", "j2", old + pd.Timedelta(hours=u), "M")
        buy(f"u{u}", "j3", old + pd.Timedelta(hours=u, minutes=5), "L")
        buy(f"u{u}", "j4", old + pd.Timedelta(hours=u, minutes=9))
    for u in range(1, 3):
        buy(f"u{u}", "j0", old + pd.Timedelta(days=1, hours=u), "M")
        buy(f"u{u}", "j1", old + pd.Timedelta(days=1, hours=u), "L")
    for who in ("fan", "private"):
        buy(who, "t0", old + pd.Timedelta(days=2), "M")
        buy(who, "t1", old + pd.Timedelta(days=3), "M")
    # Five customers bought the lamp l0 two days ago, four bought the mug m0: social proof at start.
    for u in range(1, 6):
        buy(f"u{u}", "l0", now - pd.Timedelta(days=2))
    for u in range(1, 5):
        buy(f"u{u}", "m0", now - pd.Timedelta(days=2))
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "events.parquet")
    items = ["j0", "j1", "j2", "j3", "j4", "t0", "t1", "l0", "m0", "t2", "t3"]
    pd.DataFrame(
        dict(
            item_id=items,
            title=["Acme jeans 0", "Acme jeans 1", "Zed jeans 2", "Zed jeans 3", "Zed lamp", "Acme top 0",
                   "Acme top 1", "Lamp", "Mug", "Acme top 2", "Zed top 3"],
            category=["fashion/jeans"] * 4 + ["home/lamps"] + ["fashion/tops"] * 2 + ["home/lamps", "home/mugs"]
            + ["fashion/tops"] * 2,
            brand=["Acme", "Acme", "Zed", "Zed", "Zed", "Acme", "Acme", "Nova", "Nova", "Acme", "Zed"],
            price=[50.0, 50.0, 50.0, 50.0, 20.0, 20.0, 20.0, 30.0, 8.0, 20.0, 20.0],
        )
    ).to_parquet(root / "catalog.parquet")  # fmt: skip
    stock = [("j0", "M", 5), ("j0", "L", 0), ("j1", "M", 0), ("j1", "L", 5), ("j2", "M", 5), ("j2", "L", 5),
             ("j3", "M", 0), ("j3", "L", 0), ("j4", "", 9), ("t0", "M", 3), ("t1", "M", 3), ("l0", "", 9),
             ("m0", "", 9), ("t2", "M", 0), ("t2", "L", 4), ("t3", "M", 4), ("t3", "L", 0)]  # fmt: skip
    pd.DataFrame(stock, columns=["item_id", "size", "quantity"]).to_parquet(root / "stock.parquet")
    users = [f"u{u}" for u in range(1, 7)] + ["fan", "private"]
    pd.DataFrame(
        dict(
            user_id=users,
            consent_personalisation=[True] * 7 + [False],
            consent_email=[True] * 8,
        )
    ).to_parquet(root / "customers.parquet")
    build_features(Workspace.at(root), FeatureConfig())
    return root


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    from features.workspace import Workspace
    from serving.pipeline import Engine
    from serving.state import ShopState
    from training.bundle import write_bundle
    from training.data import load_train_data
    from training.models import get_model_class

    root = make_rerank_shop(tmp_path_factory.mktemp("rerank") / "shop")
    ws = Workspace.at(root)
    model = get_model_class("popular")().fit(load_train_data(ws))
    path = write_bundle(model, ws, root / "bundle")
    return Engine.from_bundle(path, ShopState.from_workspace(ws))


GIVEN = ["j2", "j3", "j1", "nope-42", "j0", "j4", "j2"]


def test_rerank_keeps_every_item_once_and_puts_the_customers_brand_in_their_size_first(engine) -> None:
    from serving.pipeline import Context

    recs = engine.rerank("fan", GIVEN, Context(size="M"))
    ids = [r.item_id for r in recs]
    assert sorted(ids) == sorted(set(GIVEN))  # every given item, the repeat once
    assert ids[0] == "j0", recs  # Acme (fan's brand), in stock in M, beats the more popular Zed
    assert recs[0].reason == "a brand you buy: Acme"
    # Allowed items, then the unknown id, then what the rules would remove (in the shop's order).
    assert ids[3:] == ["nope-42", "j3", "j1"]
    why = {r.item_id: r.reason for r in recs}
    assert why["j3"] == "sold out: kept at the end"
    assert why["j1"] == "sold out in your size: kept at the end"
    assert why["nope-42"] == "not in the catalogue yet"
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)


def test_rerank_without_consent_is_the_popular_order(engine) -> None:
    from serving.pipeline import Context

    recs = engine.rerank("private", GIVEN, Context(size="M"))
    ids = [r.item_id for r in recs]
    # Popularity: j2 and j4 (six buyers each; ties keep the shop's order) before j0 (two); no brand.
    assert ids[:3] == ["j2", "j4", "j0"]
    assert not any("brand" in r.reason for r in recs)
    assert engine.rerank("someone-new", GIVEN, Context(size="M"))[:3] == recs[:3]


def test_rerank_size_counts(engine) -> None:
    """In size L, Acme's j1 is the one in stock (first, fan's brand) and j0 goes to the end."""
    from serving.pipeline import Context

    recs = engine.rerank("fan", ["j0", "j1", "j2"], Context(size="L"))
    assert [r.item_id for r in recs] == ["j1", "j2", "j0"]
    assert recs[-1].reason == "sold out in your size: kept at the end"


def test_rerank_learned_size_without_one_in_the_request(engine) -> None:
    """fan bought tops in M: Zed's top in M comes first, fan's own brand's top (only in L) last."""
    from serving.pipeline import Context

    recs = engine.rerank("fan", ["t2", "t3"], Context())
    assert [(r.item_id, r.reason) for r in recs] == [
        ("t3", "in your size M"),
        ("t2", "sold out in your size: kept at the end"),
    ]
    assert [r.item_id for r in engine.rerank("fan", ["t2", "t3"], Context(size="L"))] == ["t2", "t3"]


def test_rerank_puts_an_item_just_bought_last(engine) -> None:
    from serving.pipeline import Context

    t = pd.Timestamp.now(tz="UTC").timestamp()
    engine.record_events([{"user_id": "fan", "item_id": "j2", "event_type": "purchase", "timestamp": t}])
    recs = engine.rerank("fan", ["j2", "j4"], Context())
    assert [r.item_id for r in recs] == ["j4", "j2"]
    assert recs[-1].reason == "already bought: kept at the end"


# -- social proof ------------------------------------------------------------------------------------


def test_purchase_counts_threshold_window_and_one_per_customer() -> None:
    from serving.social import PurchaseCounts

    now = 1_000_000.0
    c = PurchaseCounts()
    c.add_many([(f"c{n}", "x", now - 3600) for n in range(4)], now=now)
    assert c.count("x", now) == 4 and c.social_proof("x") is None  # 4: never shown
    c.add_many([("c0", "x", now - 60)], now=now)  # the same customer again: still 4
    assert c.count("x", now) == 4
    c.add_many([("c4", "x", now - 8 * 86_400)], now=now)  # outside the window: not counted
    assert c.count("x", now) == 4
    c.add_many([("c4", "x", now - 7 * 86_400 + 100)], now=now)
    assert c.count("x", now) == 5 and c.social_proof("x") == {"purchases_7d": 5}
    # 101 s later c4's purchase leaves the window; c0's newer one keeps c0 in it.
    assert c.count("x", now + 101) == 4 and c.social_proof("x") is None
    assert c.count("x", now + 7 * 86_400 - 61) == 1  # only c0's second purchase is left
    assert c.count("x", now + 7 * 86_400) == 0 and len(c) == 0


def test_social_proof_starts_from_the_history_and_counts_events_as_they_come(engine) -> None:
    counts = engine.state.purchases_7d
    counts.expire()
    assert counts.social_proof("l0") == {"purchases_7d": 5}  # five buyers two days ago
    assert counts.social_proof("m0") is None  # four
    assert counts.social_proof("j2") is None  # bought by six, but 30 days ago
    engine.record_events([{"user_id": "u5", "item_id": "m0", "event_type": "purchase"}])
    assert counts.social_proof("m0") == {"purchases_7d": 5}


def test_scores_are_finite(engine) -> None:
    from serving.pipeline import Context

    assert np.isfinite([r.score for r in engine.rerank("fan", GIVEN, Context())]).all()
