"""A/B assignment, recommendation ids, the impression log and the per-variant report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from serving.ab import (
    ImpressionLog,
    assign,
    hash_user,
    new_recommendation_id,
    parse_shares,
    read_impressions,
    validate_shares,
)

SHARES = {"champion": 0.5, "challenger": 0.3, "control": 0.2}


def test_assignment_is_deterministic_and_follows_the_shares() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    first = [assign(u, SHARES, "exp-1") for u in users]
    assert first == [assign(u, dict(SHARES), "exp-1") for u in users]  # same answer, every call
    counts = pd.Series(first).value_counts(normalize=True)
    for name, share in SHARES.items():
        # 20k draws: the standard error of a share is < 0.004, so 0.02 is a loose, honest bound.
        assert abs(counts[name] - share) < 0.02, (name, counts[name])


def test_a_new_salt_reshuffles_users_and_zero_share_variants_get_nobody() -> None:
    users = [f"user-{i}" for i in range(2000)]
    a = [assign(u, SHARES, "exp-1") for u in users]
    b = [assign(u, SHARES, "exp-2") for u in users]
    assert 0.3 < sum(x != y for x, y in zip(a, b, strict=True)) / len(users) < 0.9
    only = {"champion": 1.0, "challenger": 0.0}
    assert {assign(u, only, "s") for u in users} == {"champion"}


@pytest.mark.parametrize(
    ("shares", "message"),
    [
        ({}, "empty"),
        ({"champion": 0.5, "control": 0.4}, "sum to 1"),
        ({"champion": 1.2, "control": -0.2}, ">= 0"),
        ({"champion": "lots"}, "number"),
        ({"": 1.0}, "non-empty"),
    ],
)
def test_bad_shares_are_refused_with_a_message(shares: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_shares(shares)
    with pytest.raises(ValueError, match=message):
        assign("u1", shares, "s")


def test_parse_shares_from_an_environment_string() -> None:
    assert parse_shares("champion=0.9, control=0.1") == {"champion": 0.9, "control": 0.1}
    with pytest.raises(ValueError, match="name=share"):
        parse_shares("champion")
    with pytest.raises(ValueError, match="not a number"):
        parse_shares("champion=x")


def test_recommendation_ids_are_unique_hex() -> None:
    ids = {new_recommendation_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_impression_log_writes_json_lines_without_the_raw_user_id(tmp_path: Path) -> None:
    path = tmp_path / "serving" / "impressions.jsonl"
    with ImpressionLog(path, salt="s") as log:
        log.log("r1", "champion", "v3", "alice@example.com", ["a", "b"], timestamp=100.0)
        log.log("r2", "control", "v3", None, ["c"], timestamp=101.0)
    text = path.read_text()
    assert "alice@example.com" not in text  # GDPR: only the salted hash
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0] == {
        "recommendation_id": "r1", "variant": "champion", "model_version": "v3",
        "user": hash_user("alice@example.com", "s"), "items": ["a", "b"], "ts": 100.0,
    }  # fmt: skip
    assert lines[1]["user"] is None
    frame = read_impressions(path)
    assert list(frame["recommendation_id"]) == ["r1", "r2"]
    assert hash_user("alice@example.com", "s") != hash_user("alice@example.com", "other-salt")


def test_impression_log_buffers_lines_and_writes_them_out_on_time_flush_and_close(tmp_path: Path) -> None:
    path = tmp_path / "imp.jsonl"
    log = ImpressionLog(path, salt="s", flush_seconds=3600)
    log.log("r1", "champion", "v3", "u", ["a"], timestamp=1.0)
    assert path.read_text() == ""  # buffered: no write per answered block
    log.flush()
    assert [json.loads(x)["recommendation_id"] for x in path.read_text().splitlines()] == ["r1"]
    log.log("r2", "champion", "v3", "u", ["b"], timestamp=2.0)
    log.close()
    assert len(path.read_text().splitlines()) == 2
    with ImpressionLog(path, salt="s", flush_seconds=0) as at_once:
        at_once.log("r3", "control", "v3", None, ["c"], timestamp=3.0)
        assert len(path.read_text().splitlines()) == 3
    # Two writers on one file (two worker processes): whole lines, none torn or lost.
    a, b = (
        ImpressionLog(path, salt="s", flush_seconds=3600),
        ImpressionLog(path, salt="s", flush_seconds=3600),
    )
    for n in range(300):
        (a if n % 2 else b).log(f"m{n}", "champion", "v3", "u", ["x"] * 40, timestamp=float(n))
        if n % 7 == 0:
            (b if n % 2 else a).flush()
    a.close()
    b.close()
    ids = [json.loads(x)["recommendation_id"] for x in path.read_text().splitlines()]
    assert sorted(ids) == sorted(["r1", "r2", "r3"] + [f"m{n}" for n in range(300)])


def test_impression_log_writes_a_quiet_services_last_lines_within_its_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "impressions.jsonl"
    log = ImpressionLog(path, flush_seconds=0.2)
    log.log("r1", "champion", "v1", "u1", ["i1"])
    log.log("r2", "champion", "v1", "u2", ["i2"])  # no answer comes after these
    deadline = time.monotonic() + 5
    while len(read_impressions(path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_impressions(path)["recommendation_id"].tolist() == ["r1", "r2"]
    log.close()
