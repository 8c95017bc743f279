"""The embedded engine: one in-memory DuckDB connection that runs the definitions as written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from features.config import FeatureConfig
from features.engines import Engine
from features.transforms import copy_parquet, sql_str


class DuckDBEngine(Engine):
    """DuckDB with `config.threads` threads and `config.memory_limit`, spilling to `spill_dir`.
    Working tables are TEMP tables (columnar, compressed, spilled past the memory limit)."""

    name = "duckdb"

    def __init__(self, config: FeatureConfig, spill_dir: Path) -> None:
        con = duckdb.connect(":memory:")
        threads = config.threads or os.cpu_count() or 1
        con.execute(f"SET threads = {int(threads)}")
        con.execute(f"SET memory_limit = {sql_str(config.memory_limit)}")
        con.execute(f"SET temp_directory = {sql_str(str(spill_dir))}")
        con.execute("SET TimeZone = 'UTC'")
        # Outputs are explicitly ORDERed where order matters; everywhere else DuckDB may stream freely.
        con.execute("SET preserve_insertion_order = false")
        self.con = con
        self._kinds: dict[str, str] = {}
        # rows of a per-customer ordered grouping that fit the memory limit (10M at 2 GB: measured)
        self.rows_per_group = max(1_000_000, int(5_000_000 * _gigabytes(config.memory_limit)))

    def source(self, name: str, path: Path, *, row_number: bool = False) -> None:
        extra = ", file_row_number = true" if row_number else ""
        self._define("VIEW", name, f"SELECT * FROM read_parquet({sql_str(str(path))}{extra})")

    def table(self, name: str, sql: str) -> int:
        self._define("TABLE", name, sql)
        return self.count(name)

    def table_by_user(self, name: str, sql_of: Callable[[str], str], source: str, rows: int) -> int:
        # An ordered list per customer (`list(x ORDER BY ts)`) keeps every row of the grouping in
        # memory: DuckDB cannot spill it, and at 60M events it outgrew the 2 GB limit. The query
        # runs on one slice of the customers at a time, each small enough to fit.
        parts = max(1, -(-rows // self.rows_per_group))
        if parts == 1:
            return self.table(name, sql_of(source))

        def part(i: int) -> str:
            return sql_of(f"(SELECT * FROM {source} WHERE user_idx % {parts} = {i})")

        self._define("TABLE", name, part(0))
        for i in range(1, parts):
            self.con.execute(f"INSERT INTO {name} {part(i)}")
        return self.count(name)

    def view(self, name: str, sql: str) -> None:
        self._define("VIEW", name, sql)

    def _define(self, kind: str, name: str, sql: str) -> None:
        self._forget(name)
        self.con.execute(f"CREATE TEMP {kind} {name} AS {sql}")
        self._kinds[name] = kind

    def drop(self, name: str) -> None:
        self._forget(name)

    def _forget(self, name: str) -> None:
        kind = self._kinds.pop(name, None)
        if kind is not None:
            self.con.execute(f"DROP {kind} IF EXISTS {name}")

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()

    def write(self, sql: str, path: Path) -> int:
        return copy_parquet(self.con, sql, path)

    def columns(self, name: str) -> list[str]:
        return [row[0] for row in self.con.execute(f"DESCRIBE SELECT * FROM {name}").fetchall()]

    def close(self) -> None:
        self.con.close()


def _gigabytes(limit: str) -> float:
    """DuckDB's memory limit ("2GB", "512MB", "1.5GiB") in GB; 2 when it cannot be read."""
    import re

    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B)?\s*", limit, re.IGNORECASE)
    if not m:
        return 2.0
    unit = (m.group(2) or "GB").upper().replace("I", "")
    return float(m.group(1)) * {"KB": 1e-6, "MB": 1e-3, "GB": 1.0, "TB": 1e3}[unit]
