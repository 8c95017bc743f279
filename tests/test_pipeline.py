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
from serving.store import InMemoryStore
from training.base import TrainData

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
    "cat": [["lbox_a", "scoop", "catfood"], ["lbox_b", "scoop", "catfood"], ["catfood", "cattoy"]],
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


def write_tiny_bundle(path: Path) -> Path:
    """The tiny shop as a serving bundle (docs/workspace.md layout), real itemknn + bought-together."""
    users, items, baskets, history = _shop()
    rows, cols = [], []
    for u, uid in enumerate(users["user_id"]):
        for it in history[uid]:
            rows.append(u)
            cols.append(IDX[it])
    ui = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(items)))
    sequences = [np.array([IDX[i] for i in history[uid]]) for uid in users["user_id"]]
    data = TrainData(user_items=ui, users=users, items=items, sequences=sequences, baskets=baskets)
    model = get_model_class("itemknn")(get_model_class("itemknn").Config.from_dict({"num_threads": 1})).fit(data)
    comp_cls = get_model_class("bought-together")
    comp = comp_cls(comp_cls.Config.from_dict({"min_count": 2, "fallback_neighbours": 0})).fit(data)

    model.save(path / "model")
    comp.save(path / "complements")
    ctx = path / "context"
    ctx.mkdir(parents=True)
    pop = np.asarray(ui.sum(axis=0)).ravel()
    items.assign(n_users=pop, popularity=pop.astype(float)).to_parquet(ctx / "items.parquet", index=False)
    pd.DataFrame(
        [
            ("dress", "S", 0), ("dress", "M", 3), ("shirt", "M", 2), ("shirt", "L", 0),
            ("tee", "S", 0), ("tee", "M", 1), ("leash", "", 0), ("dogfood", "", 7),
        ],
        columns=["item_id", "size", "quantity"],
    ).to_parquet(ctx / "stock.parquet", index=False)  # fmt: skip
    uidx = dict(zip(users["user_id"], users["user_idx"], strict=True))
    profiles = users.assign(
        segment=["active"] * len(users),
        gender_affinity=[None] * len(users),
        consent_personalisation=[True] * len(users),
    )
    profiles.loc[profiles.user_id == "alice", "gender_affinity"] = "women"
    profiles.loc[profiles.user_id == "carl", "gender_affinity"] = "men"
    profiles.loc[profiles.user_id == "bob", "consent_personalisation"] = False
    profiles.to_parquet(ctx / "profiles.parquet", index=False)
    pd.DataFrame({"user_idx": [uidx["alice"]], "garment": ["fashion/women/dresses"], "size": ["S"]}).to_parquet(
        ctx / "sizes.parquet", index=False
    )
    pd.DataFrame(
        {
            "user_idx": [uidx["alice"]] * 3,
            "item_idx": [IDX["catfood"], IDX["laptop"], IDX["lbox_a"]],
            "category": ["pets/cats/food", "electronics/laptops", "pets/cats/litter-boxes"],
            "last_ts": [int(NOW - 40 * DAY)] * 3,
            "n_purchases": [3, 1, 1],
        }
    ).to_parquet(ctx / "last_purchases.parquet", index=False)
    pd.DataFrame(
        {
            "category": ["pets/cats/food", "electronics/laptops"],
            "n_buyers": [20, 4],
            "n_repeat_buyers": [15, 0],
            "rebuy_rate": [0.75, 0.0],
            "median_interval_days": [30.0, None],
            "rebuyable": [True, False],
        }
    ).to_parquet(ctx / "category_rebuy.parquet", index=False)
    sp.save_npz(ctx / "user_items.npz", ui)
    pd.DataFrame({"user_idx": users["user_idx"], "item_idx": [s.astype(np.int32) for s in sequences]}).to_parquet(
        ctx / "sequences.parquet", index=False
    )
    (path / "bundle.json").write_text(json.dumps({"model": "itemknn", "data_hash": "tiny", "metrics": {}}))
    return path


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture()
def engine(bundle_dir: Path) -> Engine:
    return Engine.from_bundle(bundle_dir, store=InMemoryStore(), model_version="v7")


def ids(recs: list[Rec]) -> list[str]:
    return [r.item_id for r in recs]


def test_engine_loads_and_reports_health(engine: Engine) -> None:
    h = engine.health()
    assert h["items"] == len(ITEMS)
    assert h["store"].startswith("memory ok")
    assert h["model"] == "itemknn" and h["model_version"] == "v7" and h["complements"] is True
    assert engine.model_version == "v7"
