"""`forget` on the data side (CONTRACT, Privacy): erase one customer from every table of a workspace.

`forget_user(ws, user_id)` removes the customer's rows from
* the raw tables that hold customers (`events`, `customers`: the one place raw tables are ever
  rewritten; the file keeps its format, Parquet or CSV),
* the change log (`changes/events.jsonl`, `changes/customers.jsonl`: the customer's lines are
  blanked in place, features.changelog.forget, so every log position stays valid),
* a data set's own tables kept beside them (`extra/*.parquet`, e.g. Complete Journey's demographics,
  campaigns and coupon redemptions),
* `validated/*.parquet` and `quarantine/**/*.parquet`,
* every Parquet file under `features/` (splits included) with a `user_id` column, or a `user_idx`
  column whose index `features/users.parquet` maps to the customer,
* any other Parquet table of the workspace with a `user_id` column (e.g. the synthetic shop's
  `truth/`),
drops the training cache (`.cache/`: fitted complements reused between the models of one
retrain, so the next training fits them afresh without the customer), and appends one line to
`forget_log.jsonl` in the workspace: the time, a salted SHA-256 of the id
and the rows removed per file. The id itself is never written: the salt is a random secret kept in
`.forget_salt` beside the log, so whoever holds the workspace can answer "was this customer erased?"
by hashing a candidate id (`is_forgotten`, `ForgetList`: what a running service checks), while the
log alone reveals nothing.

Ids are compared as trimmed text, as validation stores them, so " u1 " in a CSV is u1. The model
bundles in the MLflow store are the model side's (training.forget, run by `shoprec forget`); the
online store and serving state are the serving side's (`serving/`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import changelog
from features.workspace import TABLES, Workspace

SALT_FILE = ".forget_salt"
LOG_FILE = "forget_log.jsonl"


def user_hash(ws: Workspace, user_id: str) -> str:
    """Salted SHA-256 (hex) of a user id with this workspace's secret salt (created on first use)."""
    path = ws.root / SALT_FILE
    if not path.exists():
        ws.root.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two forgets at once never end up with different salts.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        except FileExistsError:
            pass
    return _salted(path.read_text().strip(), user_id)


def _salted(salt: str, user_id: str) -> str:
    return hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()


def _ids_equal(column: pa.ChunkedArray, user_id: str) -> pa.ChunkedArray:
    """Boolean mask: rows whose id (as trimmed text) is `user_id`; nulls are False."""
    text = (
        column
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        else column.cast(pa.string())
    )
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), user_id), False)


def _rewrite_parquet(path: Path, drop: pa.ChunkedArray | pa.Array, table: pa.Table) -> int:
    """Write `table` without the rows where `drop` is true (atomically); returns rows removed."""
    n = int(pc.sum(drop).as_py() or 0)
    if n:
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table.filter(pc.invert(drop)), tmp)
        os.replace(tmp, path)
    return n


def _forget_csv(path: Path, user_id: str) -> int:
    """Drop the user's rows from a CSV, keeping every other row as it was read; returns rows removed."""
    tmp = path.with_name(path.name + ".tmp")
    removed = 0
    with path.open(newline="", encoding="utf-8") as src:
        reader = csv.reader(src)
        header = next(reader, None)
        if header is None:
            return 0
        names = [h.strip().lower() for h in header]
        if "user_id" not in names:
            return 0
        col = names.index("user_id")
        with tmp.open("w", newline="", encoding="utf-8") as dst:
            writer = csv.writer(dst)
            writer.writerow(header)
            for row in reader:
                if col < len(row) and row[col].strip() == user_id:
                    removed += 1
                else:
                    writer.writerow(row)
    if removed:
        os.replace(tmp, path)
    else:
        tmp.unlink()
    return removed


def _forget_parquet(path: Path, user_id: str, user_idx: set[int] | None) -> int:
    """Drop the user's rows from one Parquet file by `user_id`, else by `user_idx` (when known)."""
    names = pq.read_schema(path).names
    lowered = {n.strip().lower(): n for n in names}
    if "user_id" in lowered:
        table = pq.read_table(path)
        return _rewrite_parquet(path, _ids_equal(table[lowered["user_id"]], user_id), table)
    if "user_idx" in names and user_idx:
        table = pq.read_table(path)
        drop = pc.fill_null(
            pc.is_in(table["user_idx"], pa.array(sorted(user_idx), table["user_idx"].type)), False
        )
        return _rewrite_parquet(path, drop, table)
    return 0


def forget_user(ws: Workspace, user_id: str, *, now: datetime | None = None) -> dict[str, int]:
    """Erase `user_id` from the workspace's tables (see the module docstring).

    Returns {path relative to ws.root: rows removed} for every file that lost rows (empty when the
    customer is nowhere). Every call is logged in `forget_log.jsonl`, found or not, with a salted
    hash of the id, never the id.
    """
    user_id = str(user_id).strip()
    if not user_id:
        raise ValueError("forget needs a non-empty user id")
    removed: dict[str, int] = {}

    def note(path: Path, n: int) -> None:
        if n:
            removed[str(path.relative_to(ws.root))] = n

    # The index mapping must be read before users.parquet itself loses the row.
    user_idx: set[int] | None = None
    users = ws.feature("users")
    if users.exists():
        t = pq.read_table(users, columns=["user_idx", "user_id"])
        user_idx = set(t.filter(_ids_equal(t["user_id"], user_id))["user_idx"].to_pylist())

    # Both files when a table exists as Parquet and CSV: `ws.raw` reads the Parquet one, but the
    # customer must not survive in the other either.
    for table in TABLES:
        for path in (ws.root / f"{table}.parquet", ws.root / f"{table}.csv"):
            if path.exists():
                n = (
                    _forget_csv(path, user_id)
                    if path.suffix == ".csv"
                    else _forget_parquet(path, user_id, None)
                )
                note(path, n)
    for folder in (ws.root / "extra", ws.validated_dir, ws.quarantine_dir):  # quarantine/changes/ included
        for path in sorted(folder.rglob("*.parquet")) if folder.exists() else []:
            note(path, _forget_parquet(path, user_id, None))
    removed.update(changelog.forget(ws, user_id))
    # Any other table of the workspace that names customers (the synthetic shop's `truth/`, a
    # user's own exports); model artifacts are the model side's (training.forget).
    done = (ws.validated_dir, ws.quarantine_dir, ws.features_dir, ws.mlflow_artifacts, ws.changes_dir)
    for path in sorted(ws.root.rglob("*.parquet")):
        rel = path.relative_to(ws.root)
        if len(rel.parts) == 1 or rel.parts[0].startswith(".") or any(path.is_relative_to(d) for d in done):
            continue
        note(path, _forget_parquet(path, user_id, None))
    if ws.features_dir.exists():
        for path in sorted(ws.features_dir.rglob("*.parquet")):
            note(path, _forget_parquet(path, user_id, user_idx))
    shutil.rmtree(ws.root / ".cache", ignore_errors=True)

    log_erasure(ws, user_id, removed, now=now)
    return removed


def log_erasure(
    ws: Workspace,
    user_id: str,
    removed: dict[str, int],
    *,
    kind: str | None = None,
    now: datetime | None = None,
) -> None:
    """Append one line to the forget log: the time, the salted hash of `user_id`, the rows removed
    per place and their total (`kind` tells other parts of an erasure apart, e.g. "models")."""
    entry: dict[str, object] = {
        "time": (now or datetime.now(UTC)).isoformat(),
        "user_hash": user_hash(ws, str(user_id).strip()),
        "rows_removed": removed,
        "total": sum(removed.values()),
    }
    if kind is not None:
        entry["kind"] = kind
    line = (json.dumps(entry) + "\n").encode("utf-8")
    fd = os.open(ws.root / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write of a whole line, fsynced: the erasure is on record before forget returns
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the forget list, for a running service ------------------------------------------------------


class ForgetList:
    """The set of erased customers of a workspace, read from its forget log and re-read only when
    the log changes (its size or modification time), so `user_id in forgotten` costs one `stat`
    and one salted SHA-256 per call. The log holds hashes, never ids: membership is answered by
    hashing the candidate id with the workspace's salt."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._stamp: tuple[int, int] | None = None
        self._hashes: frozenset[str] = frozenset()
        self._salt: str | None = None

    def hashes(self) -> frozenset[str]:
        """The salted hashes of every erased customer (fresh: re-read when the log has changed)."""
        path = self.ws.root / LOG_FILE
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._stamp, self._hashes = None, frozenset()
            return self._hashes
        stamp = (st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            found = set()
            with path.open(encoding="utf-8") as f:
                for line in f:
                    with contextlib.suppress(ValueError, AttributeError):
                        found.add(json.loads(line)["user_hash"])
            self._hashes, self._stamp = frozenset(found), stamp
        return self._hashes

    def __contains__(self, user_id: object) -> bool:
        hashes = self.hashes()
        if not hashes:
            return False
        if self._salt is None:
            salt_file = self.ws.root / SALT_FILE
            if not salt_file.exists():  # a log without its salt cannot be checked
                return False
            self._salt = salt_file.read_text().strip()
        return _salted(self._salt, str(user_id).strip()) in hashes


_LISTS: dict[Path, ForgetList] = {}


def is_forgotten(ws: Workspace, user_id: str) -> bool:
    """Was `user_id` erased from this workspace (`shoprec forget`)? Cheap enough for every request:
    one `stat` of the forget log and one hash (see ForgetList)."""
    forgotten = _LISTS.get(ws.root)
    if forgotten is None:
        forgotten = _LISTS.setdefault(ws.root, ForgetList(ws))
    return user_id in forgotten
