"""The engine layer without Spark: the DuckDB -> Spark translation of the feature definitions, and
the pandas-free readers training uses. (Spark itself: tests/test_engine_parity.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import FeatureConfig
from features.engines.dialect import DialectError, to_spark
from features.engines.duck import DuckDBEngine
from features.workspace import Workspace


def test_ordered_list_keeps_its_order_on_spark() -> None:
    """SQLGlot's own Spark output drops the ORDER BY (COLLECT_LIST(x)); ours sorts by the keys."""
    sql = to_spark("SELECT u, list(item ORDER BY ts, rn) AS s FROM ev GROUP BY u")
    assert "ARRAY_SORT(COLLECT_LIST(STRUCT(ts AS k0, rn AS k1, item AS v)))" in sql
    assert to_spark("SELECT list(DISTINCT i ORDER BY i) FROM t").startswith(
        "SELECT ARRAY_SORT(COLLECT_SET(i))"
    )


def test_translations_that_sqlglot_lacks() -> None:
    sql = to_spark("SELECT s[1:n], list_where(a, m), epoch_us(t) // 1000000, x / 86400.0 FROM z")
    assert "SLICE(s, 1, (n) - (1) + 1)" in sql
    assert "FILTER(a, (_x, _i) -> (m)[_i])" in sql
    assert "UNIX_MICROS(t) DIV 1000000" in sql
    assert "86400.0D" in sql  # a DOUBLE literal, not Spark's DECIMAL
    assert "PERCENTILE_DISC(0.9D) WITHIN GROUP (ORDER BY ts)" in to_spark(
        "SELECT quantile_disc(ts, 0.9) FROM ev"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT hash(u, i) FROM t",  # exists on Spark with other values
        "SELECT list_zip(a, b) FROM t",  # no Spark spelling here
        "SELECT list(x ORDER BY y DESC) FROM t",
    ],
)
def test_definitions_that_would_differ_are_refused(sql: str) -> None:
    with pytest.raises(DialectError):
        to_spark(sql)


class _Recording(DuckDBEngine):
    """The DuckDB engine that also translates every statement it runs for Spark."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.translated: list[str] = []

    def _both(self, sql: str) -> None:
        self.translated.append(to_spark(sql))

    def table(self, name: str, sql: str) -> int:
        self._both(sql)
        return super().table(name, sql)

    def view(self, name: str, sql: str) -> None:
        self._both(sql)
        super().view(name, sql)

    def rows(self, sql: str):  # noqa: ANN201
        self._both(sql)
        return super().rows(sql)

    def write(self, sql: str, path: Path) -> int:
        self._both(sql)
        return super().write(sql, path)


def test_every_definition_of_the_build_translates(tmp_path: Path) -> None:
    """Every statement a real build runs has a Spark translation (no Java needed to find out)."""
    from features.build import build_from_validated
    from features.synthetic import generate
    from features.validate import validate_workspace

    ws = Workspace.at(tmp_path / "shop")
    generate(ws.root, customers=60, items=120, days=40, seed=2, progress=False)
    validate_workspace(ws)
    config = FeatureConfig(threads=1)
    eng = _Recording(config, tmp_path / "spill")
    try:
        summary = build_from_validated(ws, config, engine=eng)
    finally:
        eng.close()
    assert summary["nnz"] > 0
    assert len(eng.translated) > 60


def test_training_reads_features_without_pandas_frames(tmp_path: Path) -> None:
    """read_matrix/read_sequences (Arrow) give what the pandas readers gave."""
    from features.build import build_features
    from features.synthetic import generate
    from training.data import coo_to_csr, read_matrix, read_sequences, sequences_by_user

    ws = Workspace.at(tmp_path / "shop")
    generate(ws.root, customers=50, items=100, days=40, seed=4, progress=False)
    s = build_features(ws, FeatureConfig(threads=1))
    n_users, n_items = s["features"]["users"], s["features"]["items"]
    a = read_matrix(ws.feature("interactions"), n_users, n_items)
    b = coo_to_csr(pd.read_parquet(ws.feature("interactions")), n_users, n_items)
    assert a.nnz > 0 and (a != b).nnz == 0
    items, ts = read_sequences(ws.feature("sequences"), n_users)
    items2, ts2 = sequences_by_user(pd.read_parquet(ws.feature("sequences")), n_users)
    assert sum(len(x) for x in items) > 0
    assert all(np.array_equal(x, y) for x, y in zip(items, items2, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(ts, ts2, strict=True))


def test_cli_refuses_an_unknown_engine(tmp_path: Path) -> None:
    from serving.cli import app

    r = CliRunner().invoke(app, ["features", "build", "--data", str(tmp_path), "--engine", "trino"])
    assert r.exit_code == 2
    assert "--engine must be one of duckdb, spark" in r.output


def test_cli_checks_spark_settings_and_java_before_starting(tmp_path: Path, monkeypatch) -> None:
    from serving.cli import app

    r = CliRunner().invoke(
        app, ["features", "build", "--data", str(tmp_path), "--engine", "spark", "--spark-conf", "no-equals"]
    )
    assert r.exit_code == 2 and "--spark-conf must look like KEY=VALUE" in r.output
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    monkeypatch.delenv("JAVA_HOME", raising=False)
    r = CliRunner().invoke(app, ["features", "build", "--data", str(tmp_path), "--engine", "spark"])
    assert r.exit_code == 2 and "Java 17 is not installed" in r.output


def test_a_grouping_run_in_slices_of_customers_builds_the_same_features(tmp_path: Path) -> None:
    """DuckDB cannot spill an ordered list per customer, so past `rows_per_group` events it builds
    the sequences one slice of customers at a time; every feature file is the same as in one go."""
    from features.build import build_from_validated
    from features.synthetic import generate
    from features.validate import validate_workspace

    config = FeatureConfig(threads=1)
    built = {}
    for name, rows_per_group in (("whole", None), ("sliced", 300)):
        ws = Workspace.at(tmp_path / name)
        generate(ws.root, customers=80, items=120, days=40, seed=3, progress=False)
        validate_workspace(ws)
        eng = DuckDBEngine(config, tmp_path / f"spill-{name}")
        if rows_per_group:
            eng.rows_per_group = rows_per_group
        parts = []
        real = eng.con.execute

        def counting(sql: str, *a, _real=real, _parts=parts):  # noqa: ANN202
            if sql.startswith("INSERT INTO seq_all"):
                _parts.append(sql)
            return _real(sql, *a)

        eng.con = type("Con", (), {"execute": staticmethod(counting), "close": eng.con.close})()
        try:
            summary = build_from_validated(ws, config, engine=eng)
        finally:
            eng.close()
        built[name] = (ws, summary, len(parts))
    (whole, s1, n1), (sliced, s2, n2) = built["whole"], built["sliced"]
    assert n1 == 0 and n2 >= 2, (n1, n2)  # the slices did run
    assert s1["events"] == s2["events"] > 3 * 300
    files = sorted(p.name for p in whole.features_dir.glob("*.parquet"))
    assert "sequences.parquet" in files and files == sorted(
        p.name for p in sliced.features_dir.glob("*.parquet")
    )
    for f in files:
        a, b = pd.read_parquet(whole.features_dir / f), pd.read_parquet(sliced.features_dir / f)
        pd.testing.assert_frame_equal(a, b, obj=f)
