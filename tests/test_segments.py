"""Segments as lists: the rules on a tiny table with known answers, their config, the purchase
histories the lifetime models learn from, and `shoprec segments` end to end on a small shop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.lifecycle import (
    SegmentConfig,
    assign_segments,
    purchase_occasions,
    rfm_scores,
    rfm_summary,
)


def rules_table() -> pd.DataFrame:
    """C = 10 days with the default config: new <= 40 days old, at_risk silent > 20, lapsed > 40."""
    rows = {
        # name: first_days, silent_days, f_score, m_score, p_alive  -> expected segment
        "newcomer": (30, 30, 5, 5, 0.05),  # new wins over every other rule (too new to judge)
        "gone": (300, 41, 5, 5, 0.99),  # silent > 4 C
        "faded": (300, 5, 3, 3, 0.1),  # recent, but BG/NBD says p_alive < 0.2
        "quiet": (300, 21, 5, 5, 0.9),  # silent > 2 C, a VIP by scores: at risk comes first
        "wobbly": (300, 5, 5, 5, 0.4),  # p_alive < 0.5: at risk
        "star": (300, 5, 4, 5, 0.95),  # frequent and top spender
        "cheap": (300, 5, 5, 4, 0.95),  # frequent but not top spend: active
        "browser": (300, 10, np.nan, np.nan, np.nan),  # never bought: no model, silence alone
        "one-timer": (300, 19, 1, 2, 1.0),  # BG/NBD's one-time buyer: alive, the silence is short
    }
    frame = pd.DataFrame.from_dict(
        rows, orient="index", columns=["first_days", "silent_days", "f_score", "m_score", "p_alive"]
    )
    return frame


def test_segment_rules_known_answers() -> None:
    seg = assign_segments(rules_table(), cycle_days=10.0, config=SegmentConfig())
    assert seg.to_dict() == {
        "newcomer": "new",
        "gone": "lapsed",
        "faded": "lapsed",
        "quiet": "at_risk",
        "wobbly": "at_risk",
        "star": "vip",
        "cheap": "active",
        "browser": "active",
        "one-timer": "active",
    }


def test_segment_thresholds_come_from_the_config() -> None:
    t = rules_table()
    # p_alive rules off: only silence decides, as in features' profiles
    off = assign_segments(t, cycle_days=10.0, config=SegmentConfig(at_risk_p_alive=0, lapsed_p_alive=0))
    assert off["faded"] == "active" and off["wobbly"] == "vip"
    # a shorter cycle makes the one-timer (19 days silent) lapsed: 19 > 4 · 4
    assert assign_segments(t, cycle_days=4.0, config=SegmentConfig())["one-timer"] == "lapsed"
    # a looser VIP rule lets the cheaper frequent buyer in
    loose = assign_segments(t, cycle_days=10.0, config=SegmentConfig(vip_min_m_score=4))
    assert loose["cheap"] == "vip"
    # without prices, frequency alone decides at the stricter score (5): star (f 4) is not a VIP
    nomoney = assign_segments(t, cycle_days=10.0, config=SegmentConfig(), has_money=False)
    assert nomoney["star"] == "active" and nomoney["cheap"] == "vip"


def test_segment_config_is_typed_and_strict(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown segment config key.*lapsed_days"):
        SegmentConfig.from_dict({"lapsed_days": 30})
    with pytest.raises(ValueError, match="expects float"):
        SegmentConfig.from_dict({"lapsed_cycles": "soon"})
    with pytest.raises(ValueError, match="at_risk_cycles"):
        SegmentConfig(at_risk_cycles=5, lapsed_cycles=4)
    with pytest.raises(ValueError, match="cycle_days"):
        SegmentConfig(cycle_days=-1)
    with pytest.raises(ValueError, match="score 1-5"):
        SegmentConfig(vip_min_f_score=6)
    path = tmp_path / "rules.toml"
    path.write_text("lapsed_cycles = 6\nvip_min_m_score = 4\n")
    cfg = SegmentConfig.from_file(path)
    assert cfg.lapsed_cycles == 6.0 and cfg.vip_min_m_score == 4 and cfg.at_risk_cycles == 2.0


def test_rfm_scores_are_quintiles_of_the_rank() -> None:
    s = rfm_scores(pd.Series([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, np.nan]))
    assert s.tolist()[:10] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and np.isnan(s.iloc[10])
    assert rfm_scores(pd.Series([3.0, 3.0, 3.0])).tolist() == [1, 1, 1]  # ties share the lower score


def day(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def test_rfm_summary_calibration_and_holdout() -> None:
    occ = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "a", "b", "c"],
            "day": [
                day("2024-01-01"),
                day("2024-01-15"),
                day("2024-01-29"),
                day("2024-02-20"),
                day("2024-01-08"),
                day("2024-02-15"),
            ],
            "spend": [10.0, 20.0, 40.0, 5.0, 7.0, 9.0],
        }
    )
    s = rfm_summary(occ, end=day("2024-02-12"), holdout_end=day("2024-03-31")).set_index("user_id")
    assert list(s.index) == ["a", "b"]  # c's first purchase is after the calibration period
    assert s.loc["a", "x"] == 2 and s.loc["a", "t_x"] == pytest.approx(4.0)  # weeks 2 and 4
    assert s.loc["a", "T"] == pytest.approx(6.0) and s.loc["a", "m"] == pytest.approx(30.0)  # repeats only
    assert s.loc["a", "x_holdout"] == 1 and s.loc["a", "spend_holdout"] == 5.0
    assert s.loc["b", "x"] == 0 and np.isnan(s.loc["b", "m"]) and s.loc["b", "T"] == pytest.approx(5.0)


def test_purchase_occasions_one_per_customer_and_day(tmp_path: Path) -> None:
    ts = pd.to_datetime(
        ["2024-01-01 09:00", "2024-01-01 18:00", "2024-01-01 18:00", "2024-01-03 10:00", "2024-01-03 11:00"],
        utc=True,
    )
    pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u2"],
            "item_id": ["i1", "i2", "i1", "i2", "i1"],
            "event_type": ["purchase", "purchase", "purchase", "view", "purchase"],
            "timestamp": ts,
            "quantity": [1, 2, 1, 1, 3],
            "price": [10.0, None, 10.0, 99.0, 1.0],
            "order_id": ["o1", "o2", "o2", None, "o3"],
        }
    ).to_parquet(tmp_path / "events.parquet")
    pd.DataFrame({"item_id": ["i1", "i2"], "price": [8.0, 2.5]}).to_parquet(tmp_path / "catalog.parquet")
    occ = purchase_occasions(tmp_path / "events.parquet", tmp_path / "catalog.parquet")
    assert occ["user_id"].tolist() == ["u1", "u2"]  # the view is not a purchase
    u1 = occ.iloc[0]
    assert u1["orders"] == 2 and u1["spend"] == pytest.approx(10 + 2 * 2.5 + 10)  # catalogue price fills in
    assert occ.iloc[1]["spend"] == pytest.approx(3.0)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from features.workspace import Workspace

    root = tmp_path_factory.mktemp("segments") / "shop"
    generate(root, customers=600, items=200, days=120, seed=11, progress=False)
    build_features(Workspace.at(root), FeatureConfig())
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    code = "from serving.cli import app; app()"
    return subprocess.run(
        [sys.executable, "-c", code, "segments", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_segments_command_lists_every_customer_with_the_contract_columns(shop: Path, tmp_path: Path) -> None:
    proc = run_cli("--data", str(shop), "--out", str(tmp_path / "seg.csv"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    seg = pd.read_csv(tmp_path / "seg.csv", dtype={"user_id": str})
    assert list(seg.columns) == [
        "user_id",
        "segment",
        "recency_days",
        "frequency",
        "monetary",
        "p_alive",
        "expected_purchases_90d",
        "clv_90d",
    ]
    profiles = pd.read_parquet(shop / "features" / "profiles.parquet")
    assert sorted(seg["user_id"]) == sorted(profiles["user_id"])  # one row per customer
    assert summary["rows"] == len(seg) and sum(summary["segments"].values()) == len(seg)
    assert set(seg["segment"]) <= {"new", "active", "vip", "at_risk", "lapsed"}
    assert summary["bgnbd"]["r"] > 0 and summary["gamma_gamma"]["q"] > 1
    buyers = seg[seg["frequency"] > 0]
    assert buyers["p_alive"].between(0, 1).all() and (buyers["expected_purchases_90d"] >= 0).all()
    assert (buyers["clv_90d"] >= 0).all()
    assert seg.loc[seg["frequency"] == 0, "p_alive"].isna().all()  # no purchase, nothing to model
    # those who bought recently and often are more alive than those long silent
    recent = buyers[buyers["recency_days"] < buyers["recency_days"].quantile(0.25)]
    old = buyers[(buyers["recency_days"] > buyers["recency_days"].quantile(0.75)) & (buyers["frequency"] > 1)]
    assert recent["p_alive"].mean() > old["p_alive"].mean()


def test_segments_without_p_alive_rules_agree_with_the_profiles(shop: Path, tmp_path: Path) -> None:
    """features' profiles.parquet applies the same rules without a model: with the p_alive rules
    switched off, both lists must agree customer by customer."""
    out = tmp_path / "seg.parquet"
    proc = run_cli(
        "--data", str(shop), "--out", str(out), "--set", "at_risk_p_alive=0", "--set", "lapsed_p_alive=0"
    )
    assert proc.returncode == 0, proc.stderr
    seg = pd.read_parquet(out).set_index("user_id")["segment"]
    prof = pd.read_parquet(shop / "features" / "profiles.parquet").set_index("user_id")["segment"]
    assert (seg.sort_index() == prof.sort_index()).all()


def test_segments_filter_and_bad_input(shop: Path, tmp_path: Path) -> None:
    proc = run_cli("--data", str(shop), "--out", str(tmp_path / "lapsed.csv"), "--segment", "lapsed")
    assert proc.returncode == 0, proc.stderr
    lapsed = pd.read_csv(tmp_path / "lapsed.csv")
    assert len(lapsed) > 0 and set(lapsed["segment"]) == {"lapsed"}
    bad = run_cli("--data", str(shop), "--out", str(tmp_path / "x.csv"), "--segment", "sleepy")
    assert bad.returncode == 2 and "unknown segment 'sleepy'" in bad.stderr
    bad = run_cli("--data", str(shop), "--out", str(tmp_path / "x.csv"), "--set", "lapsed_days=3")
    assert bad.returncode == 2 and "unknown segment config key" in bad.stderr
    # a fixed purchase cycle instead of the learned one: a longer cycle lapses fewer customers
    fixed = run_cli(
        "--data",
        str(shop),
        "--out",
        str(tmp_path / "lapsed60.csv"),
        "--segment",
        "lapsed",
        "--set",
        "cycle_days=60",
    )
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout.strip().splitlines()[-1])["cycle_days"] == 60
    assert len(pd.read_csv(tmp_path / "lapsed60.csv")) < len(lapsed)
    missing = run_cli("--data", str(tmp_path), "--out", str(tmp_path / "x.csv"))
    assert missing.returncode == 2 and "features build" in missing.stderr
