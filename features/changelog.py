"""The workspace's durable change log: what the service was told (`POST /events`, `/catalog`,
`/stock`, `/customers`, `/merge`) kept on disk, so nothing is lost on a restart and the next
`features build` learns from it.

One append-only file per table, `DIR/changes/<table>.jsonl`: one JSON object per line with the
table's contract columns (docs/workspace.md "The change log"), plus `_at` (when the line was
appended, UTC) and `_writer` (an optional tag of the appending process). Why JSON lines: an append
is one `write` of whole lines under an exclusive `flock`, then `fsync`, so several worker processes
append at once without interleaving and a row is on disk before `append` returns; a reader tails
the file from a byte offset without parsing what came before; a person can read it with `less`.
Parquet cannot be appended to, and SQLite would serialise every writer on one database file for
no gain over the lock.

Positions are byte offsets of line starts: `read(ws, table, since=p)` returns the rows after `p`
and the next position. The log is never rewritten, so positions stay valid for ever, with one
exception that keeps them valid too: `forget` overwrites a customer's lines with spaces of the same
length (a blank line is skipped by every reader).

Types: `append` coerces every value to the column's type (ids to text, timestamps to ISO UTC,
integers, floats, booleans) and refuses a batch with an unknown column or a value of the wrong
type (`ChangeLogError`, nothing written). What the contract's rules decide (a missing id, a
timestamp in the future, a negative price) is left to `features build`, which validates the log's
rows like raw rows and quarantines the bad ones with a reason. In catalog, stock and customers
rows a null (or absent) value means "not given": an update never clears a value, so
`{"item_id": "i1", "active": false}` hides an item and keeps its title and price.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from features.errors import BuildError
from features.schemas import TABLE_SPECS, TIMESTAMP
from features.workspace import TABLES, Workspace

log = logging.getLogger(__name__)

# Line fields that are not table columns: when the line was appended, and who appended it.
AT = "_at"
WRITER = "_writer"
# Epoch numbers above this are milliseconds (as in features.validate).
_EPOCH_MS_ABOVE = 1e11


class ChangeLogError(ValueError):
    """Rows that cannot go into the log (unknown table or column, a value of the wrong type), or a
    position that is not one of the log's. Nothing was written."""


def log_path(ws: Workspace, table: str) -> Path:
    """`DIR/changes/<table>.jsonl`."""
    _check_table(table)
    return ws.changes_dir / f"{table}.jsonl"


def log_schema(table: str) -> pa.Schema:
    """The Arrow schema of `read`'s tables: the table's canonical columns, all nullable (a row may
    lack a required value: validation quarantines it), then `_at` and `_writer`."""
    _check_table(table)
    fields = [pa.field(c.name, c.arrow_type, nullable=True) for c in TABLE_SPECS[table].columns]
    return pa.schema([*fields, pa.field(AT, TIMESTAMP), pa.field(WRITER, pa.string())])


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ChangeLogError(f"unknown table {table!r}; the change log keeps {', '.join(TABLES)}")


# -- coercion: a row of Python values -> a JSON-ready dict of the column types ------------------


def _timestamp(value: Any) -> str:
    """A timestamp as ISO 8601 UTC with microseconds (`2025-01-31T12:00:00.000000Z`)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        seconds = value / 1000 if abs(value) > _EPOCH_MS_ABOVE else value
        value = datetime.fromtimestamp(seconds, tz=UTC)
    elif isinstance(value, str):
        text = value.strip()
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    elif hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise ValueError("not a timestamp")
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _coerce(value: Any, type_: pa.DataType) -> Any:
    """`value` as the JSON value of a column of Arrow type `type_`; None stays None. Raises
    ValueError with a short reason when the value cannot be one."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):  # pandas' missing value
        return None
    if pa.types.is_string(type_):
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # numeric ids from a CSV export
        raise ValueError(f"expected text, got {type(value).__name__}")
    if pa.types.is_timestamp(type_):
        return _timestamp(value)
    if pa.types.is_boolean(type_):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"expected true or false, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        if hasattr(value, "item"):  # numpy scalars
            return _coerce(value.item(), type_)
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    if pa.types.is_integer(type_):
        if value != int(value):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    return float(value)


def encode_rows(
    table: str, rows: Iterable[Mapping[str, Any]], *, writer: str | None = None, at: Any = None
) -> bytes:
    """The log lines for `rows` (coerced to the table's column types), ready to append; `at` is
    the append time (default now). Raises ChangeLogError naming the row (0-based) and column of
    the first problem."""
    schema = log_schema(table)
    columns = {f.name: f.type for f in schema if f.name not in (AT, WRITER)}
    at = _timestamp(datetime.now(UTC) if at is None else at)
    out = io.StringIO()
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ChangeLogError(f"{table} row {n}: expected an object of columns, got {type(row).__name__}")
        unknown = sorted(set(row) - set(columns))
        if unknown:
            raise ChangeLogError(
                f"{table} row {n}: unknown column(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(columns)}"
            )
        record: dict[str, Any] = {}
        for name, value in row.items():
            try:
                record[name] = _coerce(value, columns[name])
            except (ValueError, TypeError, OverflowError) as e:
                raise ChangeLogError(f"{table} row {n}, column {name!r}: {e}") from None
        record[AT] = at
        if writer is not None:
            record[WRITER] = writer
        out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        out.write("\n")
    return out.getvalue().encode("utf-8")


# -- append ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path, flags: int, lock: int) -> Iterator[int]:
    """An open file descriptor of `path` holding `flock(lock)`; both released on exit."""
    fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, lock)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append(ws: Workspace, table: str, rows: list[dict[str, Any]], *, writer: str | None = None) -> int:
    """Append `rows` to `DIR/changes/<table>.jsonl`; returns the log's position after them.

    rows:   dicts of the table's contract columns (events may carry `recommendation_id`, catalog
            rows `active`); absent columns are null. Every value is coerced first, so a batch with
            a bad value raises ChangeLogError and writes nothing.
    writer: an optional tag stored with each row (`_writer`), e.g. the worker's id, so a process
            tailing the log can skip the rows it wrote itself.

    Durable: the rows are written with one `write` under an exclusive `flock` and `fsync`ed before
    this returns (the fsync runs after the lock is released, so concurrent appenders share disk
    flushes), so concurrent appenders (threads or processes) never interleave and a crash never
    loses a row that was acknowledged. A line left half-written by a crash is closed with a newline
    first (it is then malformed: `features build` quarantines it)."""
    data = encode_rows(table, rows, writer=writer)
    path = log_path(ws, table)
    if not data:
        return position(ws, table)
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, fcntl.LOCK_EX) as fd:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        end = os.fstat(fd).st_size
        # fsync after the lock is released: the lines are in place, and while this process waits
        # for the disk the next appender writes; one fsync then covers several appends.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.fsync(fd)
    if created:
        _fsync_dir(path.parent)  # the new file's directory entry is durable too
    return end


def position(ws: Workspace, table: str) -> int:
    """The log's current end (the position after its last complete line); 0 when there is no log."""
    path = log_path(ws, table)
    if not path.exists():
        return 0
    with _locked(path, os.O_RDONLY, fcntl.LOCK_SH) as fd:
        size = os.fstat(fd).st_size
        return _last_line_end(fd, 0, size)


def positions(ws: Workspace) -> dict[str, int]:
    """`position` of every table's log: what a `features build` folds in."""
    return {table: position(ws, table) for table in TABLES}


def _last_line_end(fd: int, start: int, end: int) -> int:
    """The offset just after the last newline in [start, end), or `start` when there is none."""
    block = 1 << 16
    hi = end
    while hi > start:
        lo = max(start, hi - block)
        chunk = os.pread(fd, hi - lo, lo)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return lo + i + 1
        hi = lo
    return start


# -- read --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One non-blank line of the log: its 1-based line number and byte offset, and its text."""

    number: int
    offset: int
    text: bytes


def _read_bytes(ws: Workspace, table: str, since: int, until: int | None) -> tuple[bytes, int]:
    """The complete lines in [since, until) (until None = the end) and the position after them."""
    path = log_path(ws, table)
    if since < 0:
        raise ChangeLogError(f"position must be >= 0, got {since}")
    if not path.exists():
        if since:
            raise ChangeLogError(f"{path} does not exist, so position {since} is not one of its positions")
        return b"", 0
    with _locked(path, os.O_RDONLY, fcntl.LOCK_SH) as fd:
        size = os.fstat(fd).st_size
        end = size if until is None else min(until, size)
        if since > end:
            raise ChangeLogError(
                f"position {since} is past the end of {path} ({size} bytes): was the log replaced?"
            )
        if since and os.pread(fd, 1, since - 1) != b"\n":
            raise ChangeLogError(f"position {since} is not the start of a line of {path}")
        stop = _last_line_end(fd, since, end)
        data = os.pread(fd, stop - since, since) if stop > since else b""
    return data, stop


def _parse_fast(data: bytes, schema: pa.Schema) -> pa.Table:
    if not data.strip():
        return schema.empty_table()
    opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pajson.read_json(io.BytesIO(data), parse_options=opts).select(schema.names).cast(schema)


def _parse_slow(table: str, lines: list[Line]) -> tuple[pa.Table, list[tuple[Line, str]]]:
    """Line by line: the rows that parse and coerce, and (line, reason) for those that do not."""
    schema = log_schema(table)
    good: list[bytes] = []
    bad: list[tuple[Line, str]] = []
    for line in lines:
        try:
            record = json.loads(line.text)
            if not isinstance(record, dict):
                raise ChangeLogError("not a JSON object")
            meta = {k: record.pop(k) for k in (AT, WRITER) if k in record}
            good.append(encode_rows(table, [record], writer=meta.get(WRITER), at=meta.get(AT)))
        except (ValueError, TypeError) as e:  # JSONDecodeError and ChangeLogError are ValueErrors
            bad.append((line, f"malformed change-log line: {e}"))
    return _parse_fast(b"".join(good), schema), bad


def _lines(data: bytes, offset: int, first_number: int) -> list[Line]:
    """The non-blank lines of `data` (which starts at byte `offset`, line `first_number`)."""
    out: list[Line] = []
    number, at = first_number, offset
    for raw in data.split(b"\n")[:-1] if data else []:
        if raw.strip():
            out.append(Line(number, at, raw))
        number += 1
        at += len(raw) + 1
    return out


def read(ws: Workspace, table: str, *, since: int = 0) -> tuple[pa.Table, int]:
    """The rows appended after position `since`, and the position to pass next time.

    The table has `log_schema(table)`: the contract columns, typed, null where a row did not give
    a value, plus `_at` and `_writer`; rows in append order. A tail loop is
    `rows, pos = read(ws, "stock", since=pos)`: one `stat`-sized read of the new bytes, nothing
    before `since` is parsed. Lines that do not parse (a hand-edited log, a line cut by a crash)
    are skipped with a warning; `features build` quarantines them. Raises ChangeLogError when
    `since` is not a position of this log (past its end, or inside a line)."""
    data, end = _read_bytes(ws, table, since, None)
    schema = log_schema(table)
    try:
        return _parse_fast(data, schema), end
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        rows, bad = _parse_slow(table, _lines(data, since, 1))
        log.warning(
            "%s: %d malformed line(s) after position %d skipped", log_path(ws, table), len(bad), since
        )
        return rows, end


def read_for_build(
    ws: Workspace, table: str, until: int
) -> tuple[pa.Table, list[Line], list[tuple[Line, str]]]:
    """Every line of the log up to position `until`, for `features build`: (rows that parse, the
    line each row came from, (line, reason) for lines that do not parse). Raises BuildError when
    the log cannot be read."""
    try:
        data, _ = _read_bytes(ws, table, 0, until)
    except (OSError, ChangeLogError) as e:
        raise BuildError(f"{log_path(ws, table)}: cannot read the change log: {e}") from e
    lines = _lines(data, 0, 1)
    try:
        rows = _parse_fast(data, log_schema(table))
        if rows.num_rows == len(lines):
            return rows, lines, []
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    rows, bad = _parse_slow(table, lines)
    failed = {id(line) for line, _ in bad}
    return rows, [line for line in lines if id(line) not in failed], bad


# -- forget ------------------------------------------------------------------------------------


def forget(ws: Workspace, user_id: str) -> dict[str, int]:
    """Blank out every line of the events and customers logs whose `user_id` is `user_id`
    (compared as trimmed text): each is overwritten in place with spaces of the same length, under
    the log's exclusive lock, and fsynced. Positions stay valid. Returns {log path relative to the
    workspace: lines blanked} for the logs that lost lines. A line that does not parse but holds
    the id is blanked too."""
    user_id = str(user_id).strip()
    removed: dict[str, int] = {}
    needle = json.dumps(user_id, ensure_ascii=False)[1:-1].encode("utf-8")
    for table in TABLES:
        if "user_id" not in {c.name for c in TABLE_SPECS[table].columns}:
            continue
        path = log_path(ws, table)
        if not path.exists():
            continue
        n = 0
        with _locked(path, os.O_RDWR, fcntl.LOCK_EX) as fd:
            size = os.fstat(fd).st_size
            offset = 0
            for raw in _iter_lines(fd, size):
                if needle in raw and _holds_user(raw, user_id):
                    os.pwrite(fd, b" " * len(raw), offset)
                    n += 1
                offset += len(raw) + 1
            if n:
                os.fsync(fd)
        if n:
            removed[str(path.relative_to(ws.root))] = n
    return removed


def _iter_lines(fd: int, size: int) -> Iterator[bytes]:
    """The lines (without newline) of the first `size` bytes of `fd`, read in blocks; a last line
    without a newline is yielded too."""
    block = 1 << 20
    rest = b""
    at = 0
    while at < size:
        chunk = os.pread(fd, min(block, size - at), at)
        if not chunk:
            break
        at += len(chunk)
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def _holds_user(raw: bytes, user_id: str) -> bool:
    try:
        record = json.loads(raw)
    except ValueError:
        return True  # unparsable but it holds the id: blank it rather than keep it
    value = record.get("user_id") if isinstance(record, dict) else None
    return value is not None and str(value).strip() == user_id
