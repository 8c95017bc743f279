"""The durable change log (features.changelog) and how `features build` folds it in.

Known answers on tiny tables: typed round trips and positions; a bad batch writes nothing;
several processes appending at once lose and mangle nothing; a line cut by a crash is quarantined
and the next append is intact; the build appends logged events, upserts catalog/stock/customers by
key (last write wins, column by column), quarantines bad log rows per source and records the
positions it folded; `forget` blanks a customer's lines without moving any position.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from features import changelog
from features.changelog import ChangeLogError
from features.validate import validate_workspace
from features.workspace import Workspace

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _ts(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """Raw events (u1, u2), a catalogue (a, b), stock (a: S/M, b unsized), customers (u1, u2)."""
    pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "item_id": ["a", "b"],
            "event_type": ["view", "purchase"],
            "timestamp": [_ts("2024-01-01"), _ts("2024-01-02")],
        }
    ).to_parquet(tmp_path / "events.parquet")
    pd.DataFrame(
        {
            "item_id": ["a", "b"],
            "title": ["Lamp", "Desk"],
            "category": ["home/lamps", "home/desks"],
            "price": [10.0, 99.0],
        }
    ).to_parquet(tmp_path / "catalog.parquet")
    pd.DataFrame({"item_id": ["a", "a", "b"], "size": ["S", "M", ""], "quantity": [3, 0, 7]}).to_csv(
        tmp_path / "stock.csv", index=False
    )
    pd.DataFrame(
        {"user_id": ["u1", "u2"], "birth_year": [1980, 1990], "consent_personalisation": [True, False]}
    ).to_parquet(tmp_path / "customers.parquet")
    return Workspace.at(tmp_path)


def _raw_hashes(ws: Workspace) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ws.root.glob("*.*")) if p.is_file()
    }


# -- append / read ------------------------------------------------------------------------------


def test_append_then_read_round_trips_typed_rows_and_positions(ws: Workspace) -> None:
    first = changelog.append(
        ws,
        "events",
        [
            {"user_id": "u9", "item_id": "a", "event_type": "purchase", "timestamp": "2024-03-01T10:00:00Z",
             "quantity": 2, "price": 9.5, "recommendation_id": "r-1"},
            {"user_id": 42, "item_id": "b", "event_type": "view", "timestamp": datetime(2024, 3, 2, 8, 30)},
        ],
        writer="w1",
    )  # fmt: skip
    assert first == changelog.log_path(ws, "events").stat().st_size == changelog.position(ws, "events")
    rows, pos = changelog.read(ws, "events")
    assert pos == first
    got = rows.to_pylist()
    assert [r["user_id"] for r in got] == ["u9", "42"]  # a numeric id becomes its text
    assert got[0]["timestamp"] == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert got[1]["timestamp"] == datetime(2024, 3, 2, 8, 30, tzinfo=UTC)  # naive = UTC
    assert (got[0]["quantity"], got[0]["price"], got[0]["recommendation_id"]) == (2, 9.5, "r-1")
    assert got[1]["quantity"] is None and got[1]["recommendation_id"] is None
    assert {r["_writer"] for r in got} == {"w1"} and all(r["_at"] is not None for r in got)

    # Tailing: nothing new at the end; the next append comes back alone, from the old position.
    assert changelog.read(ws, "events", since=pos)[0].num_rows == 0
    second = changelog.append(
        ws, "events", [{"user_id": "u1", "item_id": "a", "event_type": "view", "timestamp": 1.7e9}]
    )
    new, pos2 = changelog.read(ws, "events", since=pos)
    assert pos2 == second > first
    assert new.column("user_id").to_pylist() == ["u1"]
    assert new.column("timestamp").to_pylist() == [datetime.fromtimestamp(1.7e9, UTC)]


def test_read_refuses_positions_the_log_never_had(ws: Workspace) -> None:
    end = changelog.append(ws, "stock", [{"item_id": "a", "size": "S", "quantity": 1}])
    with pytest.raises(ChangeLogError, match="past the end"):
        changelog.read(ws, "stock", since=end + 10)
    with pytest.raises(ChangeLogError, match="not the start of a line"):
        changelog.read(ws, "stock", since=3)
    with pytest.raises(ChangeLogError, match="does not exist"):
        changelog.read(ws, "customers", since=5)
    assert changelog.read(ws, "customers")[0].num_rows == 0  # no log yet: empty, position 0
    assert changelog.read(ws, "customers")[1] == 0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"item_id": "a", "colour": "red"}], "unknown column"),
        ([{"item_id": "a", "price": "cheap"}], "column 'price': expected a number"),
        ([{"item_id": "a", "active": "maybe"}], "expected true or false"),
        ([{"item_id": "a", "created_at": "yesterday"}], "column 'created_at'"),
        ([{"item_id": "a", "price": float("inf")}], "finite"),
    ],
)
def test_a_bad_batch_raises_and_writes_nothing(ws: Workspace, rows: list[dict], message: str) -> None:
    good = {"item_id": "z", "title": "fine"}
    with pytest.raises(ChangeLogError, match=message):
        changelog.append(ws, "catalog", [good, *rows])
    assert changelog.position(ws, "catalog") == 0
    with pytest.raises(ChangeLogError, match="unknown table"):
        changelog.append(ws, "orders", [good])


def _append_many(root: str, writer: str, n: int) -> None:
    w = Workspace.at(root)
    for i in range(n):
        changelog.append(
            w,
            "events",
            [
                {"user_id": writer, "item_id": f"i{i}", "event_type": "view", "timestamp": "2024-01-01T00:00:00Z",
                 "session_id": "x" * (i % 50)}
                for _ in range(3)
            ],
            writer=writer,
        )  # fmt: skip


def test_processes_appending_at_once_lose_and_interleave_nothing(ws: Workspace) -> None:
    writers, n = 4, 60
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(ws.root), f"w{k}", n)) for k in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows, _ = changelog.read(ws, "events")
    assert rows.num_rows == writers * n * 3
    for k in range(writers):
        mine = [r["item_id"] for r in rows.to_pylist() if r["_writer"] == f"w{k}"]
        # each append's three rows stay together, and one writer's appends stay in order
        assert mine == [f"i{i}" for i in range(n) for _ in range(3)]


def test_a_line_cut_by_a_crash_is_quarantined_and_the_next_append_is_intact(ws: Workspace) -> None:
    changelog.append(
        ws, "events", [{"user_id": "u5", "item_id": "a", "event_type": "view", "timestamp": "2024-02-01"}]
    )
    with changelog.log_path(ws, "events").open("ab") as f:
        f.write(b'{"user_id":"u6","item_id":"b","event_ty')  # the process died mid-write
    changelog.append(
        ws, "events", [{"user_id": "u7", "item_id": "b", "event_type": "view", "timestamp": "2024-02-02"}]
    )
    rows, _ = changelog.read(ws, "events")  # the cut line is skipped, both good rows are there
    assert rows.column("user_id").to_pylist() == ["u5", "u7"]
    summary = validate_workspace(ws, now=NOW)
    assert summary["events"]["sources"]["changes/events.jsonl"] == {
        "input_rows": 3,
        "accepted": 2,
        "quarantined": 1,
    }
    bad = pq.read_table(ws.quarantine_dir / "changes" / "events.parquet").to_pylist()
    assert (
        len(bad) == 1
        and bad[0]["row_number"] == 2
        and bad[0]["reason"].startswith("malformed change-log line")
    )
    assert bad[0]["line"].startswith('{"user_id":"u6"')


# -- the build folds the log in ------------------------------------------------------------------


def test_build_appends_events_and_quarantines_bad_ones_per_source(ws: Workspace) -> None:
    before = _raw_hashes(ws)
    changelog.append(
        ws,
        "events",
        [
            {"user_id": "u3", "item_id": "c", "event_type": "purchase", "timestamp": "2024-05-01", "recommendation_id": "r7"},
            {"user_id": " ", "item_id": "c", "event_type": "view", "timestamp": "2024-05-01"},  # missing user_id
            {"user_id": "u3", "item_id": "c", "event_type": "view", "timestamp": "2030-01-01"},  # in the future
            {"user_id": "u1", "item_id": "b", "event_type": "add_to_cart", "timestamp": "2024-05-02", "quantity": 0},
        ],
    )  # fmt: skip
    summary = validate_workspace(ws, now=NOW)
    ev = summary["events"]
    assert ev["sources"] == {
        "events.parquet": {"input_rows": 2, "accepted": 2, "quarantined": 0},
        "changes/events.jsonl": {"input_rows": 4, "accepted": 1, "quarantined": 3},
    }
    assert (ev["input_rows"], ev["accepted"], ev["quarantined"]) == (6, 3, 3)
    validated = pq.read_table(ws.validated("events")).to_pylist()
    assert [(r["user_id"], r["item_id"], r["recommendation_id"]) for r in validated] == [
        ("u1", "a", None),
        ("u2", "b", None),
        ("u3", "c", "r7"),
    ]
    bad = pq.read_table(ws.quarantine_dir / "changes" / "events.parquet").to_pylist()
    assert [(r["row_number"], r["reason"]) for r in bad] == [
        (2, "missing user_id"),
        (3, "timestamp in the future"),
        (4, "quantity < 1"),
    ]
    assert pq.read_table(ws.quarantine("events")).num_rows == 0  # the raw file's quarantine is its own
    assert _raw_hashes(ws) == before  # raw tables stay immutable
    folded = json.loads((ws.validated_dir / "changes_folded.json").read_text())
    assert folded == {"events": changelog.position(ws, "events"), "catalog": 0, "stock": 0, "customers": 0}


def test_build_upserts_catalog_stock_and_customers_last_write_wins(ws: Workspace) -> None:
    changelog.append(
        ws,
        "catalog",
        [
            {"item_id": "a", "active": False},  # hide a, keep its title and price
            {"item_id": "c", "title": "Chair", "category": "home/chairs", "price": 45.0},  # a new item
            {"item_id": "b", "price": 80.0},
            {"item_id": "b", "price": -5.0},  # bad: quarantined, the 80 stands
            {"item_id": "c", "price": 40.0},
        ],
    )
    changelog.append(
        ws, "stock", [{"item_id": "a", "size": "M", "quantity": 4}, {"item_id": "c", "quantity": 2}]
    )
    changelog.append(
        ws,
        "stock",
        [{"item_id": "a", "size": "M", "quantity": 1}, {"item_id": "b", "size": None, "quantity": 0}],
    )
    changelog.append(
        ws,
        "customers",
        [
            {"user_id": "u2", "consent_personalisation": True},
            {"user_id": "u3", "birth_year": 2001, "consent_email": True},
        ],
    )
    summary = validate_workspace(ws, now=NOW)
    assert summary["catalog"]["sources"]["changes/catalog.jsonl"] == {
        "input_rows": 5,
        "accepted": 4,
        "quarantined": 1,
    }
    assert (
        summary["catalog"]["rows"] == 3
        and summary["stock"]["rows"] == 4
        and summary["customers"]["rows"] == 3
    )

    catalog = pd.read_parquet(ws.validated("catalog")).set_index("item_id")
    assert list(catalog.index) == ["a", "b", "c"]  # raw rows first, new keys after
    assert catalog.loc["a", ["title", "price", "active"]].tolist() == ["Lamp", 10.0, False]
    assert catalog.loc["b", ["title", "price", "active"]].tolist() == ["Desk", 80.0, True]
    assert catalog.loc["c", ["title", "category", "price", "active"]].tolist() == [
        "Chair",
        "home/chairs",
        40.0,
        True,
    ]

    stock = pd.read_parquet(ws.validated("stock"))
    assert sorted(zip(stock["item_id"], stock["size"], stock["quantity"], strict=True)) == [
        ("a", "M", 1),
        ("a", "S", 3),
        ("b", "", 0),  # a null size is the unsized row
        ("c", "", 2),
    ]
    customers = pd.read_parquet(ws.validated("customers")).set_index("user_id")
    assert customers.loc["u2", "consent_personalisation"] == True  # noqa: E712 - numpy/pandas bool
    assert customers.loc["u2", "birth_year"] == 1990  # not given in the update: kept
    assert customers.loc["u3", "birth_year"] == 2001 and customers.loc["u3", "consent_email"] == True  # noqa: E712


def test_the_build_records_what_it_folded_and_the_rest_replays_from_there(ws: Workspace) -> None:
    from features.build import FeatureConfig, build_features

    changelog.append(
        ws, "events", [{"user_id": "u4", "item_id": "a", "event_type": "purchase", "timestamp": "2024-06-01"}]
    )
    summary = build_features(ws, FeatureConfig(), now=NOW)
    folded = summary["changes_folded"]
    assert folded["events"] == changelog.position(ws, "events") > 0
    assert json.loads((ws.features_dir / "summary.json").read_text())["changes_folded"] == folded
    assert "u4" in set(pd.read_parquet(ws.feature("users"))["user_id"])  # the next training sees it
    # What the service appends after the build is exactly what it replays from the build's position.
    changelog.append(
        ws, "events", [{"user_id": "u5", "item_id": "b", "event_type": "view", "timestamp": "2024-06-02"}]
    )
    later, _ = changelog.read(ws, "events", since=folded["events"])
    assert later.column("user_id").to_pylist() == ["u5"]


def test_a_workspace_with_only_logged_events_builds(tmp_path: Path) -> None:
    w = Workspace.at(tmp_path)
    from features.errors import BuildError

    with pytest.raises(BuildError, match="no events"):
        validate_workspace(w, now=NOW)
    changelog.append(
        w, "events", [{"user_id": "u1", "item_id": "a", "event_type": "view", "timestamp": "2024-01-01"}]
    )
    assert validate_workspace(w, now=NOW)["events"]["accepted"] == 1
    assert not w.quarantine("events").exists()


# -- forget ---------------------------------------------------------------------------------------


def test_forget_blanks_the_customers_lines_and_keeps_every_position(ws: Workspace) -> None:
    row = {"item_id": "a", "event_type": "view", "timestamp": "2024-01-01"}
    p1 = changelog.append(ws, "events", [{**row, "user_id": "u1"}, {**row, "user_id": " u2 "}])
    p2 = changelog.append(ws, "events", [{**row, "user_id": "u3"}, {**row, "user_id": "u2", "item_id": "b"}])
    changelog.append(ws, "customers", [{"user_id": "u2", "consent_email": True}, {"user_id": "u22"}])
    size = changelog.log_path(ws, "events").stat().st_size

    assert changelog.forget(ws, "u2") == {"changes/events.jsonl": 2, "changes/customers.jsonl": 1}
    text = changelog.log_path(ws, "events").read_bytes()
    assert len(text) == size and b"u2" not in text
    assert b'u2"' not in changelog.log_path(ws, "customers").read_bytes()
    assert changelog.read(ws, "events")[0].column("user_id").to_pylist() == ["u1", "u3"]
    assert changelog.read(ws, "events", since=p1)[0].column("user_id").to_pylist() == ["u3"]
    assert changelog.read(ws, "events", since=p2)[0].num_rows == 0
    assert changelog.read(ws, "customers")[0].column("user_id").to_pylist() == ["u22"]
    counts = validate_workspace(ws, now=NOW)["events"]["sources"]["changes/events.jsonl"]
    assert counts == {"input_rows": 2, "accepted": 2, "quarantined": 0}  # blank lines are no rows
