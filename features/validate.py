"""Validation and quarantine: raw tables in, `validated/<table>.parquet` + `quarantine/<table>.parquet` out.

Every raw row ends up in exactly one of the two files, so `input_rows = accepted + quarantined`
holds for every table on every run (CONTRACT: bad rows never stop a run and are never dropped
silently).

* `validated/<table>.parquet` holds the accepted rows with the canonical columns and Arrow types of
  `features.schemas.arrow_schema(table)` (docs/workspace.md), in input order. Columns that the raw
  table lacks are filled with their default (null; `quantity` 1; stock `size` ""); columns that the
  contract does not know are dropped.
* `quarantine/<table>.parquet` holds the rejected rows: every original column as a string (so a
  value that could not be parsed is still there to look at), `reason` (every rule the row broke,
  joined with "; ") and `row_number` (1 = the first data row of the file; in a CSV that is line 2).

How: the rules are vectorised SQL expressions (one CASE per rule, joined into `reason`) that DuckDB
runs over Arrow blocks of 1M rows, streamed from the file and written block by block, so 10M events
need well under 1 GB (benchmarks/bench_validate.py). Text is trimmed, lower-cased and passed
through by Arrow, which is cheaper than a round trip of the strings through DuckDB. pandera's pandas
backend would need the whole table as one pandas frame, so it is not run over the rows here;
`features.schemas.pandera_schema` states the contract of the output instead, and the tests check
it. A missing required column or an unreadable file is not a row problem: it raises
`features.errors.BuildError` naming the file and the column.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from features import changelog
from features.engines import Engine
from features.errors import BuildError
from features.fold import upsert
from features.schemas import GENDERS, TABLE_SPECS, ColumnSpec, arrow_schema
from features.workspace import TABLES, Workspace

# Strings accepted as booleans (lower-cased, trimmed); anything else in a bool column is quarantined.
_TRUE = ("true", "t", "yes", "y", "1", "1.0")
_FALSE = ("false", "f", "no", "n", "0", "0.0")
# Epoch numbers above this are milliseconds: 1e11 seconds is the year 5138.
_EPOCH_MS_ABOVE = 1e11
# Larger quantities are data errors, and this keeps the cast to int64 exact.
_MAX_QUANTITY = 1e12
_MIN_BIRTH_YEAR = 1900


# Rows per block when streaming a large table: bounds memory (10M events stay well under 3 GB) and
# keeps DuckDB's per-query overhead negligible.
BLOCK_ROWS = 1 << 20


@dataclass(frozen=True)
class MalformedLine:
    """A CSV line that does not split into the header's fields: a bad row, not a bad file.
    `line` is its 1-based line number in the file (the header is line 1)."""

    line: int
    text: str
    expected: int
    actual: int


def open_blocks(
    path: Path, malformed: list[MalformedLine] | None = None
) -> tuple[pa.Schema, Iterator[pa.Table], int | None]:
    """Open a raw table file for streaming: (schema, blocks of rows in file order, row count or None).

    Parquet keeps its types; CSV is read with every column as a string so that validation, not the
    CSV reader's type guessing, decides what is malformed ("" stays ""). CSV lines with the wrong
    number of fields are left out of the blocks and appended to `malformed` as they are met (given
    `malformed`; else they are a BuildError). Column names are trimmed and lower-cased. Raises
    BuildError naming the file when it cannot be read (also mid-stream).
    """
    try:
        if path.suffix == ".parquet":
            pf = pq.ParquetFile(path)
            schema, total = pf.schema_arrow, pf.metadata.num_rows
            batches: Iterator[pa.RecordBatch] = pf.iter_batches(batch_size=BLOCK_ROWS)
        elif path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            if not header:
                raise BuildError(f"{path}: empty CSV file (no header row)")

            def on_invalid(row: pacsv.InvalidRow) -> str:
                if malformed is None:
                    return "error"
                malformed.append(
                    MalformedLine(row.number or 0, row.text, row.expected_columns, row.actual_columns)
                )
                return "skip"

            reader = pacsv.open_csv(
                path,
                # One parsing thread: only then does Arrow report the line number of a bad line.
                read_options=pacsv.ReadOptions(block_size=64 << 20, use_threads=False),
                parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in header}, strings_can_be_null=False
                ),
            )
            schema, total, batches = reader.schema, None, reader
        else:
            raise BuildError(f"{path}: unsupported file type (expected .parquet or .csv)")
    except BuildError:
        raise
    except (OSError, UnicodeDecodeError, pa.ArrowException, csv.Error) as e:
        raise BuildError(f"{path}: cannot read the file: {e}") from e
    names = [n.strip().lower() for n in schema.names]
    if len(set(names)) != len(names):
        raise BuildError(f"{path}: duplicate column names {schema.names}")
    schema = pa.schema([f.with_name(n) for f, n in zip(schema, names, strict=True)])

    def blocks() -> Iterator[pa.Table]:
        try:
            for batch in batches:
                yield pa.Table.from_batches([batch]).rename_columns(names)
        except (OSError, UnicodeDecodeError, pa.ArrowException) as e:
            raise BuildError(f"{path}: cannot read the file: {e}") from e

    return schema, blocks(), total


def _q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in(expr: str, values: tuple[str, ...]) -> str:
    return f"{expr} IN ({', '.join(_lit(v) for v in values)})"


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


# Kinds whose canonical value is text: Arrow computes those values (see _string_values), because
# handing 10M strings through DuckDB and back costs more than the checks themselves.
_STRING_KINDS = frozenset({"id", "event_type", "string", "lower", "size", "gender"})


def _column_sql(
    col: ColumnSpec, raw_type: pa.DataType | None, now_sql: str, now_year: int
) -> tuple[str, list[str]]:
    """SQL for one canonical column: (value expression, [reason expressions]).

    Each reason expression is `CASE WHEN <broken> THEN '<why>' END`, so it is NULL on a good row.
    `raw_type` is the column's Arrow type in the raw table, or None when the column is absent.
    """
    name = col.name
    if raw_type is None:  # absent optional column: its default, never a reason
        default = {"quantity": "1::BIGINT", "size": "''"}.get(col.kind, "NULL")
        return f"CAST({default} AS {_SQL_TYPES[col.kind]})", []

    c = _q(name)
    # `s`: the raw value, NULL when missing. Text arrives trimmed (by Arrow, see _check: 3x faster
    # than DuckDB's trim) and "" counts as missing; typed values (Parquet) are used as they are,
    # because formatting 10M timestamps as text costs seconds.
    text = _is_text(raw_type)
    s = f"NULLIF({c}, '')" if text else c
    s_text = s if text else f"CAST({c} AS VARCHAR)"
    reasons: list[str] = []

    def why(cond: str, msg: str) -> None:
        reasons.append(f"CASE WHEN {cond} THEN {_lit(msg)} END")

    numeric = pa.types.is_integer(raw_type) or pa.types.is_floating(raw_type) or pa.types.is_decimal(raw_type)
    d = f"CAST({c} AS DOUBLE)" if numeric else f"TRY_CAST({s_text} AS DOUBLE)"

    kind = col.kind
    if kind in ("id", "event_type"):
        why(f"{s} IS NULL", f"missing {name}")
        value = f"lower({s_text})" if kind == "event_type" else s_text
    elif kind in ("string", "lower"):
        value = f"lower({s_text})" if kind == "lower" else s_text
    elif kind == "size":
        value = f"COALESCE({s_text}, '')"
    elif kind == "gender":
        value = f"lower({s_text})"
        why(f"{s} IS NOT NULL AND NOT {_in(value, GENDERS)}", f"{name} not in {'/'.join(GENDERS)}")
    elif kind in ("timestamp", "timestamp_nullable"):
        if pa.types.is_timestamp(raw_type) or pa.types.is_date(raw_type):
            ts = f"CAST({c} AS TIMESTAMPTZ)"  # naive timestamps are read as UTC (session time zone)
        elif numeric:
            ts = f"to_timestamp(CASE WHEN abs({d}) > {_EPOCH_MS_ABOVE} THEN {d} / 1000 ELSE {d} END)"
            ts = f"CASE WHEN isfinite({d}) THEN {ts} END"
        else:
            ts = f"TRY_CAST({s_text} AS TIMESTAMPTZ)"
        value = ts
        if kind == "timestamp":
            why(f"{s} IS NULL", f"missing {name}")
        why(f"{s} IS NOT NULL AND {ts} IS NULL", f"unparsable {name}")
        if kind == "timestamp" or name == "signup_date":
            why(f"{ts} > {now_sql}", f"{name} in the future")
    elif kind in ("quantity", "stock_quantity", "year"):
        if kind == "stock_quantity":
            why(f"{s} IS NULL", f"missing {name}")
        why(f"{s} IS NOT NULL AND ({d} IS NULL OR NOT isfinite({d}))", f"{name} not a number")
        why(f"isfinite({d}) AND {d} <> trunc({d})", f"{name} not an integer")
        if kind == "year":
            why(
                f"isfinite({d}) AND ({d} < {_MIN_BIRTH_YEAR} OR {d} > {now_year})",
                f"{name} outside {_MIN_BIRTH_YEAR}..{now_year}",
            )
        else:
            low = 1 if kind == "quantity" else 0
            why(f"isfinite({d}) AND {d} < {low}", f"{name} < {low}")
            why(f"isfinite({d}) AND {d} > {_MAX_QUANTITY:.0f}", f"{name} too large")
        as_int = f"TRY_CAST(CASE WHEN isfinite({d}) THEN {d} END AS BIGINT)"
        value = f"COALESCE({as_int}, 1)" if kind == "quantity" else as_int
    elif kind == "price":
        why(f"{s} IS NOT NULL AND ({d} IS NULL OR isinf({d}))", f"{name} not a number")
        why(f"{d} < 0", f"negative {name}")
        value = f"CASE WHEN isnan({d}) THEN NULL ELSE {d} END"  # NaN is how pandas spells "missing"
    elif kind == "bool":
        if pa.types.is_boolean(raw_type):
            value = c
        else:
            t = f"lower({s_text})"
            value = f"CASE WHEN {_in(t, _TRUE)} THEN true WHEN {_in(t, _FALSE)} THEN false END"
            why(f"{s} IS NOT NULL AND {value} IS NULL", f"{name} not a boolean")
    else:  # pragma: no cover - TABLE_SPECS and this function are kept in step
        raise ValueError(f"unknown column kind {kind!r}")
    return f"CAST({value} AS {_SQL_TYPES[kind]})", reasons


_SQL_TYPES: dict[str, str] = {
    "id": "VARCHAR",
    "string": "VARCHAR",
    "lower": "VARCHAR",
    "event_type": "VARCHAR",
    "size": "VARCHAR",
    "gender": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "timestamp_nullable": "TIMESTAMPTZ",
    "quantity": "BIGINT",
    "stock_quantity": "BIGINT",
    "year": "BIGINT",
    "price": "DOUBLE",
    "bool": "BOOLEAN",
}


def _check_missing(spec_name: str, names: list[str], where: str) -> None:
    missing = [name for name in TABLE_SPECS[spec_name].required if name not in names]
    if missing:
        raise BuildError(
            f"{where}: missing required column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(found: {', '.join(names) or 'none'})"
        )


def _checker_sql(
    table: str, schema: pa.Schema, now: datetime, *, unique: bool = True, strings: bool = False
) -> str:
    """One SELECT over `body` (the raw columns + `__row`) giving `__row`, `__reason` (NULL = good)
    and the canonical columns, for a raw table with `schema`. `unique=False` lets keys repeat
    (change-log rows: several updates of one item are normal). The text-valued canonical columns
    are selected only with `strings` (the engine path); the Arrow path computes them in Arrow."""
    spec = TABLE_SPECS[table]
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    now_sql = f"TIMESTAMPTZ {_lit(now.isoformat())}"
    selects, reasons = [], []
    for col in spec.columns:
        raw_type = schema.field(col.name).type if col.name in schema.names else None
        value, why = _column_sql(col, raw_type, now_sql, now.year)
        if strings or col.kind not in _STRING_KINDS:
            selects.append(f", {value} AS {_q(col.name)}")
        reasons.extend(why)
    reason = f"NULLIF(concat_ws('; ', {', '.join(reasons)}), '')" if reasons else "NULL::VARCHAR"
    if spec.unique and unique:
        # Repeats of a key among otherwise good rows: the first occurrence wins, later ones are
        # quarantined. Rows that are bad anyway do not take the key from a later good row.
        # Key columns are text (id, size): compared as trimmed text, "" when absent or empty.
        keys = [
            f"COALESCE(NULLIF(CAST({_q(k)} AS VARCHAR), ''), '')" if k in schema.names else "''"
            for k in spec.unique
        ]
        selects.extend(f", {k} AS __k{i}" for i, k in enumerate(keys))
        inner = f"SELECT __row, {reason} AS __reason{''.join(selects)} FROM body"
        label = spec.unique[0] if len(spec.unique) == 1 else f"({', '.join(spec.unique)})"
        key_names = ", ".join(f"__k{i}" for i in range(len(keys)))
        names = ", ".join(_q(c.name) for c in spec.columns if strings or c.kind not in _STRING_KINDS)
        sql = (
            f"SELECT __row, CASE WHEN __reason IS NULL AND "
            f"row_number() OVER (PARTITION BY __reason IS NULL, {key_names} ORDER BY __row) > 1 "
            f"THEN {_lit('duplicate ' + label)} ELSE __reason END AS __reason"
            f"{', ' + names if names else ''} FROM ({inner}) checked ORDER BY __row"
        )
    else:
        sql = f"SELECT __row, {reason} AS __reason{''.join(selects)} FROM body"
    # Without a window DuckDB keeps input order through the projection (preserve_insertion_order),
    # so only the unique-key tables pay for a sort (~0.5 s per 1M rows).
    return sql


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET threads = {max(1, min(os.cpu_count() or 1, 4))}")
    return con


def _check(
    con: duckdb.DuckDBPyConnection, sql: str, raw: pa.Table, table: str, first_row: int
) -> tuple[pa.Table, pa.Table]:
    """Run the checker over one block of raw rows whose first row is row `first_row` of the file."""
    spec = TABLE_SPECS[table]
    # Only the needed columns go to DuckDB, plus the row number that ties results back to the input.
    body = raw.select([c.name for c in spec.columns if c.name in raw.column_names])
    for i, field in enumerate(body.schema):
        if _is_text(field.type):
            body = body.set_column(i, field.name, pc.utf8_trim_whitespace(body.column(i)))
    body = body.append_column(
        "__row", pa.array(np.arange(first_row, first_row + raw.num_rows, dtype=np.int64))
    )
    con.register("body", body)
    try:
        checked = con.sql(sql).to_arrow_table()
    finally:
        con.unregister("body")
    # Row i of `checked` is row i of `body`: projections keep order, the unique tables sort by __row.
    ok = pc.is_null(checked["__reason"])
    good_body = body.filter(ok)
    good = checked.filter(ok)
    columns = {}
    for col in spec.columns:
        if col.kind in _STRING_KINDS:
            raw_col = good_body[col.name] if col.name in good_body.column_names else None
            columns[col.name] = _string_values(raw_col, col.kind, good.num_rows)
        else:
            columns[col.name] = good[col.name]
    accepted = pa.table(columns).cast(arrow_schema(table))
    bad = checked.filter(pc.invert(ok)).select(["__row", "__reason"])
    return accepted, _quarantine_rows(raw, bad["__row"], bad["__reason"], first_row)


def _string_values(column: pa.ChunkedArray | None, kind: str, n: int) -> pa.ChunkedArray:
    """Canonical text of a string-kind column (already trimmed when it was text): "" -> null,
    lower-cased where the kind says so, size null -> "" (unsized); an absent column -> defaults."""
    if column is None:
        return pa.chunked_array([pa.array([""] * n if kind == "size" else [None] * n, pa.string())])
    if not _is_text(column.type):
        column = pc.utf8_trim_whitespace(column.cast(pa.string()))
    column = column.cast(pa.string())
    column = pc.if_else(pc.greater(pc.utf8_length(column), 0), column, pa.scalar(None, pa.string()))
    if kind in ("event_type", "lower", "gender"):
        column = pc.utf8_lower(column)
    if kind == "size":
        column = pc.fill_null(column, "")
    return column


def validate_table(
    raw: pa.Table, table: str, *, now: datetime, source: str | None = None, unique: bool = True
) -> tuple[pa.Table, pa.Table]:
    """Split one raw table into (accepted, quarantined). Pure: Arrow in, Arrow out.

    raw: the table as read (any column types; CSV columns as strings), n rows.
    accepted: rows that pass every rule, typed as `arrow_schema(table)`, in input order.
    quarantined: the other rows, original columns cast to string + `reason` + `row_number` (1-based).
    len(accepted) + len(quarantined) == n always. Raises BuildError when a required column is
    missing (`source` names the file in the message). `unique=False`: repeated keys are not
    quarantined (change-log updates).
    """
    _check_missing(table, raw.column_names, source or f"{table} table")
    con = _connect()
    try:
        return _check(con, _checker_sql(table, raw.schema, now, unique=unique), raw, table, 0)
    finally:
        con.close()


def with_defaults(table: str, accepted: pa.Table) -> pa.Table:
    """Defaults that hold only once a row is final (not for a change-log update, where null means
    "not given"): a catalogue item without `active` is active."""
    if table == "catalog" and "active" in accepted.column_names:
        i = accepted.schema.get_field_index("active")
        filled = pc.fill_null(accepted.column(i), True)
        return accepted.set_column(i, accepted.schema.field(i), filled)
    return accepted


def _quarantine_rows(
    raw: pa.Table, rows: pa.ChunkedArray, reasons: pa.ChunkedArray, first_row: int
) -> pa.Table:
    """The rejected rows of `raw` (a block starting at file row `first_row`) as strings, with their
    reason and 1-based row number in the file."""
    picked = raw.take(pc.subtract(rows, first_row))
    columns = {name: _as_strings(picked[name]) for name in raw.column_names}
    columns["reason"] = reasons.cast(pa.string())
    columns["row_number"] = pc.add(rows, 1).cast(pa.int64())
    return pa.table(columns)


def _as_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as text: what the user wrote, for a person to read next to the reason."""
    try:
        return column.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested types: fall back to Python repr
        return pa.chunked_array(
            [pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())]
        )


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Write atomically: a crash mid-write never leaves a half file that a later stage would read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def validate_file(
    path: Path,
    table: str,
    validated: Path,
    quarantine: Path,
    *,
    now: datetime,
    extra: pa.Table | None = None,
) -> dict[str, int]:
    """Validate one raw file block by block, writing `validated` and `quarantine` (atomically).

    Tables with a unique key (catalog, stock, customers) are checked whole, since a repeat may sit
    in any block; events stream in blocks of BLOCK_ROWS. `extra`: rows already validated
    elsewhere (the change log's events) written after the file's rows. Returns
    input_rows/accepted/quarantined of the file alone.
    """
    spec = TABLE_SPECS[table]
    malformed: list[MalformedLine] = []
    schema, blocks, total = open_blocks(path, malformed)
    _check_missing(table, schema.names, str(path))
    if spec.unique:
        blocks = iter([pa.concat_tables([schema.empty_table(), *blocks])])
    sql = _checker_sql(table, schema, now)
    n_in = n_ok = 0
    bad_parts = [
        _quarantine_rows(
            schema.empty_table(), pa.chunked_array([], pa.int64()), pa.chunked_array([], pa.string()), 0
        )
    ]
    validated.parent.mkdir(parents=True, exist_ok=True)
    tmp = validated.with_name(validated.name + ".tmp")
    con = _connect()
    try:
        # Parquet encoding of block k runs in a thread while block k+1 is checked (Arrow and DuckDB
        # release the GIL): one block in flight, so memory stays bounded.
        with (
            pq.ParquetWriter(tmp, arrow_schema(table)) as writer,
            ThreadPoolExecutor(1) as pool,
            tqdm(total=total, desc=f"validate {table}", unit="row", unit_scale=True, disable=None) as bar,
        ):
            pending: Future[None] | None = None
            for block in blocks:
                ok, bad = _check(con, sql, block, table, n_in)
                ok = with_defaults(table, ok)
                if pending is not None:
                    pending.result()
                pending = pool.submit(writer.write_table, ok)
                if bad.num_rows:
                    bad_parts.append(bad)
                n_in += block.num_rows
                n_ok += ok.num_rows
                bar.update(block.num_rows)
            if pending is not None:
                pending.result()
            if extra is not None and extra.num_rows:
                writer.write_table(extra.select(arrow_schema(table).names).cast(arrow_schema(table)))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    os.replace(tmp, validated)
    bad_all = pa.concat_tables(bad_parts)
    if malformed:
        bad_all = _with_malformed(bad_all, malformed, schema.names)
        n_in += len(malformed)
    _write_parquet(bad_all, quarantine)
    if n_ok + bad_all.num_rows != n_in:  # a bug here, never the data's fault
        raise RuntimeError(f"{path}: {n_in} rows in, {n_ok} + {bad_all.num_rows} out")
    return {"input_rows": n_in, "accepted": n_ok, "quarantined": bad_all.num_rows}


def _with_malformed(bad: pa.Table, malformed: list[MalformedLine], names: list[str]) -> pa.Table:
    """Add malformed CSV lines to the quarantine and renumber: the parsed rows were numbered without
    them, so parsed row p is file row p + (malformed lines before it). Rows come out in file order.
    Assumes one line per row (a quoted value spanning lines shifts the numbers)."""
    m_rows = np.sort(np.array([m.line - 1 for m in malformed], dtype=np.int64))  # data-row numbers
    # The p-th parsed row is preceded by every malformed row i with m_rows[i] - i <= p.
    gaps = m_rows - np.arange(len(m_rows))
    parsed = bad["row_number"].to_numpy()
    renumbered = parsed + np.searchsorted(gaps, parsed, side="right")
    bad = bad.set_column(
        bad.schema.get_field_index("row_number"), "row_number", pa.array(renumbered, pa.int64())
    )
    columns: dict[str, list[str | None]] = {name: [] for name in names}
    for m in malformed:
        values = next(csv.reader([m.text]), [])
        if len(values) > len(names):  # the surplus stays visible in the last column
            values = values[: len(names) - 1] + [",".join(values[len(names) - 1 :])]
        for i, name in enumerate(names):
            columns[name].append(values[i] if i < len(values) else None)
    extra = pa.table(
        {
            **{name: pa.array(v, pa.string()) for name, v in columns.items()},
            "reason": pa.array(
                [f"malformed CSV line: {m.actual} fields, expected {m.expected}" for m in malformed]
            ),
            "row_number": pa.array([m.line - 1 for m in malformed], pa.int64()),
        }
    )
    both = pa.concat_tables([bad, extra.select(bad.column_names)])
    return both.take(pc.sort_indices(both["row_number"]))


def validate_workspace(
    ws: Workspace,
    *,
    now: datetime | None = None,
    changes: Mapping[str, int] | None = None,
    engine: Engine | None = None,
) -> dict[str, dict[str, Any]]:
    """Validate every raw table present in `ws` (only `events` is required) and fold in the change
    log (features.changelog) up to the positions `changes` (default: each log's current end).

    Writes `ws.validated(t)` and `ws.quarantine(t)` for each table present (an empty quarantine file
    when nothing was rejected) and removes stale ones of tables that are absent. The change log's
    rows are validated like raw rows (without the unique-key rule: updates repeat keys); bad ones
    go to `quarantine/changes/<table>.parquet`. Events from the log are appended to the validated
    events; catalog, stock and customers rows upsert by key (features.fold). The positions folded
    are written to `validated/changes_folded.json`. `now` is the build time that timestamps may not
    exceed (default: the current time, UTC).

    Returns {table: {"input_rows": n, "accepted": a, "quarantined": q}} with n == a + q, for the
    tables present; a table with change-log rows adds "sources" (the same three counts for the raw
    file and for the log) and, when upserted, "rows" (the validated table's rows). Raises BuildError
    when there are no events (raw or logged), a file cannot be read, or a required column is missing.

    With a Spark `engine`, raw Parquet tables are checked by the same rules on Spark
    (features.validate_engine); CSV tables, events with change-log rows to append, and every table
    on DuckDB stream through Arrow blocks here, which is also what numbers a CSV's malformed lines.
    """
    now = now or datetime.now(UTC)
    until = dict(changes) if changes is not None else changelog.positions(ws)
    until = {table: int(until.get(table, 0)) for table in TABLES}
    if ws.raw("events") is None and not until["events"]:
        raise BuildError(
            f"{ws.root}: no events table (expected events.parquet or events.csv, or events in "
            f"{changelog.log_path(ws, 'events').relative_to(ws.root)})"
        )
    summary: dict[str, dict[str, Any]] = {}
    for table in TABLES:
        path = ws.raw(table)
        logged, log_counts = _validate_changes(ws, table, until[table], now)
        if path is None and logged is None:
            for stale in (ws.validated(table), ws.quarantine(table)):
                stale.unlink(missing_ok=True)
            continue
        counts = _validate_with_log(ws, table, path, logged, now, engine)
        if log_counts is not None:
            sources = {**({path.name: counts} if path is not None else {}), _log_name(table): log_counts}
            counts = {
                k: sum(c[k] for c in sources.values()) for k in ("input_rows", "accepted", "quarantined")
            }
            counts["sources"] = sources
            if TABLE_SPECS[table].unique:
                counts["rows"] = pq.read_metadata(ws.validated(table)).num_rows
        summary[table] = counts
    folded = ws.validated_dir / CHANGES_FOLDED
    folded.parent.mkdir(parents=True, exist_ok=True)
    tmp = folded.with_name(folded.name + ".tmp")
    tmp.write_text(json.dumps(until, indent=2))
    os.replace(tmp, folded)
    return summary


# `validated/changes_folded.json`: {table: change-log position} the validated tables include.
CHANGES_FOLDED = "changes_folded.json"


def _log_name(table: str) -> str:
    return f"changes/{table}.jsonl"


def _validate_with_log(
    ws: Workspace,
    table: str,
    path: Path | None,
    logged: pa.Table | None,
    now: datetime,
    engine: Engine | None,
) -> dict[str, int]:
    """Validate the raw file (when present) into `ws.validated(table)` and fold `logged` (the log's
    accepted rows) in: appended for events, upserted by key for the others. Returns the raw
    file's counts (all zero when there is none)."""
    counts = {"input_rows": 0, "accepted": 0, "quarantined": 0}
    if path is None:
        ws.quarantine(table).unlink(missing_ok=True)  # the raw file's quarantine: there is none
    if TABLE_SPECS[table].unique:
        if path is not None:
            counts = _validate_raw(ws, table, path, now, engine)
        if logged is not None:
            base = pq.read_table(ws.validated(table)) if path is not None else None
            _write_parquet(with_defaults(table, upsert(base, logged, table)), ws.validated(table))
    elif path is not None:
        counts = _validate_raw(ws, table, path, now, engine, extra=logged)
    elif logged is not None:  # events from the log alone
        _write_parquet(logged, ws.validated(table))
    return counts


def _validate_raw(
    ws: Workspace, table: str, path: Path, now: datetime, engine: Engine | None, extra: pa.Table | None = None
) -> dict[str, int]:
    """The raw file's validation: on Spark for a Parquet file (nothing to append), else here."""
    if engine is not None and engine.name != "duckdb" and path.suffix == ".parquet" and extra is None:
        from features.validate_engine import validate_on_engine

        return validate_on_engine(engine, path, table, ws.validated(table), ws.quarantine(table), now=now)
    return validate_file(path, table, ws.validated(table), ws.quarantine(table), now=now, extra=extra)


def _validate_changes(
    ws: Workspace, table: str, until: int, now: datetime
) -> tuple[pa.Table | None, dict[str, int] | None]:
    """Validate the change log of `table` up to position `until`: (accepted rows in log order,
    counts), or (None, None) when the log holds no line there. Writes the rejected lines to
    `quarantine/changes/<table>.parquet`: every column as text, `reason`, `row_number` (the line
    number in the log), `position` (its byte offset) and `line` (the line as written)."""
    out = ws.quarantine_dir / "changes" / f"{table}.parquet"
    if until <= 0:
        out.unlink(missing_ok=True)
        return None, None
    rows, lines, malformed = changelog.read_for_build(ws, table, until)
    if not lines and not malformed:
        out.unlink(missing_ok=True)
        return None, None
    accepted, bad = validate_table(rows, table, now=now, source=_log_name(table), unique=False)
    # validate_table numbered the rows 1..n: tie them back to their lines in the log.
    picked = [lines[i - 1] for i in bad["row_number"].to_pylist()]
    quarantined = _changes_quarantine(bad.drop_columns(["row_number"]), picked, malformed)
    _write_parquet(quarantined, out)
    n_in = len(lines) + len(malformed)
    counts = {"input_rows": n_in, "accepted": accepted.num_rows, "quarantined": quarantined.num_rows}
    if accepted.num_rows + quarantined.num_rows != n_in:  # a bug here, never the data's fault
        raise RuntimeError(
            f"{_log_name(table)}: {n_in} lines in, {counts['accepted']} + {counts['quarantined']} out"
        )
    return accepted, counts


def _changes_quarantine(
    bad: pa.Table, picked: list[changelog.Line], malformed: list[tuple[changelog.Line, str]]
) -> pa.Table:
    """The rejected change-log lines, in log order: the rows that broke a rule (`bad`: columns as
    text + `reason`) and the lines that did not parse (columns null), each with its line number,
    byte offset and text."""

    def where(lines: list[changelog.Line]) -> dict[str, pa.Array]:
        return {
            "row_number": pa.array([line.number for line in lines], pa.int64()),
            "position": pa.array([line.offset for line in lines], pa.int64()),
            "line": pa.array([line.text.decode("utf-8", "replace") for line in lines], pa.string()),
        }

    ruled = pa.table({**{n: bad[n] for n in bad.column_names}, **where(picked)})
    unparsed = pa.table(
        {
            **{
                n: pa.nulls(len(malformed), ruled.schema.field(n).type)
                for n in bad.column_names
                if n != "reason"
            },
            "reason": pa.array([why for _, why in malformed], pa.string()),
            **where([line for line, _ in malformed]),
        }
    ).select(ruled.column_names)
    both = pa.concat_tables([ruled, unparsed])
    return both.take(pc.sort_indices(both["row_number"]))
