"""Validation on a cluster engine (Spark): the rules of features.validate, run where the data is.

The same checker SQL as the Arrow path (`features.validate._checker_sql`, DuckDB dialect, translated
for Spark) runs over the raw Parquet file on the engine; the engine writes the accepted rows
(`validated/<table>.parquet`, cast to the canonical Arrow schema) and the (row, reason) pairs of the
rejected ones. Only the quarantine's original values are read here, on the driver, from the row
groups of the raw file that hold a rejected row, and formatted by the same code as the Arrow path,
so both engines quarantine the same rows, with the same reasons and the same text.

Text is trimmed of leading and trailing whitespace in SQL here (a Java regular expression with
Unicode classes, close to Arrow's utf8_trim_whitespace on the Arrow path).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.engines import Engine
from features.errors import BuildError
from features.schemas import TABLE_SPECS, arrow_schema
from features.validate import _check_missing, _checker_sql, _is_text, _q, _quarantine_rows, with_defaults

# Leading/trailing whitespace, Unicode-aware (Java regex, run by Spark).
_TRIM = r"(?U)^\s+|\s+$"


def validate_on_engine(
    eng: Engine, path: Path, table: str, validated: Path, quarantine: Path, *, now: datetime
) -> dict[str, int]:
    """Validate the raw Parquet file `path` on `eng`; write `validated` and `quarantine` as
    features.validate.validate_file does. Returns input_rows/accepted/quarantined."""
    spec = TABLE_SPECS[table]
    try:
        raw_schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise BuildError(f"{path}: cannot read the file: {e}") from e
    names = [n.strip().lower() for n in raw_schema.names]
    if len(set(names)) != len(names):
        raise BuildError(f"{path}: duplicate column names {raw_schema.names}")
    schema = pa.schema([f.with_name(n) for f, n in zip(raw_schema, names, strict=True)])
    _check_missing(table, names, str(path))

    cols = []
    for original, name in zip(raw_schema.names, names, strict=True):
        if name not in {c.name for c in spec.columns}:
            continue
        value = (
            f"regexp_replace({_q(original)}, '{_TRIM}', '')"
            if _is_text(schema.field(name).type)
            else _q(original)
        )
        cols.append(f"{value} AS {_q(name)}")
    eng.source("__raw", path, row_number=True)
    eng.view("body", f"SELECT {', '.join(cols)}, file_row_number AS __row FROM __raw")
    n_in = eng.table("__checked", _checker_sql(table, schema, now, strings=True))
    validated.parent.mkdir(parents=True, exist_ok=True)
    quarantine.parent.mkdir(parents=True, exist_ok=True)
    try:
        canon = ", ".join(_q(c.name) for c in spec.columns)
        tmp = validated.with_name(validated.name + ".engine")
        eng.write(f"SELECT {canon} FROM __checked WHERE __reason IS NULL ORDER BY __row", tmp)
        n_ok = _cast_file(tmp, validated, arrow_schema(table), table)
        bad_path = quarantine.with_name(quarantine.name + ".rows")
        eng.write("SELECT __row, __reason FROM __checked WHERE __reason IS NOT NULL ORDER BY __row", bad_path)
        bad = pq.read_table(bad_path)
        bad_path.unlink()
    finally:
        for name in ("__checked", "body", "__raw"):
            eng.drop(name)
    q = _quarantine_from_raw(path, names, bad["__row"], bad["__reason"])
    tmp_q = quarantine.with_suffix(".parquet.tmp")
    pq.write_table(q, tmp_q)
    os.replace(tmp_q, quarantine)
    if n_ok + q.num_rows != n_in:  # a bug here, never the data's fault
        raise RuntimeError(f"{path}: {n_in} rows in, {n_ok} + {q.num_rows} out")
    return {"input_rows": n_in, "accepted": n_ok, "quarantined": q.num_rows}


def _cast_file(src: Path, dst: Path, schema: pa.Schema, table: str) -> int:
    """Rewrite the engine's output `src` as `dst` with exactly `schema` (Spark marks every column
    nullable and names list fields its own way) and the final rows' defaults
    (features.validate.with_defaults, as on the DuckDB path); returns the rows."""
    n = 0
    f = pq.ParquetFile(src)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for i in range(f.num_row_groups):
                group = with_defaults(table, f.read_row_group(i).select(schema.names).cast(schema))
                writer.write_table(group)
                n += group.num_rows
        os.replace(tmp, dst)
    finally:
        src.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return n


def _quarantine_from_raw(
    path: Path, names: list[str], rows: pa.ChunkedArray, reasons: pa.ChunkedArray
) -> pa.Table:
    """The quarantine table of the rejected rows `rows` (0-based file rows, sorted) with their
    reasons: original values read from only the raw row groups that hold one of them."""
    f = pq.ParquetFile(path)
    wanted = rows.to_numpy() if len(rows) else None
    parts = [_quarantine_rows(f.schema_arrow.empty_table().rename_columns(names), rows[:0], reasons[:0], 0)]
    start = 0
    for i in range(f.num_row_groups):
        end = start + f.metadata.row_group(i).num_rows
        if wanted is not None:
            lo, hi = wanted.searchsorted(start), wanted.searchsorted(end)
            if hi > lo:
                block = f.read_row_group(i).rename_columns(names)
                parts.append(_quarantine_rows(block, rows[lo:hi], reasons[lo:hi], start))
        start = end
    return pa.concat_tables(parts)
