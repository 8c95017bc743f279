"""Keeping every worker and replica on the same shop state, and nothing the service is told lost.

What `POST /events`, `/catalog`, `/stock`, `/customers` and `/merge` bring is written to the
workspace's durable change log first (features/changelog.py: flock + fsync), then applied. Every
worker process tails that log (a stat per poll when nothing changed, every `interval_s`), so an
update sent to one worker is in effect on all of them within a fraction of a second, a restart
replays what came after the last `features build` (whose summary records the positions it folded
in), and the next build learns from it. The worker that writes tails the log at once after its own
append, so its next answer already reflects the change, and every row is applied exactly once per
process.

With `REDIS_URL`, replicas may live on other machines with workspaces of their own: catalogue,
stock and customer rows also go onto a Redis stream (`<prefix>:changes`) that every replica reads,
and events go straight into the shared Redis online store (serving/store.py). A replica that cannot
reach Redis keeps answering from what it has and catches up from the stream when Redis is back;
what it was told meanwhile is acknowledged (it is in its change log), in effect on that replica at
once, and kept pending until Redis answers again, then sent on to the others (a Redis restart loses
no acknowledged write and answers no request with an error; tests/test_redis_restart.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from serving.state import LIVE_TABLES, ShopState
from serving.store import Event, InMemoryStore, OnlineStore, parse_event

if TYPE_CHECKING:
    from features.workspace import Workspace

log = logging.getLogger(__name__)

TABLES: tuple[str, ...] = ("events", *LIVE_TABLES)
# On the Redis stream only: the purchases a replica was told about, for every other replica's social
# proof ("N customers bought this this week"). The events themselves go into the shared online
# store, which is read per customer and so never tells a replica that someone else bought an item.
PURCHASES_SEEN = "purchases-seen"


class StateSync:
    """One process's link between its shop state / online store and the shared change log."""

    def __init__(
        self,
        state: ShopState,
        store: OnlineStore,
        ws: Workspace | None,
        *,
        redis_url: str | None = None,
        prefix: str = "shoprec",
        interval_s: float = 0.2,
    ) -> None:
        self.state = state
        self.store = store
        self.ws = ws
        self.interval_s = interval_s
        # Events reach an in-process store only through the log (one path, exactly once); a Redis
        # store is shared already and gets them directly.
        self.events_from_log = isinstance(store, InMemoryStore)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._positions: dict[str, int] = {}
        self.applied: dict[str, int] = dict.fromkeys(TABLES, 0)
        self.last_error: str | None = None
        self._bus = _RedisBus(redis_url, prefix) if redis_url else None
        if ws is not None:
            self._positions = _folded_positions(ws)
            self.poll()  # what came after the last features build, before the first request

    # -- writing ----------------------------------------------------------------------------------
    def write(self, table: str, rows: list[dict[str, Any]]) -> int:
        """Record `rows` of `table` durably, then apply them here (and, through the log or the
        Redis stream, on every other worker and replica). Returns how many rows were recorded.
        Raises ValueError naming a bad row before anything is written."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        if not rows:
            return 0
        if table != "events":
            self.state.check(table, rows)
        if self.ws is not None:
            from features import changelog

            changelog.append(self.ws, table, rows, writer="serve")
        if table == "events":
            if not self.events_from_log or self.ws is None:
                self._store_events(rows)
            if self._bus is not None and (seen := _purchases(rows)):
                self._bus.publish(PURCHASES_SEEN, seen)  # Redis away: sent later, from the outbox
        elif self._bus is not None:
            if not self._bus.publish(table, rows):  # Redis is away: in effect here now, sent later
                self._apply(table, rows)
        elif self.ws is None:
            self.state.apply(table, rows)
        self.poll()
        return len(rows)

    # -- reading ----------------------------------------------------------------------------------
    def poll(self) -> int:
        """Apply what the log (or the Redis stream) gained since the last poll; returns rows applied."""
        applied = 0
        with self._lock:
            if self.ws is not None and (self._bus is None or self.events_from_log):
                applied += self._poll_log()
            self.store.flush()  # events a shared store could not take while it was away
            if self._bus is not None:
                self._bus.flush()
                for table, rows in self._bus.read():
                    applied += self._apply(table, rows)
        return applied

    def _poll_log(self) -> int:
        from features import changelog

        applied = 0
        tables = TABLES if self._bus is None else ("events",)
        for table in tables:
            if table == "events" and not self.events_from_log:
                continue
            since = self._positions.get(table, 0)
            if changelog.position(self.ws, table) == since:
                continue  # one stat: nothing new
            got, pos = changelog.read(self.ws, table, since=since)
            self._positions[table] = pos
            if got.num_rows:
                applied += self._apply(table, _rows(got))
        return applied

    def _apply(self, table: str, rows: list[dict[str, Any]]) -> int:
        if table == PURCHASES_SEEN:  # counted again where they were posted: a pair counts once
            n = self.state.observe(_parse_all(rows))
            self.applied[table] = self.applied.get(table, 0) + n
            return n
        try:
            n = self._store_events(rows) if table == "events" else self.state.apply(table, rows)
        except ValueError as e:  # a row the service would have refused: skip it, say so
            self.last_error = f"{table}: {e}"
            log.warning("change log: %s rows not applied (%s)", table, e)
            return 0
        self.applied[table] += n
        return n

    def _store_events(self, rows: list[dict[str, Any]]) -> int:
        # a row of a type the online store does not keep is skipped (features build weighs it)
        parsed = _parse_all(rows)
        events = [e for e in parsed if self.state.may_personalise(e.user_id)]
        self.state.observe(parsed)  # the social proof counts every customer's purchases
        return self.store.add(events) if events else 0

    # -- the background thread --------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None or (self.ws is None and self._bus is None):
            return
        self._thread = threading.Thread(target=self._run, name="shoprec-state-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
                self.last_error = None
            except Exception as e:  # never let the sync die; report it in /readyz
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("state sync failed: %s", self.last_error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def health(self) -> dict[str, Any]:
        return {
            "source": "workspace change log" if self.ws is not None else "none",
            "redis_stream": None if self._bus is None else self._bus.health(),
            "applied": dict(self.applied),
            "last_error": self.last_error,
        }


def _folded_positions(ws: Workspace) -> dict[str, int]:
    """The change-log positions the last `features build` folded into the tables the state loaded."""
    summary = ws.features_dir / "summary.json"
    if summary.exists():
        try:
            folded = json.loads(summary.read_text()).get("changes_folded") or {}
            return {str(k): int(v) for k, v in folded.items()}
        except (ValueError, TypeError):
            log.warning("features/summary.json is unreadable: replaying the whole change log")
    return {}


def _rows(table: Any) -> list[dict[str, Any]]:
    """A pyarrow table of log rows as dicts without nulls (a null means "not given") or the
    log's own fields (`_at`, `_writer`)."""
    out = []
    for row in table.to_pylist():
        out.append({k: v for k, v in row.items() if v is not None and not k.startswith("_")})
    return out


def _parse_all(rows: list[dict[str, Any]]) -> list[Event]:
    """The rows that parse as events (a row the online store does not keep is skipped)."""
    out = []
    for raw in rows:
        fields = {
            k: raw[k]
            for k in ("user_id", "item_id", "event_type", "timestamp", "size")
            if raw.get(k) is not None
        }
        if isinstance(fields.get("timestamp"), datetime):
            fields["timestamp"] = fields["timestamp"].timestamp()
        try:
            out.append(parse_event(fields))
        except ValueError:
            continue
    return out


def _purchases(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The purchases among event rows as {user_id, item_id, event_type, timestamp} (epoch s, now
    where the row had none), what another replica needs to count them."""
    return [
        {"user_id": e.user_id, "item_id": e.item_id, "event_type": "purchase", "timestamp": e.timestamp}
        for e in _parse_all(rows)
        if e.event_type == "purchase"
    ]


class _RedisBus:
    """Catalogue, stock and customer rows (and the purchases seen, PURCHASES_SEEN) on a Redis stream every replica reads from its own
    position (starting at the stream's end: what came before is in the replica's workspace)."""

    def __init__(self, url: str, prefix: str, *, maxlen: int = 100_000) -> None:
        import redis

        self.key = f"{prefix}:changes"
        self._outbox: list[str] = []  # payloads Redis could not take yet, oldest first
        self._sending = threading.Lock()  # one sender at a time: each payload goes out once
        self.maxlen = maxlen
        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._last = "$"
        self.error: str | None = None
        try:
            last = self._client.xrevrange(self.key, count=1)
            self._last = last[0][0].decode() if last else "0-0"
        except Exception as e:
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        self.error = f"{type(e).__name__}: {e}"

    def publish(self, table: str, rows: list[dict[str, Any]]) -> bool:
        """Put rows on the stream; False when Redis is away (they wait in the outbox, in order)."""
        with self._sending:
            self._outbox.append(json.dumps({"table": table, "rows": rows}, default=str))
        return self.flush()

    def flush(self) -> bool:
        """Send the outbox in order; False (keeping what was not sent) when Redis is away."""
        with self._sending:
            while self._outbox:
                payload = self._outbox[0]
                try:
                    self._retry(
                        lambda p=payload: self._client.xadd(
                            self.key, {"d": p}, maxlen=self.maxlen, approximate=True
                        )
                    )
                except Exception:
                    return False
                self._outbox.pop(0)
            return True

    def read(self) -> list[tuple[str, list[dict[str, Any]]]]:
        try:
            got = self._client.xread({self.key: self._last}, count=1000)
        except Exception as e:
            self._fail(e)
            return []
        self.error = None
        out = []
        for _, entries in got or []:
            for entry_id, fields in entries:
                self._last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                try:
                    d = json.loads(fields[b"d"])
                    out.append((str(d["table"]), list(d["rows"])))
                except (KeyError, ValueError, TypeError):
                    continue  # a foreign entry under our key
        return out

    def _retry(self, call: Callable[[], Any], attempts: int = 3) -> Any:
        for n in range(attempts):
            try:
                return call()
            except Exception as e:
                self._fail(e)
                if n == attempts - 1:
                    raise
                time.sleep(0.05 * (n + 1))
        return None

    def health(self) -> str:
        pending = f" ({len(self._outbox)} writes pending)" if self._outbox else ""
        return ("ok" if self.error is None else f"unreachable: {self.error}") + pending
