"""The feature build finds the structure planted in the synthetic shop (docs/synthetic.md, "What a
feature build should find"): learned re-buy per category, personal sizes, accessories in the baskets of
their durables. One small shop (~500 customers) is generated and built once for the module."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.build import build_features
from features.config import FeatureConfig
from features.synthetic import generate
from features.workspace import Workspace


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    generate(root, customers=500, items=300, days=180, seed=7, progress=False)
    build_features(Workspace.at(root), FeatureConfig(threads=1))
    return root


def _f(root: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(root / "features" / f"{name}.parquet")


def test_rebuy_is_learned_cat_food_yes_laptops_no(shop: Path) -> None:
    rebuy = _f(shop, "category_rebuy").set_index("category")
    assert rebuy.loc["pets/cats/cat-food", "rebuyable"]
    assert rebuy.loc["pets/cats/cat-food", "median_interval_days"] == pytest.approx(25, abs=6)
    assert not rebuy.loc["electronics/computers/laptops", "rebuyable"]
    # every planted consumable is found re-buyable, and nothing else (fashion, DIY, accessories) is
    truth = pd.read_parquet(shop / "truth" / "categories.parquet").set_index("category")
    judged = rebuy[rebuy.n_buyers >= 20].join(truth["rebuyable"].rename("truth"), how="inner")
    assert len(judged) >= 15
    wrong = judged[judged.rebuyable != judged.truth]
    assert wrong.empty, wrong[["n_buyers", "rebuy_rate", "rebuyable", "truth"]]


def test_learned_size_matches_truth_for_95_percent_of_regular_buyers(shop: Path) -> None:
    users = _f(shop, "users")
    items = _f(shop, "items")
    events = pd.read_parquet(
        shop / "validated" / "events.parquet", columns=["user_id", "item_id", "event_type", "size"]
    )
    bought = events[(events.event_type == "purchase") & events["size"].notna()].merge(
        items[["item_id", "category"]], on="item_id"
    )
    n_bought = bought.groupby(["user_id", "category"]).size().rename("n_total").reset_index()
    learned = _f(shop, "sizes").merge(users, on="user_idx").rename(columns={"garment": "category"})
    learned = learned.merge(n_bought, on=["user_id", "category"])
    truth = pd.read_parquet(shop / "truth" / "personal_sizes.parquet").rename(columns={"garment": "category"})
    regular = learned[learned.n_total >= 3].merge(truth, on=["user_id", "category"], suffixes=("", "_truth"))
    assert len(regular) >= 20, "too few customers with 3+ garment purchases to judge"
    share = (regular["size"] == regular["size_truth"]).mean()
    assert share >= 0.95, f"learned size = truth size for only {share:.1%} of {len(regular)}"


def test_accessories_co_occur_with_their_durables_in_baskets(shop: Path) -> None:
    items = _f(shop, "items").set_index("item_idx")["category"]
    baskets = _f(shop, "baskets")
    cats = [set(items[list(b)]) for b in baskets.item_idx]
    n = len(cats)
    assert n > 100
    for durable, accessory in (
        ("electronics/computers/laptops", "electronics/computers/laptop-bags"),
        ("electronics/phones/smartphones", "electronics/phones/phone-cases"),
    ):
        with_durable = [c for c in cats if durable in c]
        if len(with_durable) < 5:
            continue
        p_acc = sum(accessory in c for c in cats) / n
        p_acc_given_durable = sum(accessory in c for c in with_durable) / len(with_durable)
        lift = p_acc_given_durable / p_acc
        assert lift > 5, (durable, accessory, lift)


def test_lapsed_segment_finds_the_planted_lapsers(shop: Path) -> None:
    truth = pd.read_parquet(shop / "truth" / "customers.parquet", columns=["user_id", "lapsed"])
    p = _f(shop, "profiles").merge(truth, on="user_id")
    ours = p.segment == "lapsed"
    recall = (ours & p.lapsed).sum() / p.lapsed.sum()
    precision = (ours & p.lapsed).sum() / ours.sum()
    assert recall >= 0.9 and precision >= 0.6, (recall, precision)
