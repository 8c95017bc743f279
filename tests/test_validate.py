"""Validation and quarantine: every injected bad row lands in quarantine with the right reason, the
rest comes out typed as docs/workspace.md says, and `input = accepted + quarantined` per table."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.errors import BuildError
from features.schemas import arrow_schema, pandera_schema
from features.validate import validate_table, validate_workspace
from features.workspace import Workspace

NOW = datetime(2025, 1, 1, tzinfo=UTC)

# (row, expected reason or None). Raw values are text, as a user's CSV would hold them.
EVENTS: list[tuple[dict[str, str], str | None]] = [
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "View",
            "timestamp": "2024-05-01T10:00:00Z",
            "quantity": "",
            "price": "9.5",
            "order_id": "",
        },
        None,
    ),
    (
        {
            "user_id": " u2 ",
            "item_id": "i2",
            "event_type": "purchase",
            "timestamp": "2024-05-01 12:00:00",
            "quantity": "2",
            "price": "",
            "order_id": "o1",
        },
        None,
    ),
    # other event types are kept (weight 0 downstream), not quarantined
    (
        {
            "user_id": "u3",
            "item_id": "i3",
            "event_type": "wishlist",
            "timestamp": "2024-05-02T00:00:00+02:00",
            "quantity": "1",
            "price": "0",
            "order_id": "",
        },
        None,
    ),
    (
        {
            "user_id": "",
            "item_id": "i1",
            "event_type": "view",
            "timestamp": "2024-05-01",
            "quantity": "1",
            "price": "",
            "order_id": "",
        },
        "missing user_id",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "  ",
            "event_type": "view",
            "timestamp": "2024-05-01",
            "quantity": "1",
            "price": "",
            "order_id": "",
        },
        "missing item_id",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "",
            "timestamp": "2024-05-01",
            "quantity": "1",
            "price": "",
            "order_id": "",
        },
        "missing event_type",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "view",
            "timestamp": "",
            "quantity": "1",
            "price": "",
            "order_id": "",
        },
        "missing timestamp",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "view",
            "timestamp": "yesterday",
            "quantity": "1",
            "price": "",
            "order_id": "",
        },
        "unparsable timestamp",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "view",
            "timestamp": "2031-01-01",
            "quantity": "1",
            "price": "",
            "order_id": "",
        },
        "timestamp in the future",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "purchase",
            "timestamp": "2024-05-01",
            "quantity": "0",
            "price": "",
            "order_id": "",
        },
        "quantity < 1",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "purchase",
            "timestamp": "2024-05-01",
            "quantity": "-3",
            "price": "",
            "order_id": "",
        },
        "quantity < 1",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "purchase",
            "timestamp": "2024-05-01",
            "quantity": "1.5",
            "price": "",
            "order_id": "",
        },
        "quantity not an integer",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "purchase",
            "timestamp": "2024-05-01",
            "quantity": "two",
            "price": "",
            "order_id": "",
        },
        "quantity not a number",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "purchase",
            "timestamp": "2024-05-01",
            "quantity": "1",
            "price": "-0.01",
            "order_id": "",
        },
        "negative price",
    ),
    (
        {
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "purchase",
            "timestamp": "2024-05-01",
            "quantity": "1",
            "price": "cheap",
            "order_id": "",
        },
        "price not a number",
    ),
    # several faults at once: every reason is listed
    (
        {
            "user_id": "",
            "item_id": "i1",
            "event_type": "view",
            "timestamp": "nope",
            "quantity": "0",
            "price": "",
            "order_id": "",
        },
        "missing user_id; unparsable timestamp; quantity < 1",
    ),
]


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    pd.DataFrame(rows, dtype=str).to_csv(path, index=False)


def _check_quarantine(q: pd.DataFrame, expected: list[str | None]) -> None:
    """Every bad row (1-based row_number) is there exactly once, with its reason; no good row is."""
    want = {i + 1: r for i, r in enumerate(expected) if r is not None}
    got = dict(zip(q["row_number"].tolist(), q["reason"].tolist(), strict=True))
    assert got == want


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_events_every_bad_row_is_quarantined_with_its_reason(tmp_path: Path, fmt: str) -> None:
    rows = [r for r, _ in EVENTS]
    if fmt == "csv":
        _write_csv(tmp_path / "events.csv", rows)
    else:  # text columns in Parquet follow the same rules
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "events.parquet")
    ws = Workspace.at(tmp_path)
    summary = validate_workspace(ws, now=NOW)

    n_bad = sum(r is not None for _, r in EVENTS)
    assert summary == {
        "events": {"input_rows": len(EVENTS), "accepted": len(EVENTS) - n_bad, "quarantined": n_bad}
    }
    q = pd.read_parquet(ws.quarantine("events"))
    _check_quarantine(q, [r for _, r in EVENTS])
    # the original values come back as text, untouched
    bad_ts = q.loc[q["reason"] == "unparsable timestamp", "timestamp"].tolist()
    assert bad_ts == ["yesterday"]

    ok = pd.read_parquet(ws.validated("events"))
    pandera_schema("events").validate(ok)
    assert pq.read_schema(ws.validated("events")) == arrow_schema("events")
    assert ok["user_id"].tolist() == ["u1", "u2", "u3"]  # trimmed, input order
    assert ok["event_type"].tolist() == ["view", "purchase", "wishlist"]  # lower-cased, others kept
    assert ok["quantity"].tolist() == [1, 2, 1]  # "" -> the default 1
    assert ok["price"].isna().tolist() == [False, True, False]
    assert ok["order_id"].isna().tolist() == [True, False, True]  # "" -> null
    assert ok["timestamp"].tolist() == [
        pd.Timestamp("2024-05-01 10:00", tz="UTC"),
        pd.Timestamp("2024-05-01 12:00", tz="UTC"),  # naive -> UTC
        pd.Timestamp("2024-05-01 22:00", tz="UTC"),  # +02:00 converted
    ]


def test_typed_parquet_events_and_absent_optional_columns() -> None:
    """Typed columns (as `data generate` writes them) take the fast path; no quantity column -> 1."""
    raw = pa.table(
        {
            "user_id": pa.array(["a", None, "c", "d"]),
            "item_id": pa.array(["x", "y", "z", "w"]),
            "event_type": pa.array(["view", "view", "add_to_cart", "view"]),
            "timestamp": pa.array(
                [datetime(2024, 1, 1), datetime(2024, 1, 2), datetime(2026, 1, 1), None], pa.timestamp("ns")
            ),
        }
    )
    ok, q = validate_table(raw, "events", now=NOW)
    assert ok.schema == arrow_schema("events")
    assert ok.column("user_id").to_pylist() == ["a"]
    assert ok.column("quantity").to_pylist() == [1]
    assert ok.column("size").to_pylist() == [None]
    assert q.column("reason").to_pylist() == [
        "missing user_id",
        "timestamp in the future",
        "missing timestamp",
    ]
    assert q.column("row_number").to_pylist() == [2, 3, 4]
    assert q.schema.field("timestamp").type == pa.string()


def test_epoch_seconds_and_milliseconds_are_timestamps() -> None:
    raw = pa.table(
        {
            "user_id": ["a", "b"],
            "item_id": ["x", "y"],
            "event_type": ["view", "view"],
            "timestamp": pa.array([1_700_000_000, 1_700_000_000_000], pa.int64()),
        }
    )
    ok, q = validate_table(raw, "events", now=NOW)
    assert q.num_rows == 0
    assert ok.column("timestamp").to_pylist() == [datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)] * 2


CATALOG = [
    (
        {
            "item_id": "i1",
            "title": "Cat food",
            "category": "pets/cats/food",
            "brand": "Purr",
            "price": "3.5",
            "gender": "",
            "created_at": "2024-01-01",
        },
        None,
    ),
    (
        {
            "item_id": "i2",
            "title": "Dress",
            "category": "fashion/women/dresses",
            "brand": "",
            "price": "",
            "gender": "Women",
            "created_at": "",
        },
        None,
    ),
    (
        {
            "item_id": "i1",
            "title": "dup",
            "category": "",
            "brand": "",
            "price": "1",
            "gender": "",
            "created_at": "",
        },
        "duplicate item_id",
    ),
    (
        {
            "item_id": "",
            "title": "no id",
            "category": "",
            "brand": "",
            "price": "1",
            "gender": "",
            "created_at": "",
        },
        "missing item_id",
    ),
    (
        {
            "item_id": "i3",
            "title": "bad",
            "category": "",
            "brand": "",
            "price": "-2",
            "gender": "kids",
            "created_at": "someday",
        },
        "negative price; gender not in women/men/unisex; unparsable created_at",
    ),
    # i3's first row was bad, so this later i3 is the one that counts: not a duplicate
    (
        {
            "item_id": "i3",
            "title": "good",
            "category": "",
            "brand": "",
            "price": "2",
            "gender": "unisex",
            "created_at": "",
        },
        None,
    ),
]

STOCK = [
    ({"item_id": "i1", "size": "", "quantity": "5"}, None),
    ({"item_id": "i2", "size": "M", "quantity": "0"}, None),
    ({"item_id": "i2", "size": "L", "quantity": "-1"}, "quantity < 0"),
    ({"item_id": "i2", "size": "M", "quantity": "3"}, "duplicate (item_id, size)"),
    ({"item_id": "i2", "size": "S", "quantity": ""}, "missing quantity"),
    ({"item_id": "i2", "size": "XL", "quantity": "2.5"}, "quantity not an integer"),
]

CUSTOMERS = [
    (
        {
            "user_id": "u1",
            "birth_year": "1980",
            "gender": "F",
            "city": "Utrecht",
            "signup_date": "2023-02-01",
            "consent_personalisation": "true",
            "consent_email": "0",
        },
        None,
    ),
    (
        {
            "user_id": "u2",
            "birth_year": "",
            "gender": "",
            "city": "",
            "signup_date": "",
            "consent_personalisation": "",
            "consent_email": "yes",
        },
        None,
    ),
    (
        {
            "user_id": "u1",
            "birth_year": "1990",
            "gender": "",
            "city": "",
            "signup_date": "",
            "consent_personalisation": "",
            "consent_email": "",
        },
        "duplicate user_id",
    ),
    (
        {
            "user_id": "u3",
            "birth_year": "old",
            "gender": "",
            "city": "",
            "signup_date": "",
            "consent_personalisation": "maybe",
            "consent_email": "",
        },
        "birth_year not a number; consent_personalisation not a boolean",
    ),
    (
        {
            "user_id": "u4",
            "birth_year": "1850",
            "gender": "",
            "city": "",
            "signup_date": "2030-01-01",
            "consent_personalisation": "",
            "consent_email": "",
        },
        "birth_year outside 1900..2025; signup_date in the future",
    ),
]


def test_every_table_accounting_and_reasons(tmp_path: Path) -> None:
    tables = {"events": EVENTS, "catalog": CATALOG, "stock": STOCK, "customers": CUSTOMERS}
    for name, rows in tables.items():
        _write_csv(tmp_path / f"{name}.csv", [r for r, _ in rows])
    ws = Workspace.at(tmp_path)
    summary = validate_workspace(ws, now=NOW)

    assert set(summary) == set(tables)
    for name, rows in tables.items():
        expected = [r for _, r in rows]
        n_bad = sum(r is not None for r in expected)
        s = summary[name]
        assert s == {"input_rows": len(rows), "accepted": len(rows) - n_bad, "quarantined": n_bad}, name
        assert s["input_rows"] == s["accepted"] + s["quarantined"]
        _check_quarantine(pd.read_parquet(ws.quarantine(name)), expected)
        ok = pd.read_parquet(ws.validated(name))
        pandera_schema(name).validate(ok)
        assert pq.read_schema(ws.validated(name)) == arrow_schema(name)

    cat = pd.read_parquet(ws.validated("catalog"))
    assert cat["item_id"].tolist() == ["i1", "i2", "i3"]
    assert cat["title"].tolist() == ["Cat food", "Dress", "good"]
    assert cat["gender"].tolist()[1:] == ["women", "unisex"] and pd.isna(cat["gender"].iloc[0])
    assert cat["created_at"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")

    stock = pd.read_parquet(ws.validated("stock"))
    assert list(zip(stock["item_id"], stock["size"], stock["quantity"], strict=True)) == [
        ("i1", "", 5),
        ("i2", "M", 0),
    ]

    cust = pd.read_parquet(ws.validated("customers"))
    assert cust["user_id"].tolist() == ["u1", "u2"]
    assert cust["birth_year"].tolist()[0] == 1980 and pd.isna(cust["birth_year"].iloc[1])
    assert cust["gender"].tolist()[0] == "f"
    assert cust["consent_personalisation"].tolist()[0] is True and pd.isna(
        cust["consent_personalisation"].iloc[1]
    )
    assert cust["consent_email"].tolist() == [False, True]


def test_missing_required_column_names_file_and_column(tmp_path: Path) -> None:
    pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "event_type": ["view"]}).to_csv(
        tmp_path / "events.csv", index=False
    )
    with pytest.raises(BuildError, match=r"events\.csv.*'timestamp'"):
        validate_workspace(Workspace.at(tmp_path), now=NOW)


def test_missing_required_column_in_optional_table(tmp_path: Path) -> None:
    _write_csv(tmp_path / "events.csv", [EVENTS[0][0]])
    pd.DataFrame({"item_id": ["i"], "size": ["M"]}).to_parquet(tmp_path / "stock.parquet")
    with pytest.raises(BuildError, match=r"stock\.parquet.*'quantity'"):
        validate_workspace(Workspace.at(tmp_path), now=NOW)


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "events.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(BuildError, match=r"events\.parquet: cannot read"):
        validate_workspace(Workspace.at(tmp_path), now=NOW)


def test_no_events_table_is_an_error(tmp_path: Path) -> None:
    _write_csv(tmp_path / "catalog.csv", [CATALOG[0][0]])
    with pytest.raises(BuildError, match="no events table"):
        validate_workspace(Workspace.at(tmp_path), now=NOW)


def test_stale_outputs_of_a_removed_table_are_removed(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    _write_csv(tmp_path / "events.csv", [EVENTS[0][0]])
    _write_csv(tmp_path / "catalog.csv", [CATALOG[0][0]])
    assert set(validate_workspace(ws, now=NOW)) == {"events", "catalog"}
    assert ws.validated("catalog").exists()
    (tmp_path / "catalog.csv").unlink()
    assert set(validate_workspace(ws, now=NOW)) == {"events"}
    assert not ws.validated("catalog").exists() and not ws.quarantine("catalog").exists()
    # an empty quarantine file is still written, so a stale one never survives
    assert pd.read_parquet(ws.quarantine("events")).empty


def test_blocks_keep_file_row_numbers_and_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events stream in blocks; a bad row's row_number is its place in the file, not in its block."""
    import features.validate as validate

    monkeypatch.setattr(validate, "BLOCK_ROWS", 3)
    users = ["u0", "u1", None, "u3", "u4", "u5", None, "u7"]  # rows 3 and 7 are bad (blocks 1 and 3)
    pq.write_table(
        pa.table(
            {
                "user_id": users,
                "item_id": ["i"] * 8,
                "event_type": ["view"] * 8,
                "timestamp": pa.array([datetime(2024, 1, d + 1) for d in range(8)], pa.timestamp("us")),
            }
        ),
        tmp_path / "events.parquet",
    )
    ws = Workspace.at(tmp_path)
    assert validate_workspace(ws, now=NOW)["events"] == {"input_rows": 8, "accepted": 6, "quarantined": 2}
    assert pd.read_parquet(ws.quarantine("events"))["row_number"].tolist() == [3, 7]
    assert pd.read_parquet(ws.validated("events"))["user_id"].tolist() == ["u0", "u1", "u3", "u4", "u5", "u7"]


def test_malformed_csv_lines_are_quarantined_in_file_order(tmp_path: Path) -> None:
    """A line with too many or too few fields is a bad row, not a bad file; later rows keep their
    file row numbers."""
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,event_type,timestamp\n"
        "u1,i1,view,2024-01-01\n"  # row 1
        "u2,i1,view,2024-01-01,extra\n"  # row 2: 5 fields
        "u3,i1\n"  # row 3: 2 fields
        ",i1,view,2024-01-01\n"  # row 4: missing user
        "u5,i1,view,2024-01-01\n"  # row 5
    )
    ws = Workspace.at(tmp_path)
    assert validate_workspace(ws, now=NOW)["events"] == {"input_rows": 5, "accepted": 2, "quarantined": 3}
    q = pd.read_parquet(ws.quarantine("events"))
    assert q["row_number"].tolist() == [2, 3, 4]
    assert q["reason"].tolist() == [
        "malformed CSV line: 5 fields, expected 4",
        "malformed CSV line: 2 fields, expected 4",
        "missing user_id",
    ]
    assert q["timestamp"].tolist()[0] == "2024-01-01,extra" and q["user_id"].tolist()[1] == "u3"
    assert pd.read_parquet(ws.validated("events"))["user_id"].tolist() == ["u1", "u5"]
