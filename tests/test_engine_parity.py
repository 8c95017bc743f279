"""Engine parity: `features build --engine spark` gives what `--engine duckdb` gives.

One small synthetic shop, salted with bad rows of every kind the rules catch, is built on both
engines from the same raw tables with the same build time. Every file the two builds write is
compared: validated tables and quarantines exactly (same rows, same reasons, same text), every
feature table (interaction matrix, sequences, baskets, profiles and segments, sizes, item statistics,
re-buy rates, the three splits with their own statistics and segments) value by value, floats to
1e-9 relative, and the JSON metadata. A definition added to features.transforms is covered
without touching this test: it compares whatever files the builds write.

The Spark tests share one SparkSession (local[2], two shuffle partitions) for the whole pytest
session. They need Java 17 (`make test` installs Debian's openjdk-17-jre-headless when `java` is
missing) and skip with that reason when it is absent.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.build import build_features
from features.config import FeatureConfig
from features.workspace import Workspace

NOW = datetime(2031, 1, 1, tzinfo=UTC)

# The module's first test also builds both workspaces (the fixture), and a JVM on a loaded 2-core
# machine is slow to warm up: a longer limit than the suite's 600 s, still bounded.
pytestmark = [pytest.mark.spark, pytest.mark.timeout(1800)]


def _append(path: Path, rows: list[dict]) -> None:
    table = pq.read_table(path)
    extra = pa.Table.from_pylist(rows, schema=table.schema)
    pq.write_table(pa.concat_tables([table, extra]), path)


def _salt(root: Path) -> None:
    """Bad rows (and odd but good ones) appended to the synthetic shop's raw tables."""
    events = pq.read_table(root / "events.parquet", columns=["user_id", "item_id", "timestamp"])
    u, i = events["user_id"][0].as_py(), events["item_id"][0].as_py()
    t = events["timestamp"][0].as_py()
    end = max(events["timestamp"].to_pylist())  # the generated shop's last event, before the salt
    good = {"user_id": u, "item_id": i, "event_type": "view", "timestamp": t, "quantity": 1, "price": 9.5}
    _append(
        root / "events.parquet",
        [
            {**good, "user_id": None},  # missing user_id
            {**good, "item_id": "   "},  # blank item_id (trimmed to nothing)
            {**good, "event_type": None},  # missing event_type
            {**good, "timestamp": None},  # missing timestamp
            {**good, "timestamp": NOW + timedelta(days=3)},  # in the future
            {**good, "quantity": 0, "price": -2.0},  # two reasons at once
            {**good, "user_id": f"  {u}\t", "event_type": " VIEW "},  # accepted: trimmed, lower-cased
            {**good, "event_type": "wishlist"},  # accepted: an unconfigured type weighs 0
            {**good, "event_type": "purchase", "price": float("nan"), "order_id": "o-x", "size": " M "},
        ],
    )
    catalog = pq.read_table(root / "catalog.parquet")
    first = catalog.slice(0, 1).to_pylist()[0]
    # A regular: eight orders of the first item's category, five days apart, so that every split's
    # training part holds customer re-buy intervals (customer_rebuy.parquet needs three).
    same = [r["item_id"] for r in catalog.to_pylist() if r["category"] == first["category"]]
    _append(
        root / "events.parquet",
        [
            {
                **good,
                "item_id": same[d % len(same)],
                "event_type": "purchase",
                "order_id": f"o-regular-{d}",
                "timestamp": end - timedelta(days=5 * d),
            }
            for d in range(1, 9)
        ],  # fmt: skip
    )
    _append(
        root / "catalog.parquet",
        [
            {**first, "title": "a repeat"},
            {**first, "item_id": "i-new", "gender": "x"},
            {**first, "item_id": None},
        ],
    )
    customers = pq.read_table(root / "customers.parquet")
    c0 = customers.slice(0, 1).to_pylist()[0]
    _append(
        root / "customers.parquet",
        [
            {**c0, "user_id": "c-old", "birth_year": 1800},
            {**c0, "user_id": "c-late", "signup_date": NOW + timedelta(days=1)},
        ],
    )
    stock = pq.read_table(root / "stock.parquet")
    s0 = stock.slice(0, 1).to_pylist()[0]
    _append(root / "stock.parquet", [{**s0, "quantity": -1}, s0])


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, spark) -> dict[str, Path]:
    from features.synthetic import generate

    base = tmp_path_factory.mktemp("parity")
    raw = base / "raw"
    generate(raw, customers=120, items=250, days=60, seed=11, progress=False)
    _salt(raw)
    roots = {}
    for engine in ("duckdb", "spark"):
        root = base / engine
        root.mkdir()
        for f in raw.glob("*.parquet"):
            shutil.copy(f, root / f.name)
        summary = build_features(Workspace.at(root), FeatureConfig(threads=1), now=NOW, engine=engine)
        assert summary["features"]["engine"] == engine
        roots[engine] = root
    return roots


def _files(root: Path, sub: str) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / sub).rglob("*.parquet"))


def _types(schema: pa.Schema) -> list[tuple[str, str]]:
    """Column names and types, nullability aside (DuckDB and Spark mark it differently)."""

    def bare(t: pa.DataType) -> str:
        return f"list<{bare(t.value_type)}>" if pa.types.is_list(t) else str(t)

    return [(f.name, bare(f.type)) for f in schema]


def _same_column(a: pa.ChunkedArray, b: pa.ChunkedArray, where: str) -> None:
    if pa.types.is_floating(a.type) or pa.types.is_floating(b.type):
        x, y = a.to_numpy(zero_copy_only=False).astype(float), b.to_numpy(zero_copy_only=False).astype(float)
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=where)
    else:
        assert a.to_pylist() == b.to_pylist(), where


def test_validated_tables_and_quarantine_are_identical(builds: dict[str, Path]) -> None:
    duck, spark = builds["duckdb"], builds["spark"]
    for sub in ("validated", "quarantine"):
        assert _files(duck, sub) == _files(spark, sub)
        for rel in _files(duck, sub):
            a, b = pq.read_table(duck / rel), pq.read_table(spark / rel)
            assert a.schema == b.schema, rel
            assert a.equals(b), rel
    q = pq.read_table(duck / "quarantine" / "events.parquet").to_pylist()
    reasons = {r["row_number"]: r["reason"] for r in q}
    assert len(q) == 6 and "quantity < 1; negative price" in reasons.values()  # the salt, caught
    assert {"missing user_id", "missing item_id", "missing event_type", "timestamp in the future"} <= set(
        reasons.values()
    )
    for table, n in (("catalog", 3), ("customers", 2), ("stock", 2)):
        assert pq.read_metadata(duck / "quarantine" / f"{table}.parquet").num_rows == n, table


def test_every_feature_table_is_the_same(builds: dict[str, Path]) -> None:
    duck, spark = builds["duckdb"], builds["spark"]
    files = _files(duck, "features")
    assert files == _files(spark, "features")
    assert len(files) >= 30  # every table of the build and its three splits
    for rel in files:
        a, b = pq.read_table(duck / rel), pq.read_table(spark / rel)
        assert _types(a.schema) == _types(b.schema), rel
        assert a.num_rows == b.num_rows, rel
        assert a.num_rows > 0 or rel.name in ("sizes.parquet",), rel
        for name in a.column_names:
            _same_column(a[name], b[name], f"{rel}:{name}")


def test_feature_metadata_is_the_same(builds: dict[str, Path]) -> None:
    duck, spark = builds["duckdb"], builds["spark"]
    metas = sorted(
        p.relative_to(duck) for p in (duck / "features").rglob("*.json") if p.name != "summary.json"
    )
    assert [m.name for m in metas].count("meta.json") == 3
    for rel in metas:
        assert json.loads((duck / rel).read_text()) == json.loads((spark / rel).read_text()), rel
    a = json.loads((duck / "features" / "summary.json").read_text())
    b = json.loads((spark / "features" / "summary.json").read_text())
    for s in (a, b):
        s["features"].pop("timings")
        s["features"].pop("engine")
    assert a == b


def test_spark_output_is_what_training_reads(builds: dict[str, Path]) -> None:
    """The Spark build feeds training as it is: the same matrix and sequences come out."""
    from training.data import load_split

    d, s = load_split(Workspace.at(builds["duckdb"]), "loo"), load_split(Workspace.at(builds["spark"]), "loo")
    assert (d.train.user_items != s.train.user_items).nnz == 0
    assert all(np.array_equal(x, y) for x, y in zip(d.train.sequences, s.train.sequences, strict=True))
    assert d.test.equals(s.test)
