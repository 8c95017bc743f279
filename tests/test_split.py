"""Evaluation splits: nothing leaks from the future (loo, time), held-out rows are the ones a hand
count says, random proportions follow RecBole's rule, and every split is deterministic."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import FeatureConfig

_spec = importlib.util.spec_from_file_location(
    "_feature_build_helpers", Path(__file__).parent / "test_build.py"
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
DAY, T0, build, write_events = _helpers.DAY, _helpers.T0, _helpers.build, _helpers.write_events


def split(root: Path, name: str, part: str) -> pd.DataFrame:
    return pd.read_parquet(root / "features" / "splits" / name / f"{part}.parquet")


def random_shop(root: Path, seed: int = 0, n: int = 3000) -> None:
    """Events with many ties: timestamps on a coarse hourly grid, baskets of several lines at one time."""
    rng = np.random.default_rng(seed)
    types = rng.choice(["view", "add_to_cart", "purchase", "remove_from_cart"], n, p=[0.5, 0.2, 0.25, 0.05])
    write_events(
        root,
        [
            {"user_id": f"u{u}", "item_id": f"i{i}", "event_type": str(t), "ts": T0 + int(h) * 3600}
            for u, i, t, h in zip(
                rng.integers(0, 60, n),
                rng.integers(0, 50, n),
                types,
                rng.integers(0, 24 * 60, n),
                strict=True,
            )
        ],
    )


def _assert_no_leak(root: Path, name: str) -> int:
    """For every user: every valid/test time is strictly later than every training event time (any
    type: the training events are rebuilt from the raw events minus nothing that is held out).
    Returns how many held-out rows were checked."""
    seq = split(root, name, "train_sequences")
    last_train = {u: max(ts) for u, ts in zip(seq.user_idx, seq.ts, strict=True) if len(ts)}
    held = pd.concat([split(root, name, "valid"), split(root, name, "test")])
    assert len(held) > 0
    for u, ts in zip(held.user_idx, held.ts, strict=True):
        assert ts > last_train.get(u, -1), (name, u, ts, last_train.get(u))
    # valid is strictly before test for each user too
    v, t = split(root, name, "valid"), split(root, name, "test")
    both = (
        v.groupby("user_idx")
        .ts.max()
        .to_frame("v")
        .join(t.groupby("user_idx").ts.min().to_frame("t"), how="inner")
    )
    assert (both.v < both.t).all()
    return len(held)


def test_loo_and_time_splits_leak_nothing(tmp_path: Path) -> None:
    random_shop(tmp_path)
    build(tmp_path)
    assert _assert_no_leak(tmp_path, "loo") > 50
    assert _assert_no_leak(tmp_path, "time") > 20
    # the train matrices hold no event of a held-out time: every training sequence ends before it
    meta = json.loads((tmp_path / "features" / "splits" / "time" / "meta.json").read_text())
    assert meta["valid_cutoff_ts"] < meta["cutoff_ts"] and meta["target_event_types"] == ["purchase"]
    seq = split(tmp_path, "time", "train_sequences")
    assert max(max(ts) for ts in seq.ts) < meta["valid_cutoff_ts"]


def test_loo_holds_out_the_last_tied_basket_whole(tmp_path: Path) -> None:
    p = "purchase"
    write_events(
        tmp_path,
        [
            {"user_id": "a", "item_id": "x", "event_type": p, "ts": T0},
            {"user_id": "a", "item_id": "y", "event_type": p, "ts": T0 + DAY},
            {
                "user_id": "a",
                "item_id": "z",
                "event_type": "view",
                "ts": T0 + DAY + 5,
            },  # after valid: not train
            {"user_id": "a", "item_id": "z", "event_type": p, "ts": T0 + 2 * DAY},  # tied last basket
            {"user_id": "a", "item_id": "w", "event_type": p, "ts": T0 + 2 * DAY},
            {"user_id": "b", "item_id": "x", "event_type": p, "ts": T0},  # two distinct times: train only
            {"user_id": "b", "item_id": "y", "event_type": p, "ts": T0 + DAY},
        ],
    )
    build(tmp_path)
    users = pd.read_parquet(tmp_path / "features" / "users.parquet").set_index("user_id")["user_idx"]
    items = pd.read_parquet(tmp_path / "features" / "items.parquet").set_index("item_idx")["item_id"]
    test, valid = split(tmp_path, "loo", "test"), split(tmp_path, "loo", "valid")
    assert sorted(items[test.item_idx]) == ["w", "z"] and set(test.ts) == {T0 + 2 * DAY}
    assert list(items[valid.item_idx]) == ["y"] and set(test.user_idx) == {users["a"]}
    train = split(tmp_path, "loo", "train")
    a_items = sorted(items[train[train.user_idx == users["a"]].item_idx])
    b_items = sorted(items[train[train.user_idx == users["b"]].item_idx])
    assert a_items == ["x"] and b_items == ["x", "y"]
    # the loo training matrix is decayed at the end of the training part (b's last purchase, day 1)
    meta = json.loads((tmp_path / "features" / "splits" / "loo" / "meta.json").read_text())
    assert meta["reference_ts"] == T0 + DAY and meta["n_held_out_users"] == 1


def test_time_split_honours_a_configured_cutoff(tmp_path: Path) -> None:
    rows = [
        {"user_id": "a", "item_id": f"i{d}", "event_type": "purchase", "ts": T0 + d * DAY} for d in range(10)
    ]
    write_events(tmp_path, rows)
    cutoff = pd.Timestamp(T0 + 8 * DAY, unit="s", tz="UTC").strftime("%Y-%m-%d")  # midnight before day 8
    build(tmp_path, FeatureConfig(cutoff=cutoff, threads=1))
    # test window = day 8..9 (2 days) -> valid window = the 2 days before: days 6 and 7
    assert sorted(split(tmp_path, "time", "test").ts) == [T0 + 8 * DAY, T0 + 9 * DAY]
    assert sorted(split(tmp_path, "time", "valid").ts) == [T0 + 6 * DAY, T0 + 7 * DAY]
    assert len(split(tmp_path, "time", "train")) == 6

    from features.errors import BuildError

    with pytest.raises(BuildError, match="outside the events' time range"):
        build(tmp_path, FeatureConfig(cutoff="1999-01-01", threads=1))


def test_random_split_proportions_follow_recbole(tmp_path: Path) -> None:
    rows = []
    for user, n in (("big", 100), ("ten", 10), ("three", 3), ("two", 2)):
        rows += [
            {"user_id": user, "item_id": f"i{k}", "event_type": "purchase", "ts": T0 + k} for k in range(n)
        ]
        rows += [
            {"user_id": user, "item_id": f"i{k}", "event_type": "view", "ts": T0 + k - 1} for k in range(n)
        ]
    write_events(tmp_path, rows)
    build(tmp_path)
    users = pd.read_parquet(tmp_path / "features" / "users.parquet").set_index("user_idx")["user_id"]
    counts = {}
    for part in ("train", "valid", "test"):
        counts[part] = split(tmp_path, "random", part).user_idx.map(users).value_counts().to_dict()
    got = {
        u: tuple(counts[p].get(u, 0) for p in ("train", "valid", "test"))
        for u in ("big", "ten", "three", "two")
    }
    assert got == {"big": (80, 10, 10), "ten": (8, 1, 1), "three": (1, 1, 1), "two": (1, 0, 1)}
    # a held-out pair leaves train entirely: its views do not give the answer away
    train = split(tmp_path, "random", "train")
    held = pd.concat([split(tmp_path, "random", "valid"), split(tmp_path, "random", "test")])
    assert not set(zip(train.user_idx, train.item_idx, strict=True)) & set(
        zip(held.user_idx, held.item_idx, strict=True)
    )


def test_splits_are_deterministic_and_seeded(tmp_path: Path) -> None:
    random_shop(tmp_path, seed=3)
    build(tmp_path)
    first = {
        (n, p): split(tmp_path, n, p) for n in ("loo", "time", "random") for p in ("train", "valid", "test")
    }
    build(tmp_path)
    for key, df in first.items():
        pd.testing.assert_frame_equal(split(tmp_path, *key), df)
    build(tmp_path, FeatureConfig(seed=7, threads=1))
    assert not split(tmp_path, "random", "test").equals(first[("random", "test")])
    pd.testing.assert_frame_equal(split(tmp_path, "loo", "test"), first[("loo", "test")])


def test_train_sequences_are_the_full_sequences_minus_the_held_out_part(tmp_path: Path) -> None:
    random_shop(tmp_path, seed=5)
    build(tmp_path)
    full = pd.read_parquet(tmp_path / "features" / "sequences.parquet")
    events = full.explode(["item_idx", "ts"]).astype({"item_idx": "int64", "ts": "int64"})
    events["pos"] = events.groupby("user_idx").cumcount()
    meta = json.loads((tmp_path / "features" / "splits" / "time" / "meta.json").read_text())
    valid_loo = split(tmp_path, "loo", "valid").groupby("user_idx").ts.min()
    held_random = pd.concat([split(tmp_path, "random", "valid"), split(tmp_path, "random", "test")])
    held_pairs = set(zip(held_random.user_idx, held_random.item_idx, strict=True))
    expected = {
        "time": events[events.ts < meta["valid_cutoff_ts"]],
        "loo": events[events.ts < events.user_idx.map(valid_loo).fillna(np.inf)],
        "random": events[
            [(u, i) not in held_pairs for u, i in zip(events.user_idx, events.item_idx, strict=True)]
        ],
    }
    for name, exp in expected.items():
        got = split(tmp_path, name, "train_sequences")
        got_rows = [
            (u, int(i), int(t))
            for u, items, ts in zip(got.user_idx, got.item_idx, got.ts, strict=True)
            for i, t in zip(items, ts, strict=True)
        ]
        assert got_rows == list(zip(exp.user_idx, exp.item_idx, exp.ts, strict=True)), name


@pytest.mark.parametrize("name", ["loo", "time", "random"])
def test_split_last_purchases_hold_only_training_purchases(tmp_path: Path, name: str) -> None:
    """Regression: the split's re-buy input was rebuilt from training sequences, which hold views, so
    `--exclude-seen learned` hid every item a customer had viewed before buying it (validation NDCG 0).
    It must be exactly the training part's purchases: bought in training, not merely viewed."""
    random_shop(tmp_path, seed=3)
    build(tmp_path)
    raw = pd.read_parquet(tmp_path / "validated" / "events.parquet")
    users = pd.read_parquet(tmp_path / "features" / "users.parquet")
    items = pd.read_parquet(tmp_path / "features" / "items.parquet")
    raw = raw.merge(users, on="user_id").merge(items[["item_id", "item_idx"]], on="item_id")
    raw["ts"] = raw["timestamp"].astype("int64") // 10**6
    seq = split(tmp_path, name, "train_sequences")
    train_times = {
        (u, i, t)
        for u, its, tss in zip(seq.user_idx, seq.item_idx, seq.ts, strict=True)
        for i, t in zip(its, tss, strict=True)
    }
    bought = raw[raw.event_type == "purchase"]
    expected = {
        (u, i)
        for u, i, t in zip(bought.user_idx, bought.item_idx, bought.ts, strict=True)
        if (u, i, t) in train_times
    }
    lp = split(tmp_path, name, "train_last_purchases")
    got = set(zip(lp.user_idx, lp.item_idx, strict=True))
    assert got == expected
    viewed_only = {(u, i) for u, i, _ in train_times} - expected
    assert viewed_only, "the shop must have items viewed in training and never bought there"


@pytest.mark.parametrize("name", ["loo", "time"])
def test_split_statistics_know_nothing_of_the_held_out_period(tmp_path: Path, name: str) -> None:
    """Regression (issue 3): item_stats (the trending variant's `trend`) and category_rebuy (the
    learned re-buy policy used in evaluation) were computed over every event, so a model evaluated
    on a split had seen the test period. Here snacks are re-bought and the item `hot` sells only in
    each customer's last order (the held-out test): the whole-data tables show both, the split's
    own tables (what `load_split` hands to models and evaluation) show neither."""
    from features.workspace import Workspace
    from training.data import load_split, load_train_data
    from training.policy import RebuyPolicy

    rows = []
    for u in range(6):
        for day, items in ((0, ["snack"]), (10, ["bread"]), (20, ["milk"]), (40, ["snack", "hot"])):
            rows += [
                {
                    "user_id": f"u{u}",
                    "item_id": i,
                    "event_type": "purchase",
                    "ts": T0 + day * DAY,
                    "order_id": f"{u}-{day}",
                }
                for i in items
            ]
    write_events(tmp_path, rows)
    _helpers.write_catalog(
        tmp_path,
        [
            {"item_id": "snack", "category": "food/snacks"},
            {"item_id": "bread", "category": "food/bread"},
            {"item_id": "milk", "category": "food/milk"},
            {"item_id": "hot", "category": "toys"},
        ],
    )
    build(tmp_path)
    ws = Workspace.at(tmp_path)
    meta = json.loads((ws.split_dir(name) / "meta.json").read_text())
    assert meta["counts"]["test_rows"] == 12  # snack + hot for each of the six customers

    whole = load_train_data(ws)  # the final refit / serving bundle's view: everything
    rebuy = whole.category_rebuy.set_index("category")
    assert rebuy.loc["food/snacks", "n_repeat_buyers"] == 6 and rebuy.loc["food/snacks", "rebuyable"]
    assert "food/snacks" in RebuyPolicy.from_frame(whole.category_rebuy).rebuyable
    stats = whole.item_stats.merge(whole.items[["item_idx", "item_id"]]).set_index("item_id")
    assert stats.loc["hot", "trend"] > 10 and stats.loc["hot", "n_purchases"] == 6

    train = load_split(ws, name).train
    rebuy = train.category_rebuy.set_index("category")
    assert rebuy.loc["food/snacks", "n_buyers"] == 6  # bought in training, once each
    assert rebuy.loc["food/snacks", "n_repeat_buyers"] == 0 and not rebuy.loc["food/snacks", "rebuyable"]
    assert RebuyPolicy.from_frame(train.category_rebuy).rebuyable == {}
    stats = train.item_stats.merge(train.items[["item_idx", "item_id"]]).set_index("item_id")
    assert stats.loc["hot", "n_events"] == 0 and stats.loc["hot", "trend"] == 1.0
    assert stats.loc["hot", "popularity"] == 0.0 and stats.loc["hot", "n_purchases"] == 0
    # the split's trend is measured at the end of *its* training part: the last training order
    # (milk on day 20 in `time`, bread on day 10 in `loo`) is what was rising then
    rising = "bread" if name == "loo" else "milk"
    assert stats.loc[rising, "trend"] > 10 and meta["reference_ts"] < T0 + 40 * DAY


def _iso(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _segment_shop(root: Path) -> None:
    """100 days, one purchase per basket, a 10-day purchase cycle. r0-r4 buy bread (2.0) every 10
    days; `big` does too, then spends on a TV (1000.0) every 3 days from day 85; `newbie` starts
    on day 50; `early` stops after day 60; `late` first appears on day 90; `browser` only views on
    day 5 before buying from 90."""
    rows = []

    def buy(user: str, day: int, item: str = "bread") -> None:
        rows.append(
            {
                "user_id": user,
                "item_id": item,
                "event_type": "purchase",
                "ts": T0 + day * DAY,
                "order_id": f"{user}-{day}",
            }
        )

    for day in range(0, 101, 10):
        for u in range(5):
            buy(f"r{u}", day)
        if day <= 70:
            buy("big", day)
        if day >= 50:
            buy("newbie", day)
        if day <= 60:
            buy("early", day)
    for day in (85, 88, 91, 94, 97, 100):
        buy("big", day, "tv")
    for day in (90, 95, 100):
        buy("late", day)
        buy("browser", day)
    rows.append({"user_id": "browser", "item_id": "tv", "event_type": "view", "ts": T0 + 5 * DAY})
    write_events(root, rows)
    _helpers.write_catalog(
        root,
        [
            {"item_id": "bread", "category": "food", "price": 2.0},
            {"item_id": "tv", "category": "tech", "price": 1000.0},
        ],
    )


def test_split_segments_are_the_ones_known_at_the_cutoff(tmp_path: Path) -> None:
    """Regression (issue 3): load_split attached the whole-data segment (profiles.parquet, as of the
    end of all data) to a split's customers, so `popular`'s segment mode and the per-segment metrics
    saw the test period. `time` cut at day 90 (validation from day 80): training = days 0-79, its
    end (day 70) the reference time, its baskets' cycle 10 days, so "new" = first event after day 30.

    customer  whole data (ref day 100)          as of the cut-off (ref day 70)
    newbie    active  (first buy day 50 < 60)   new     (first buy day 50 >= 30)
    big       vip     (most baskets, TV spend)  active  (the same 8 bread baskets as r0-r4)
    browser   active  (buys days 90-100)        lapsed  (one view on day 5, silent 65 > 40 days)
    late      new     (first event day 90)      none    (no event before the cut-off)
    early     at_risk (silent 40 > 20 days)     active  (silent 10 days)
    r0-r4     active                            active
    """
    from features.workspace import Workspace
    from training.data import load_split, load_train_data

    _segment_shop(tmp_path)
    build(tmp_path, FeatureConfig(threads=1, cutoff=_iso(T0 + 90 * DAY)))
    ws = Workspace.at(tmp_path)
    meta = json.loads((ws.split_dir("time") / "meta.json").read_text())
    assert meta["cutoff_ts"] == T0 + 90 * DAY and meta["valid_cutoff_ts"] == T0 + 80 * DAY
    assert meta["reference_ts"] == T0 + 70 * DAY and meta["cycle_days"] == 10.0

    def segments(users: pd.DataFrame) -> dict[str, str | None]:
        return {u: (None if pd.isna(s) else s) for u, s in zip(users.user_id, users.segment, strict=True)}

    regulars = {f"r{u}": "active" for u in range(5)}
    whole = segments(load_train_data(ws).users)  # the final refit / serving view
    assert whole == {
        **{"newbie": "active", "big": "vip", "browser": "active", "late": "new", "early": "at_risk"},
        **regulars,
    }
    at_cut = segments(load_split(ws, "time").train.users)
    assert at_cut == {
        **{"newbie": "new", "big": "active", "browser": "lapsed", "late": None, "early": "active"},
        **regulars,
    }
    on_disk = pd.read_parquet(ws.split_dir("time") / "segments.parquet")
    assert list(on_disk.columns) == ["user_idx", "segment"] and len(on_disk) == 9  # `late` has no row


def test_loo_segments_are_as_of_each_customers_own_cutoff(tmp_path: Path) -> None:
    """`loo` cuts per customer, so its training part runs to big's day 94 purchase; a segment
    measured there would call `early` (last buy day 40, cut-off at the day-50 validation purchase)
    lapsed (54 silent days > 4 x 10), a test-period lapse the shop could not have seen. Measured at
    each customer's own cut-off: `early` is active (silent 10 days), `big` is a VIP by the TV spend
    before his own cut-off (day 97), `late` is new (first buy day 90, cut-off day 95)."""
    from features.workspace import Workspace
    from training.data import load_split

    _segment_shop(tmp_path)
    build(tmp_path)
    ws = Workspace.at(tmp_path)
    users = load_split(ws, "loo").train.users.set_index("user_id")["segment"]
    assert json.loads((ws.split_dir("loo") / "meta.json").read_text())["reference_ts"] == T0 + 94 * DAY
    assert users["early"] == "active" and users["big"] == "vip" and users["late"] == "new"
    assert all(users[f"r{u}"] == "active" for u in range(5))


def test_split_without_segments_falls_back_to_whole_data_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A workspace built before segments.parquet existed still loads, with the whole-data segments
    and a warning that its evaluation has seen the held-out period."""
    from features.workspace import Workspace
    from training.data import load_split

    _segment_shop(tmp_path)
    build(tmp_path, FeatureConfig(threads=1, cutoff=_iso(T0 + 90 * DAY)))
    ws = Workspace.at(tmp_path)
    (ws.split_dir("time") / "segments.parquet").unlink()
    with caplog.at_level("WARNING", logger="training.data"):
        users = load_split(ws, "time").train.users
    assert "segments.parquet" in caplog.text
    assert users.set_index("user_id").loc["big", "segment"] == "vip"
