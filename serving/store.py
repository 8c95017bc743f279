"""The online store: each customer's newest events (views, carts, purchases), shared by replicas.

The model artifact knows the past up to its training run; the online store knows the last minutes.
The pipeline reads a user's recent events on every request (a purchase is excluded from the very
next answer, recent views re-rank it), so reads must be cheap and must never fail the request:

- `InMemoryStore`: in-process (the default; one replica, lost on restart).
- `RedisStore`: one capped Redis list per user (`REDIS_URL`), so several replicas share it. Short
  socket timeouts; when Redis is unreachable the store answers with what it has (nothing newer),
  logs once per interval, backs off before trying again, and reports it in `health()`. It never
  raises to the caller.

`make_store(redis_url)` picks one. Events are `Event` records; `parse_event` validates the dicts
that arrive over HTTP with a message that says what is wrong.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

EVENT_TYPES: frozenset[str] = frozenset({"view", "add_to_cart", "remove_from_cart", "purchase"})


@dataclass(frozen=True)
class Event:
    """One real-time event. `timestamp` is epoch seconds (UTC)."""

    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    size: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "u": self.user_id,
                "i": self.item_id,
                "t": self.event_type,
                "ts": self.timestamp,
                "s": self.size,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Event:
        d = json.loads(raw)
        return cls(d["u"], d["i"], d["t"], float(d["ts"]), d.get("s"))


def parse_event(raw: dict[str, Any], *, now: float | None = None) -> Event:
    """Validate one event dict (`user_id`, `item_id`, `event_type`, optional `timestamp` as epoch
    seconds or ISO-8601, optional `size`). Raises ValueError saying which field is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"an event must be an object, got {type(raw).__name__}")
    unknown = sorted(
        set(raw) - {"user_id", "item_id", "event_type", "timestamp", "size", "quantity", "price"}
    )
    if unknown:
        raise ValueError(f"unknown event field(s): {', '.join(unknown)}")
    for key in ("user_id", "item_id", "event_type"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"event field {key!r} must be a non-empty string")
    event_type = raw["event_type"].strip().lower()
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event_type {raw['event_type']!r} is not one of {', '.join(sorted(EVENT_TYPES))}")
    ts = raw.get("timestamp")
    if ts is None:
        timestamp = time.time() if now is None else now
    elif isinstance(ts, bool):
        raise ValueError("event field 'timestamp' must be epoch seconds or an ISO-8601 string")
    elif isinstance(ts, int | float):
        timestamp = float(ts)
    elif isinstance(ts, str):
        try:
            parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"event field 'timestamp' is not ISO-8601: {ts!r}") from None
        if parsed.tzinfo is None:  # naive timestamps are UTC, as in the raw tables
            from datetime import UTC

            parsed = parsed.replace(tzinfo=UTC)
        timestamp = parsed.timestamp()
    else:
        raise ValueError("event field 'timestamp' must be epoch seconds or an ISO-8601 string")
    size = raw.get("size")
    if size is not None and not isinstance(size, str):
        raise ValueError("event field 'size' must be a string")
    return Event(raw["user_id"].strip(), raw["item_id"].strip(), event_type, timestamp, size or None)


class OnlineStore(Protocol):
    """Per-user recent events, newest first, capped per user."""

    def add(self, events: list[Event]) -> int:
        """Store events; returns how many were stored (0 when the backend is unreachable: a
        shared backend then keeps them pending and writes them when it is back, see `flush`)."""
        ...

    def flush(self) -> int:
        """Write what an unreachable backend left pending; returns how many were written."""
        ...

    def recent(self, user_id: str, limit: int = 50) -> list[Event]:
        """The user's newest events, newest first (empty when unknown or unreachable)."""
        ...

    def forget(self, user_id: str) -> bool:
        """Erase the user's events and record the erasure (so every replica stops personalising
        for them); False when the backend could not be reached."""
        ...

    def clear(self, user_id: str) -> bool:
        """Drop the user's events without recording an erasure (an anonymous session merged into
        the customer who logged in); False when the backend could not be reached."""
        ...

    def is_forgotten(self, user_id: str) -> bool:
        """Whether `forget(user_id)` was called (on any replica sharing the backend)."""
        ...

    def health(self) -> str:
        """One line a person can read, e.g. 'memory ok' or 'redis unreachable: ...'."""
        ...


class InMemoryStore:
    """In-process store: a capped deque per user, guarded by one lock (service threads share it)."""

    def __init__(self, cap: int = 100) -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        self.cap = cap
        self._events: dict[str, deque[Event]] = {}
        self._forgotten: set[str] = set()
        self._lock = threading.Lock()

    def add(self, events: list[Event]) -> int:
        with self._lock:
            for e in events:
                self._events.setdefault(e.user_id, deque(maxlen=self.cap)).appendleft(e)
        return len(events)

    def flush(self) -> int:
        return 0  # nothing is ever pending in process

    def recent(self, user_id: str, limit: int = 50) -> list[Event]:
        with self._lock:
            q = self._events.get(user_id)
            if not q:
                return []
            return list(q)[:limit]

    def forget(self, user_id: str) -> bool:
        with self._lock:
            self._events.pop(user_id, None)
            self._forgotten.add(user_id)
        return True

    def clear(self, user_id: str) -> bool:
        with self._lock:
            self._events.pop(user_id, None)
        return True

    def is_forgotten(self, user_id: str) -> bool:
        return user_id in self._forgotten

    def health(self) -> str:
        return f"memory ok ({len(self._events)} users)"


class RedisStore:
    """Redis-backed store: key `<prefix>:u:<user_id>` is a list of JSON events, newest first,
    trimmed to `cap` and expiring after `ttl_s` of inactivity. Erased customers (POST /forget on
    any replica) are the set `<prefix>:forgotten`, kept without expiry (until the raw data is
    erased and the model retrained); each replica reads it again when its size changed, at most
    every `forgotten_refresh_s` seconds, so a request costs no extra round trip.

    Failure policy: any Redis error marks the store down for `retry_s` seconds (requests in that
    time skip Redis instead of each paying the socket timeout), is logged at most once per
    `log_interval_s`, and is reported by `health()`. Reads then return [], writes return 0 and
    keep the events pending (up to `max_pending`, oldest dropped first, and never a forgotten
    customer's): the next write or `flush()` (the state sync calls it every poll) sends them, in
    order, once Redis answers again, so a Redis restart loses no acknowledged event from the
    online store either (they are in the workspace's change log regardless).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "shoprec",
        cap: int = 100,
        ttl_s: int = 30 * 24 * 3600,
        timeout_s: float = 0.05,
        retry_s: float = 2.0,
        log_interval_s: float = 60.0,
        forgotten_refresh_s: float = 1.0,
        max_pending: int = 100_000,
    ) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self.cap = cap
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.log_interval_s = log_interval_s
        # Short timeouts: a request must not wait on a dead Redis longer than a few tens of ms.
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self.forgotten_refresh_s = forgotten_refresh_s
        self._forgotten: frozenset[str] = frozenset()
        self._forgotten_checked = -float("inf")
        self._down_until = 0.0
        self._last_error: str | None = None
        self._last_log = -float("inf")
        self._lock = threading.Lock()
        self._pending: deque[Event] = deque(maxlen=max_pending)

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}:u:{user_id}"

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, err: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self._down_until = now + self.retry_s
            # The URL may carry a password: report the error type and message, never the URL.
            self._last_error = f"{type(err).__name__}: {err}"
            if now - self._last_log >= self.log_interval_s:
                self._last_log = now
                log.warning(
                    "redis online store unreachable, answering without newest events (%s)", self._last_error
                )

    def _ok(self) -> None:
        if self._last_error is not None:
            with self._lock:
                if self._last_error is not None:
                    log.warning("redis online store reachable again")
                    self._last_error = None

    def add(self, events: list[Event]) -> int:
        if not events:
            return 0
        with self._lock:
            self._pending.extend(events)
        written = self.flush()
        return min(written, len(events))

    def flush(self) -> int:
        """Send the pending events (oldest first) in one pipeline; on failure they stay pending."""
        if not self._pending or not self._available():
            return 0
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
        try:
            pipe = self._client.pipeline(transaction=False)
            for e in batch:
                key = self._key(e.user_id)
                pipe.lpush(key, e.to_json())
                pipe.ltrim(key, 0, self.cap - 1)
                pipe.expire(key, self.ttl_s)
            pipe.execute()
        except Exception as err:  # redis.RedisError, OSError: never raise to the request
            with self._lock:  # back in front of anything added meanwhile, in order
                self._pending.extendleft(reversed(batch))
            self._failed(err)
            return 0
        self._ok()
        return len(batch)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def recent(self, user_id: str, limit: int = 50) -> list[Event]:
        if not self._available():
            return []
        try:
            raw = self._client.lrange(self._key(user_id), 0, limit - 1)
        except Exception as err:
            self._failed(err)
            return []
        self._ok()
        out = []
        for r in raw:
            try:
                out.append(Event.from_json(r))
            except (ValueError, KeyError, TypeError):  # a foreign value under our key: skip it
                continue
        return out

    def forget(self, user_id: str) -> bool:
        # Erasure must not be skipped silently by the back-off: always try, report failure.
        with self._lock:  # nothing of theirs may reach Redis after the erasure
            kept = [e for e in self._pending if e.user_id != user_id]
            self._pending.clear()
            self._pending.extend(kept)
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._key(user_id))
            pipe.sadd(f"{self.prefix}:forgotten", user_id)
            pipe.execute()
        except Exception as err:
            self._failed(err)
            return False
        self._ok()
        with self._lock:
            self._forgotten = self._forgotten | {user_id}
        return True

    def clear(self, user_id: str) -> bool:
        try:
            self._client.delete(self._key(user_id))
        except Exception as err:
            self._failed(err)
            return False
        self._ok()
        return True

    def is_forgotten(self, user_id: str) -> bool:
        now = time.monotonic()
        if now - self._forgotten_checked >= self.forgotten_refresh_s and self._available():
            self._forgotten_checked = now
            try:
                key = f"{self.prefix}:forgotten"
                if self._client.scard(key) != len(self._forgotten):
                    members = self._client.smembers(key)
                    self._forgotten = frozenset(
                        m.decode() if isinstance(m, bytes) else str(m) for m in members
                    )
            except Exception as err:  # keep the erasures known so far; never fail the request
                self._failed(err)
        return user_id in self._forgotten

    def health(self) -> str:
        if self._last_error is not None and not self._available():
            return f"redis unreachable: {self._last_error} ({len(self._pending)} events pending)"
        try:
            self._client.ping()
        except Exception as err:
            self._failed(err)
            return f"redis unreachable: {self._last_error}"
        self._ok()
        return "redis ok"


def make_store(redis_url: str | None = None, **kwargs: Any) -> OnlineStore:
    """`RedisStore` when a URL is given (the service passes `REDIS_URL`), else `InMemoryStore`."""
    if redis_url:
        return RedisStore(redis_url, **kwargs)
    return InMemoryStore(**{k: v for k, v in kwargs.items() if k == "cap"})
