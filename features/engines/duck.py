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

AUTO_MIN_GB = 2
AUTO_BYTES_PER_EVENT = 64
AUTO_MAX_RAM_SHARE = 0.5


class DuckDBEngine(Engine):
    """DuckDB with `config.threads` threads and `config.memory_limit`, spilling to `spill_dir`.
    Working tables are TEMP tables (columnar, compressed, spilled past the memory limit)."""

    name = "duckdb"

    def __init__(self, config: FeatureConfig, spill_dir: Path) -> None:
        con = duckdb.connect(":memory:")
        threads = config.threads or os.cpu_count() or 1
        con.execute(f"SET threads = {int(threads)}")
        self._auto = config.memory_limit.strip().lower() == "auto"
        limit = f"{AUTO_MIN_GB}GB" if self._auto else config.memory_limit
        con.execute(f"SET memory_limit = {sql_str(limit)}")
        con.execute(f"SET temp_directory = {sql_str(str(spill_dir))}")
        con.execute("SET TimeZone = 'UTC'")
        # Outputs are explicitly ORDERed where order matters; everywhere else DuckDB may stream freely.
        con.execute("SET preserve_insertion_order = false")
        self.con = con
        self._kinds: dict[str, str] = {}
        # rows of a per-customer ordered grouping that fit the memory limit (10M at 2 GB: measured)
        self.rows_per_group = max(1_000_000, int(5_000_000 * _gigabytes(limit)))

    def size_for(self, events: int) -> None:
        # memory_limit "auto": 2 GB up to ~30M events, then 64 bytes an event (a whole-column
        # aggregate such as the time split's quantile holds every timestamp: 100M events did not
        # fit 2 GB), never more than half the machine's memory.
        if not self._auto:
            return
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        gb = min(max(AUTO_MIN_GB, events * AUTO_BYTES_PER_EVENT / 1e9), AUTO_MAX_RAM_SHARE * ram_gb)
        self.con.execute(f"SET memory_limit = '{gb:.1f}GB'")
        self.rows_per_group = max(1_000_000, int(5_000_000 * gb))

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
    """A DuckDB memory size ("2GB", "512MB", "1.8 GiB") in GB (10^9 bytes); 2 when unreadable."""
    import re

    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT])(i?)B?\s*", limit, re.IGNORECASE)
    if not m:
        return 2.0
    power = "KMGT".index(m.group(2).upper()) + 1
    base = 1024 if m.group(3) else 1000
    return float(m.group(1)) * base**power / 1e9
