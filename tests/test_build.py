"""Feature build on tiny hand-made validated tables whose right answers are computed by hand.

Each test writes `validated/*.parquet` with the canonical dtypes of docs/workspace.md and calls
`build_from_validated` (validation has its own tests); the CLI test goes end to end from raw CSV.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import build_from_validated
from features.config import FeatureConfig
from features.errors import BuildError
from features.workspace import Workspace

T0 = 1_700_000_000 - (1_700_000_000 % 86400) + 43200  # noon UTC, so day arithmetic never crosses midnight
DAY = 86400


def write_events(root: Path, rows: list[dict]) -> None:
    """Write validated events: rows need user_id, item_id, event_type, ts (epoch s); the rest default."""
    df = pd.DataFrame(rows)
    out = pd.DataFrame(
        {
            "user_id": df["user_id"].astype("string"),
            "item_id": df["item_id"].astype("string"),
            "event_type": df["event_type"].astype("string"),
            "timestamp": pd.to_datetime(df["ts"], unit="s", utc=True).astype("datetime64[us, UTC]"),
            "quantity": df.get("quantity", pd.Series(1, index=df.index)).fillna(1).astype("int64"),
            "price": df.get("price", pd.Series(np.nan, index=df.index)).astype("float64"),
        }
    )
    for col in ("order_id", "session_id", "size"):
        out[col] = df.get(col, pd.Series(None, index=df.index, dtype="object")).astype("string")
    (root / "validated").mkdir(parents=True, exist_ok=True)
    out.to_parquet(root / "validated" / "events.parquet", index=False)


def write_catalog(root: Path, rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    out = pd.DataFrame({"item_id": df["item_id"].astype("string")})
    for col in ("title", "category", "brand", "gender"):
        out[col] = df.get(col, pd.Series(None, index=df.index, dtype="object")).astype("string")
    out["price"] = df.get("price", pd.Series(np.nan, index=df.index)).astype("float64")
    out["created_at"] = pd.to_datetime(pd.Series([T0] * len(df)), unit="s", utc=True).astype(
        "datetime64[us, UTC]"
    )
    (root / "validated").mkdir(parents=True, exist_ok=True)
    out.to_parquet(root / "validated" / "catalog.parquet", index=False)


def build(root: Path, config: FeatureConfig | None = None) -> dict:
    return build_from_validated(Workspace.at(root), config or FeatureConfig(threads=1))


def feature(root: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(root / "features" / f"{name}.parquet")


def named(root: Path, name: str) -> pd.DataFrame:
    """A feature table with user_idx/item_idx mapped back to the string ids."""
    df = feature(root, name)
    users = feature(root, "users").set_index("user_idx")["user_id"]
    items = feature(root, "items").set_index("item_idx")["item_id"]
    if "user_idx" in df:
        df["user"] = df["user_idx"].map(users)
    if "item_idx" in df and df["item_idx"].dtype != object:
        df["item"] = df["item_idx"].map(items)
    return df


def test_interaction_weights_and_decay_hand_computed(tmp_path: Path) -> None:
    # Reference time = the last event (T0 + 360 days). Half-life 90 days.
    ref = T0 + 360 * DAY
    write_events(
        tmp_path,
        [
            {"user_id": "a", "item_id": "x", "event_type": "view", "ts": ref - 90 * DAY},  # 1 * 0.5
            {"user_id": "a", "item_id": "x", "event_type": "purchase", "ts": ref},  # 5 * 1
            {"user_id": "a", "item_id": "y", "event_type": "add_to_cart", "ts": ref - 180 * DAY},  # 3 * 0.25
            {
                "user_id": "b",
                "item_id": "z",
                "event_type": "remove_from_cart",
                "ts": ref - DAY,
            },  # weight 0: no entry
            {
                "user_id": "b",
                "item_id": "x",
                "event_type": "wishlist",
                "ts": ref - 360 * DAY,
            },  # unknown type: 0
            {"user_id": "b", "item_id": "y", "event_type": "view", "ts": ref - 360 * DAY},  # 1 * 0.0625
        ],
    )
    summary = build(tmp_path)
    got = {(r.user, r.item): r.value for r in named(tmp_path, "interactions").itertuples()}
    assert got == pytest.approx({("a", "x"): 5.5, ("a", "y"): 0.75, ("b", "y"): 0.0625})
    meta = json.loads((tmp_path / "features" / "interactions.json").read_text())
    assert meta["shape"] == [2, 3] and meta["reference_ts"] == ref and meta["half_life_days"] == 90.0
    assert summary["nnz"] == 3

    # Configured weights: the wishlist now counts, views do not; half-life 180 days.
    config = FeatureConfig.from_cli(half_life_days=180, weights=["wishlist=2", "view=0"], cutoff=None)
    build(tmp_path, config)
    got = {(r.user, r.item): r.value for r in named(tmp_path, "interactions").itertuples()}
    assert got == pytest.approx({("a", "x"): 5.0, ("a", "y"): 3 * 0.5, ("b", "x"): 2 * 0.25})


def test_config_rejects_bad_input() -> None:
    with pytest.raises(BuildError, match="TYPE=NUMBER"):
        FeatureConfig.from_cli(half_life_days=90, weights=["view"], cutoff=None)
    with pytest.raises(BuildError, match="half_life_days"):
        FeatureConfig.from_cli(half_life_days=0, weights=[], cutoff=None)
    with pytest.raises(BuildError, match="cutoff"):
        FeatureConfig.from_cli(half_life_days=90, weights=[], cutoff="last tuesday")
    with pytest.raises(BuildError, match="unknown config key.*FeatureConfig"):
        FeatureConfig.from_dict({"half_life": 3})
    assert FeatureConfig.from_cli(half_life_days=90, weights=[], cutoff=None).weight_map == {
        "view": 1.0,
        "add_to_cart": 3.0,
        "remove_from_cart": 0.0,
        "purchase": 5.0,
    }


def test_baskets_group_by_order_then_session_then_day(tmp_path: Path) -> None:
    p = "purchase"
    write_events(
        tmp_path,
        [
            # one order, two lines, a second apart: one basket
            {"user_id": "a", "item_id": "x", "event_type": p, "ts": T0, "order_id": "o1"},
            {"user_id": "a", "item_id": "y", "event_type": p, "ts": T0 + 1, "order_id": "o1"},
            # same day, another order: its own basket
            {"user_id": "a", "item_id": "z", "event_type": p, "ts": T0 + 60, "order_id": "o2"},
            # no order id: grouped by session
            {"user_id": "b", "item_id": "x", "event_type": p, "ts": T0, "session_id": "s1"},
            {"user_id": "b", "item_id": "z", "event_type": p, "ts": T0 + 5, "session_id": "s1"},
            # neither: grouped by the user's day (two on day 2, one on day 3)
            {"user_id": "c", "item_id": "x", "event_type": p, "ts": T0 + 2 * DAY},
            {"user_id": "c", "item_id": "y", "event_type": p, "ts": T0 + 2 * DAY + 100},
            {"user_id": "c", "item_id": "y", "event_type": p, "ts": T0 + 3 * DAY},
            # views never make baskets
            {"user_id": "c", "item_id": "z", "event_type": "view", "ts": T0 + 3 * DAY},
        ],
    )
    summary = build(tmp_path)
    items = feature(tmp_path, "items").set_index("item_idx")["item_id"]
    b = named(tmp_path, "baskets")
    got = sorted((r.user, int(r.ts - T0), tuple(items[i] for i in r.item_idx)) for r in b.itertuples())
    assert got == [
        ("a", 0, ("x", "y")),
        ("a", 60, ("z",)),
        ("b", 0, ("x", "z")),
        ("c", 2 * DAY, ("x", "y")),
        ("c", 3 * DAY, ("y",)),
    ]
    assert summary["baskets"] == 5
    assert list(b["basket_id"]) == list(range(5))


def _population() -> list[dict]:
    """Five buyers and one browser; repeat buyers mostly buy every 10 days, so the purchase cycle is 10
    days and the reference time is day 100. See test_rfm_and_segments for the expected answer."""
    rows = []

    def buy(user: str, days: list[int], price: float) -> None:
        for d in days:
            rows.append(
                {
                    "user_id": user,
                    "item_id": "i1",
                    "event_type": "purchase",
                    "ts": T0 + d * DAY,
                    "price": price,
                }
            )

    buy("vip", [40, 50, 60, 70, 80, 90, 100], 100.0)
    buy("active", [30, 80, 90], 10.0)
    buy("at_risk", [50, 60, 70], 5.0)
    buy("lapsed", [10, 20], 1.0)
    rows.append({"user_id": "new", "item_id": "i2", "event_type": "view", "ts": T0 + 95 * DAY})
    buy("new", [96], 50.0)
    for d in range(1, 100, 7):
        rows.append({"user_id": "browser", "item_id": "i2", "event_type": "view", "ts": T0 + d * DAY})
    rows.append({"user_id": "browser", "item_id": "i2", "event_type": "view", "ts": T0 + 99 * DAY})
    return rows


def test_rfm_scores_and_segments_on_a_known_population(tmp_path: Path) -> None:
    write_events(tmp_path, _population())
    summary = build(tmp_path)
    assert summary["cycle_days"] == pytest.approx(10.0)
    p = named(tmp_path, "profiles").set_index("user")
    # Quintiles of the rank among the 5 buyers (new, active, at_risk, lapsed, vip): frequency 1,3,3,2,7;
    # monetary 50,30,15,2,700; last purchase day 96,90,70,20,100. Segments use C = 10 days: new = first
    # seen within 40 days, lapsed = silent > 40 days, at_risk = silent > 20 days.
    expected = {
        "vip": (5, 5, 5, "vip"),
        "active": (3, 3, 3, "active"),
        "at_risk": (2, 3, 2, "at_risk"),
        "lapsed": (1, 2, 1, "lapsed"),
        "new": (4, 1, 4, "new"),
    }
    for user, (r, f, m, segment) in expected.items():
        row = p.loc[user]
        assert (row.r_score, row.f_score, row.m_score, row.segment) == (r, f, m, segment), user
    assert p.loc["vip", "frequency"] == 7 and p.loc["vip", "monetary"] == pytest.approx(700.0)
    assert p.loc["lapsed", "recency_days"] == pytest.approx(80.0)
    # A browser who never bought has no RFM scores; browsing yesterday keeps them active.
    assert pd.isna(p.loc["browser", "r_score"]) and p.loc["browser", "segment"] == "active"
    assert p.loc["browser", "recency_days"] == pytest.approx(1.0) and p.loc["browser", "n_purchases"] == 0
    assert summary["segments"] == {"active": 2, "at_risk": 1, "lapsed": 1, "new": 1, "vip": 1}
    assert p["consent_personalisation"].all()  # no customers table: consent not recorded -> given


def test_rebuy_is_learned_per_category(tmp_path: Path) -> None:
    rows = []
    for u in range(4):  # cat food: three of four buyers buy the same bag again 21 days later
        rows.append(
            {"user_id": f"c{u}", "item_id": "food", "event_type": "purchase", "ts": T0, "order_id": f"a{u}"}
        )
        if u < 3:
            rows.append(
                {
                    "user_id": f"c{u}",
                    "item_id": "food",
                    "event_type": "purchase",
                    "ts": T0 + 21 * DAY,
                    "order_id": f"b{u}",
                }
            )
    for u in range(4):  # laptops: bought once each; one buyer takes 2 in a single order (not a re-buy)
        rows.append(
            {"user_id": f"l{u}", "item_id": "laptop", "event_type": "purchase", "ts": T0, "order_id": f"l{u}"}
        )
    rows.append(
        {"user_id": "l0", "item_id": "laptop", "event_type": "purchase", "ts": T0 + 1, "order_id": "l0"}
    )
    # one odd customer re-buys a lamp: a 100% rate from a single buyer is not a pattern
    for d in (0, 30):
        rows.append(
            {
                "user_id": "odd",
                "item_id": "lamp",
                "event_type": "purchase",
                "ts": T0 + d * DAY,
                "order_id": f"x{d}",
            }
        )
    write_events(tmp_path, rows)
    write_catalog(
        tmp_path,
        [
            {"item_id": "food", "category": "pets/cats/food"},
            {"item_id": "laptop", "category": "electronics/laptops"},
            {"item_id": "lamp", "category": "home/lamps"},
            {"item_id": "unsold", "category": "home/lamps"},
        ],
    )
    build(tmp_path)
    r = feature(tmp_path, "category_rebuy").set_index("category")
    same_item = ["n_buyers", "n_repeat_buyers", "rebuy_rate", "median_interval_days", "rebuyable"]
    assert r.loc["pets/cats/food", same_item].tolist() == [4, 3, 0.75, 21.0, True]
    # The category again: 3 of its buyers; chance predicts 3 x 7/13 (7 of the 13 baskets hold cat
    # food, and each of those three has one other basket), far too few to call anything durable.
    food = r.loc["pets/cats/food"]
    assert food.n_category_repeat_buyers == 3 and food.category_interval_days == 21.0
    assert food.expected_category_repeat_buyers == pytest.approx(21 / 13) and not food.durable
    laptops = r.loc["electronics/laptops"]
    assert (laptops.n_buyers, laptops.n_repeat_buyers, laptops.rebuy_rate) == (4, 0, 0.0)
    assert pd.isna(laptops.median_interval_days) and not laptops.rebuyable
    assert r.loc["home/lamps", "rebuy_rate"] == 1.0 and not r.loc["home/lamps", "rebuyable"]
    lp = named(tmp_path, "last_purchases").set_index(["user", "item"])
    assert lp.loc[("c0", "food"), "n_purchases"] == 2 and lp.loc[("c0", "food"), "last_ts"] == T0 + 21 * DAY
    assert lp.loc[("c0", "food"), "category"] == "pets/cats/food"
    # the catalogue-only item still has an index (new items must be servable)
    assert "unsold" in set(feature(tmp_path, "items")["item_id"])


def test_sizes_gender_affinity_and_item_stats(tmp_path: Path) -> None:
    rows = []
    for i, size in enumerate(["M", "M", "L", "M"]):  # jeans: M bought most
        rows.append(
            {"user_id": "a", "item_id": "jeans", "event_type": "purchase", "ts": T0 + i * DAY, "size": size}
        )
    for i, size in enumerate(["S", "XL"]):  # shirts: a tie, the later purchase wins
        rows.append(
            {"user_id": "a", "item_id": "shirt", "event_type": "purchase", "ts": T0 + i * DAY, "size": size}
        )
    rows.append({"user_id": "a", "item_id": "jeans", "event_type": "view", "ts": T0 + 9 * DAY, "size": "XS"})
    for i in range(3):  # b looks at men's items, c at both sides equally, d at one gendered item only
        rows.append({"user_id": "b", "item_id": "shirt", "event_type": "view", "ts": T0 + i})
        rows.append({"user_id": "c", "item_id": "shirt", "event_type": "view", "ts": T0 + i})
        rows.append({"user_id": "c", "item_id": "jeans", "event_type": "view", "ts": T0 + i})
    rows.append({"user_id": "d", "item_id": "shirt", "event_type": "view", "ts": T0})
    write_events(tmp_path, rows)
    write_catalog(
        tmp_path,
        [
            {"item_id": "jeans", "category": "fashion/women/jeans", "gender": "women"},
            {"item_id": "shirt", "category": "fashion/men/shirts", "gender": "men"},
        ],
    )
    build(tmp_path)
    sizes = named(tmp_path, "sizes")
    assert sorted(zip(sizes.user, sizes.garment, sizes["size"], sizes.n, strict=True)) == [
        ("a", "fashion/men/shirts", "XL", 1),
        ("a", "fashion/women/jeans", "M", 3),
    ]
    aff = named(tmp_path, "profiles").set_index("user")["gender_affinity"]
    # a: 4 women's purchases (5 each) + 1 view vs 2 men's purchases: 21/31 = 0.68 < 0.7 -> unisex
    assert aff["a"] == "unisex" and aff["b"] == "men" and aff["c"] == "unisex" and pd.isna(aff["d"])
    stats = named(tmp_path, "item_stats").set_index("item")
    assert stats.loc["jeans", "n_purchases"] == 3 + 1 and stats.loc["jeans", "n_users"] == 2
    assert stats.loc["jeans", "pop_rank"] == 1 and stats.loc["shirt", "pop_rank"] == 2


def test_missing_validated_events_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="validated/events.parquet"):
        build(tmp_path)


def test_cli_end_to_end_prints_the_summary_last(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from serving.cli import app

    rows = ["user_id,item_id,event_type,timestamp,quantity,order_id"]
    for u in range(6):
        for d in range(4):
            rows.append(f"u{u},i{(u + d) % 5},purchase,2024-01-{d + 1:02d}T10:00:00Z,1,o{u}-{d}")
            rows.append(f"u{u},i{(u * d) % 5},view,2024-01-{d + 1:02d}T09:00:00Z,1,")
    rows.append("u1,i1,purchase,2024-01-05T10:00:00Z,-3,bad")  # negative quantity -> quarantine
    rows.append(",i1,view,2024-01-05T10:00:00Z,1,")  # missing user id -> quarantine
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "catalog.csv").write_text(
        "item_id,title,category,price\n" + "".join(f"i{i},t{i},c/{i % 2},9.5\n" for i in range(6))
    )

    result = CliRunner().invoke(app, ["features", "build", "--data", str(tmp_path), "--half-life-days", "30"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for table in ("events", "catalog"):
        c = summary[table]
        assert c["input_rows"] == c["accepted"] + c["quarantined"], table
    assert summary["events"] == {"input_rows": 50, "accepted": 48, "quarantined": 2}
    f = summary["features"]
    assert (f["users"], f["items"], f["baskets"]) == (6, 6, 24)
    assert f["config"]["half_life_days"] == 30.0 and "total" in f["timings"]
    assert json.loads((tmp_path / "features" / "summary.json").read_text()) == summary
    for split in ("loo", "time", "random"):
        assert (tmp_path / "features" / "splits" / split / "meta.json").exists()

    bad = CliRunner().invoke(app, ["features", "build", "--data", str(tmp_path), "--weight", "view"])
    assert bad.exit_code == 2 and "TYPE=NUMBER" in bad.output
