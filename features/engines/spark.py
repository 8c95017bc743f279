"""Spark: the same definitions, translated to Spark SQL (features.engines.dialect), on a local
session (`local[2]`) or a cluster (`--master` / $SPARK_MASTER).

The workspace must be a directory that the driver and every executor see at the same path (local
mode: always; a cluster: a shared filesystem). Results are written by the executors as part files
and joined by the driver into the single Parquet file per table that the rest of shoprec reads
(the parts are concatenated in partition order, which is the query's order), streaming one row
group at a time. No pandas on this path: small results come back as Rows (`collect`), tables never
pass through the driver's Python as frames.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.engines import Engine
from features.engines.dialect import to_spark

# Shoprec's session defaults; `--spark-conf KEY=VALUE` overrides any of them.
DEFAULT_CONF: dict[str, str] = {
    "spark.app.name": "shoprec-features",
    # Times are epoch seconds in the definitions; the session time zone only decides how timestamps
    # are read and written, which must be UTC as in the DuckDB engine.
    "spark.sql.session.timeZone": "UTC",
    # TIMESTAMP_MICROS writes timestamp[us, UTC] like DuckDB (Spark's default INT96 is legacy).
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # A feature build's shuffles are small on one machine; a cluster sets its own (or AQE coalesces).
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "2g",
}


def spark_missing() -> str | None:
    """Why Spark cannot run here (no pyspark, no Java), or None when it can."""
    import importlib.util
    import os

    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install 'shoprec[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Java 17 is not installed (Debian: apt-get install openjdk-17-jre-headless; `make java`)"
    return None


# Settings the definitions' answers depend on: set on any session the engine runs on (a session it
# did not start gets its own values back on close).
REQUIRED_SQL_CONF: dict[str, str] = {
    key: DEFAULT_CONF[key] for key in ("spark.sql.session.timeZone", "spark.sql.parquet.outputTimestampType")
}


class SparkEngine(Engine):
    """A SparkSession running the translated definitions. Working tables are cached DataFrames
    (memory, spilling to local disk) registered as temp views."""

    name = "spark"

    def __init__(self, spark: Any, *, owned: bool = False) -> None:
        self.spark = spark
        self._owned = owned
        self._cached: dict[str, Any] = {}
        self._names: set[str] = set()
        self._restore = {key: spark.conf.get(key, None) for key in REQUIRED_SQL_CONF}
        for key, value in REQUIRED_SQL_CONF.items():
            spark.conf.set(key, value)

    @classmethod
    def start(cls, master: str | None, conf: dict[str, str]) -> SparkEngine:
        """Use this process's active SparkSession if there is one, else start one on `master`
        (default local[2]) with DEFAULT_CONF updated by `conf`."""
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            return cls(active, owned=False)
        builder = SparkSession.builder.master(master or "local[2]")
        for key, value in {**DEFAULT_CONF, **conf}.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        return cls(spark, owned=True)

    def sql(self, sql: str) -> Any:
        return self.spark.sql(to_spark(sql))

    def source(self, name: str, path: Path, *, row_number: bool = False) -> None:
        df = self.spark.read.parquet(str(path))
        if row_number:
            # The row's index in its file (Parquet only, Spark >= 3.5): the input order, as
            # DuckDB's file_row_number. Workspace tables are single files.
            df = df.selectExpr("*", "_metadata.row_index AS file_row_number")
        self._register(name, df)

    def table(self, name: str, sql: str) -> int:
        from pyspark import StorageLevel

        df = self.sql(sql).persist(StorageLevel.MEMORY_AND_DISK)
        n = df.count()
        self._register(name, df)
        self._cached[name] = df
        return int(n)

    def view(self, name: str, sql: str) -> None:
        self._register(name, self.sql(sql))

    def _register(self, name: str, df: Any) -> None:
        self.drop(name)
        df.createOrReplaceTempView(name)
        self._names.add(name)

    def drop(self, name: str) -> None:
        df = self._cached.pop(name, None)
        if df is not None:
            df.unpersist()
        if name in self._names:
            self.spark.catalog.dropTempView(name)
            self._names.discard(name)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.sql(sql).collect()]

    def write(self, sql: str, path: Path) -> int:
        parts_dir = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.parts")
        try:
            self.sql(sql).write.mode("overwrite").option("compression", "zstd").parquet(str(parts_dir))
            return _join_parts(parts_dir, path)
        finally:
            shutil.rmtree(parts_dir, ignore_errors=True)

    def columns(self, name: str) -> list[str]:
        return list(self.spark.table(name).columns)

    def close(self) -> None:
        for name in list(self._names | set(self._cached)):
            self.drop(name)
        if self._owned:
            self.spark.stop()
            return
        for key, value in self._restore.items():
            if value is None:
                self.spark.conf.unset(key)
            else:
                self.spark.conf.set(key, value)


def _join_parts(parts_dir: Path, path: Path) -> int:
    """Concatenate Spark's part files (in partition order) into one Parquet file; returns the rows."""
    parts = sorted(parts_dir.glob("part-*.parquet"))
    if not parts:  # pragma: no cover - Spark writes at least one (possibly empty) part
        raise RuntimeError(f"Spark wrote no part files into {parts_dir}")
    # Every column nullable and no Spark metadata: the schema DuckDB writes for the same query.
    schema = _nullable(pq.read_schema(parts[0]).remove_metadata())
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for part in parts:
            f = pq.ParquetFile(part)
            for i in range(f.num_row_groups):
                group = f.read_row_group(i).cast(schema)
                writer.write_table(group)
                n += group.num_rows
    tmp.replace(path)
    return n


def _nullable(schema: pa.Schema) -> pa.Schema:
    def field(f: pa.Field) -> pa.Field:
        t = f.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            t = pa.list_(field(t.value_field)) if pa.types.is_list(t) else pa.large_list(field(t.value_field))
        return pa.field(f.name, t, nullable=True)

    return pa.schema([field(f) for f in schema])
