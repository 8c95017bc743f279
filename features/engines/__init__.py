"""Where the feature definitions run: DuckDB (embedded, the default) or Spark (local or a cluster).

The feature build (features.build, features.split, features.validate) never talks to an engine
directly: it asks an `Engine` to register the input Parquet files as tables, to materialise working
tables and views from definitions, to return small results, and to write result tables to Parquet.
Every definition is one SQL statement in DuckDB's dialect (features.transforms); DuckDB runs it as
written, Spark runs its translation (features.engines.dialect.to_spark). So a new definition is a
function in features.transforms returning a SELECT, called from the build through the engine; it
runs on both engines without engine code, and the parity test (tests/test_engine_parity.py)
compares every file of the two builds.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from features.config import FeatureConfig

ENGINES: tuple[str, ...] = ("duckdb", "spark")


class Engine(ABC):
    """One feature build's SQL engine. Table and view names live for the engine's lifetime."""

    name: str

    @abstractmethod
    def source(self, name: str, path: Path, *, row_number: bool = False) -> None:
        """Register the Parquet file `path` as table `name`; with `row_number`, add the column
        `file_row_number` (0-based position in the file, the input order)."""

    @abstractmethod
    def table(self, name: str, sql: str) -> int:
        """Materialise the result of `sql` as working table `name` (replacing one of that name);
        returns its row count."""

    def table_by_user(self, name: str, sql_of: Callable[[str], str], source: str, rows: int) -> int:
        """Materialise `sql_of(source)`, a query that groups the rows of `source` by `user_idx`, as
        working table `name`; `rows` is the size of `source`. By default in one query (Spark
        spills a grouping by itself); an engine whose grouping must fit its memory runs it on
        disjoint sets of customers (the same rows in the end: a customer's group is never split)."""
        return self.table(name, sql_of(source))

    @abstractmethod
    def view(self, name: str, sql: str) -> None:
        """Define `name` as the (lazily evaluated) result of `sql`."""

    @abstractmethod
    def drop(self, name: str) -> None:
        """Forget table or view `name` and free what it held."""

    @abstractmethod
    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The result of `sql` as tuples (for small results: counts, cut-offs, medians)."""

    @abstractmethod
    def write(self, sql: str, path: Path) -> int:
        """Write the result of `sql` to the single Parquet file `path` (in the query's order);
        returns the number of rows written."""

    @abstractmethod
    def columns(self, name: str) -> list[str]:
        """The column names of table `name`."""

    def close(self) -> None:  # noqa: B027 - engines without resources need no close
        """Release what the engine holds (a DuckDB connection; a Spark session it started)."""

    def one(self, sql: str) -> tuple[Any, ...]:
        """The first row of `sql`."""
        return self.rows(sql)[0]

    def scalar(self, sql: str) -> Any:
        """The first value of the first row of `sql`."""
        return self.rows(sql)[0][0]

    def count(self, name: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {name}"))


@contextmanager
def open_engine(
    name: str,
    config: FeatureConfig,
    *,
    spill_dir: Path,
    master: str | None = None,
    spark_conf: dict[str, str] | None = None,
) -> Iterator[Engine]:
    """The engine `name` ("duckdb" or "spark") for one build, closed afterwards.

    DuckDB uses `config.threads` / `config.memory_limit` and spills to `spill_dir`. Spark connects to
    `master` (else $SPARK_MASTER, else local[2]) with `spark_conf` on top of shoprec's defaults
    (features.engines.spark.DEFAULT_CONF); a session that is already running in this process (a
    notebook, the tests) is used as it is.
    """
    from features.errors import BuildError

    if name == "duckdb":
        from features.engines.duck import DuckDBEngine

        engine: Engine = DuckDBEngine(config, spill_dir)
    elif name == "spark":
        from features.engines.spark import SparkEngine

        engine = SparkEngine.start(master or os.environ.get("SPARK_MASTER") or None, spark_conf or {})
    else:
        raise BuildError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    try:
        yield engine
    finally:
        engine.close()
