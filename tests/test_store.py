"""The online store: event validation, the in-memory store, and the Redis store against the
machine's real Redis at 127.0.0.1:6379 (skipped with a reason when none is reachable), including
Redis going away (a dead port, and our connection killed with CLIENT KILL)."""

from __future__ import annotations

import logging
import socket
import time
import uuid

import pytest

from serving.store import Event, InMemoryStore, RedisStore, make_store, parse_event

REDIS_URL = "redis://127.0.0.1:6379/0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_reachable() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5).ping()
    except Exception as e:
        return f"no Redis at 127.0.0.1:6379 ({type(e).__name__}: {e})"
    return None


def ev(user: str, item: str, kind: str = "view", ts: float = 0.0) -> Event:
    return Event(user, item, kind, ts)


# -- events ----------------------------------------------------------------------------------------
def test_parse_event_accepts_epoch_and_iso_timestamps() -> None:
    e = parse_event(
        {"user_id": "u1", "item_id": "i1", "event_type": "Purchase", "timestamp": "2025-01-01T00:00:00Z"}
    )
    assert e == Event("u1", "i1", "purchase", 1735689600.0)
    assert parse_event({"user_id": "u1", "item_id": "i1", "event_type": "view"}, now=5.0).timestamp == 5.0
    assert (
        parse_event({"user_id": "u", "item_id": "i", "event_type": "view", "timestamp": 7}).timestamp == 7.0
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"item_id": "i", "event_type": "view"}, "user_id"),
        ({"user_id": "u", "item_id": "", "event_type": "view"}, "item_id"),
        ({"user_id": "u", "item_id": "i", "event_type": "like"}, "event_type"),
        ({"user_id": "u", "item_id": "i", "event_type": "view", "timestamp": "yesterday"}, "ISO-8601"),
        ({"user_id": "u", "item_id": "i", "event_type": "view", "colour": "red"}, "unknown event field"),
        ("not an object", "object"),
    ],
)
def test_parse_event_says_what_is_wrong(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_event(raw)  # type: ignore[arg-type]


# -- in memory -------------------------------------------------------------------------------------
def test_in_memory_store_is_newest_first_capped_and_forgets() -> None:
    store = InMemoryStore(cap=3)
    assert store.add([ev("u1", f"i{n}", ts=n) for n in range(5)]) == 5
    store.add([ev("u2", "x")])
    assert [e.item_id for e in store.recent("u1")] == ["i4", "i3", "i2"]
    assert [e.item_id for e in store.recent("u1", limit=1)] == ["i4"]
    assert store.forget("u1") is True
    assert store.recent("u1") == [] and [e.item_id for e in store.recent("u2")] == ["x"]
    assert make_store(None).health().startswith("memory ok")


# -- Redis -----------------------------------------------------------------------------------------
@pytest.fixture()
def redis_store():
    reason = _redis_reachable()
    if reason:
        pytest.skip(reason)
    prefix = f"shoprec-test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(REDIS_URL, prefix=prefix, cap=3)
    yield store
    for key in store._client.scan_iter(f"{prefix}:*"):  # clean up every key this test wrote
        store._client.delete(key)


@pytest.mark.services
def test_redis_store_round_trip_cap_and_forget(redis_store: RedisStore) -> None:
    assert isinstance(make_store(REDIS_URL), RedisStore)
    assert redis_store.add([ev("u1", f"i{n}", "purchase", ts=n) for n in range(5)]) == 5
    got = redis_store.recent("u1")
    assert [e.item_id for e in got] == ["i4", "i3", "i2"]  # newest first, capped at 3
    assert got[0] == Event("u1", "i4", "purchase", 4.0)
    # A second store (another replica) on the same prefix sees the same events.
    other = RedisStore(REDIS_URL, prefix=redis_store.prefix)
    assert [e.item_id for e in other.recent("u1", limit=2)] == ["i4", "i3"]
    assert redis_store.health() == "redis ok"
    assert redis_store.forget("u1") is True
    assert redis_store.recent("u1") == [] and other.recent("u1") == []
    assert redis_store._client.ttl(f"{redis_store.prefix}:u:u1") == -2  # the key is gone


@pytest.mark.services
def test_redis_store_shares_erasures_with_every_replica(redis_store: RedisStore) -> None:
    # POST /forget reaches one replica; the erasure set lives in Redis, so the others (and a
    # replica started later) see it too.
    other = RedisStore(REDIS_URL, prefix=redis_store.prefix, forgotten_refresh_s=0)
    assert not other.is_forgotten("u7")
    assert redis_store.forget("u7") is True
    assert redis_store.is_forgotten("u7") and other.is_forgotten("u7") and not other.is_forgotten("u8")
    restarted = RedisStore(REDIS_URL, prefix=redis_store.prefix)
    assert restarted.is_forgotten("u7")
    slow = RedisStore(REDIS_URL, prefix=redis_store.prefix, forgotten_refresh_s=3600)
    assert slow.is_forgotten("u7")  # the first check always reads the set
    assert redis_store.forget("u8") and not slow.is_forgotten("u8")  # ... then at most every hour
    assert redis_store._client.ttl(f"{redis_store.prefix}:forgotten") == -1  # kept, no expiry


def test_in_memory_store_records_erasures() -> None:
    store = InMemoryStore()
    assert not store.is_forgotten("u1")
    assert store.forget("u1") and store.is_forgotten("u1") and not store.is_forgotten("u2")


@pytest.mark.services
def test_redis_store_survives_a_killed_connection(redis_store: RedisStore) -> None:
    import redis

    redis_store.add([ev("u1", "a")])
    admin = redis.Redis.from_url(REDIS_URL, socket_timeout=1)
    client_id = redis_store._client.client_id()
    admin.client_kill_filter(_id=client_id)
    # The next calls never raise: they either reconnect and answer, or answer empty and report it.
    got = redis_store.recent("u1")
    assert got in ([], [Event("u1", "a", "view", 0.0)])
    time.sleep(redis_store.retry_s if got == [] else 0)
    assert [e.item_id for e in redis_store.recent("u1")] == ["a"]  # back once Redis answers again


def test_dead_redis_answers_empty_fast_logs_once_and_reports_health(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore(f"redis://127.0.0.1:{_free_port()}/0", retry_s=60.0, log_interval_s=60.0)
    caplog.set_level(logging.WARNING, logger="serving.store")
    start = time.perf_counter()
    assert store.recent("u1") == []
    assert store.add([ev("u1", "a")]) == 0
    for _ in range(50):  # backed off: no request pays the connect timeout again
        assert store.recent("u1") == []
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"a dead Redis cost {elapsed:.2f}s for 52 calls"
    assert store.health().startswith("redis unreachable: ConnectionError")
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # logged once per interval, not per request
    assert store.forget("u1") is False  # an erasure that could not happen is reported, not hidden
