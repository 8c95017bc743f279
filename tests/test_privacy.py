"""forget (data side): the customer leaves every raw, validated, quarantine and feature table, other
customers' rows stay exactly as they were, and the log holds a salted hash, never the id."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.privacy import LOG_FILE, ForgetList, forget_user, is_forgotten, user_hash
from features.validate import validate_workspace
from features.workspace import Workspace

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A workspace with u1..u3: CSV events (u2 written with spaces, one bad u2 row for quarantine),
    Parquet customers, validated + quarantine tables, and feature tables keyed by user_idx."""
    pd.DataFrame(
        {
            "user_id": ["u1", " u2 ", "u2", "u3", "u2"],
            "item_id": ["a", "b", "c", "a", "b"],
            "event_type": ["view", "purchase", "view", "view", "view"],
            "timestamp": ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "not a date"],
        }
    ).to_csv(tmp_path / "events.csv", index=False)
    pq.write_table(
        pa.table({"user_id": ["u1", "u2", "u3"], "birth_year": [1980, 1990, 2000]}),
        tmp_path / "customers.parquet",
    )
    pq.write_table(pa.table({"item_id": ["a", "b", "c"]}), tmp_path / "catalog.parquet")
    w = Workspace.at(tmp_path)
    validate_workspace(w, now=NOW)
    f = w.features_dir
    (f / "splits" / "loo").mkdir(parents=True)
    pq.write_table(
        pa.table({"user_idx": pa.array([0, 1, 2], pa.int32()), "user_id": ["u1", "u2", "u3"]}),
        w.feature("users"),
    )
    pq.write_table(
        pa.table({"item_idx": pa.array([0, 1, 2], pa.int32()), "item_id": ["a", "b", "c"]}),
        w.feature("items"),
    )
    pq.write_table(
        pa.table(
            {
                "user_idx": pa.array([0, 1, 1, 2], pa.int32()),
                "item_idx": pa.array([0, 1, 2, 0], pa.int32()),
                "value": pa.array([1, 5, 1, 1], pa.float32()),
            }
        ),
        w.feature("interactions"),
    )
    pq.write_table(
        pa.table(
            {
                "user_idx": pa.array([1, 1, 0], pa.int32()),
                "item_idx": pa.array([[1, 2], [2], [0]], pa.list_(pa.int32())),
            }
        ),
        w.feature("sequences"),
    )
    pq.write_table(
        pa.table(
            {
                "user_idx": pa.array([0, 1], pa.int32()),
                "item_idx": pa.array([0, 2], pa.int32()),
                "ts": pa.array([1, 2], pa.int64()),
            }
        ),
        f / "splits" / "loo" / "test.parquet",
    )
    return w


def test_forget_removes_the_customer_everywhere(ws: Workspace) -> None:
    before_items = pq.read_table(ws.feature("items"))
    removed = forget_user(ws, "u2")
    assert removed == {
        "events.csv": 3,
        "customers.parquet": 1,
        "validated/events.parquet": 2,
        "validated/customers.parquet": 1,
        "quarantine/events.parquet": 1,
        "features/users.parquet": 1,
        "features/interactions.parquet": 2,
        "features/sequences.parquet": 2,
        "features/splits/loo/test.parquet": 1,
    }
    # raw CSV is still a CSV, with the other rows as they were
    ev = pd.read_csv(ws.root / "events.csv", dtype=str)
    assert ev["user_id"].tolist() == ["u1", "u3"] and ev["timestamp"].tolist() == ["2024-01-01", "2024-01-04"]
    assert pd.read_parquet(ws.root / "customers.parquet")["birth_year"].tolist() == [1980, 2000]
    for path in [
        ws.validated("events"),
        ws.validated("customers"),
        ws.quarantine("events"),
        ws.feature("users"),
    ]:
        assert "u2" not in pd.read_parquet(path)["user_id"].str.strip().tolist(), path
    assert pd.read_parquet(ws.feature("interactions"))["user_idx"].tolist() == [0, 2]
    assert pd.read_parquet(ws.feature("sequences"))["user_idx"].tolist() == [0]
    assert pd.read_parquet(ws.split_dir("loo") / "test.parquet")["user_idx"].tolist() == [0]
    assert pq.read_table(ws.feature("items")).equals(before_items)  # no user column: untouched
    # a rebuild from the raw tables cannot bring the customer back
    summary = validate_workspace(ws, now=NOW)
    assert summary["events"] == {"input_rows": 2, "accepted": 2, "quarantined": 0}


def test_forget_log_holds_a_salted_hash_never_the_id(ws: Workspace) -> None:
    forget_user(ws, "u2", now=NOW)
    forget_user(ws, "nobody", now=NOW)  # unknown customer: nothing removed, still logged
    text = (ws.root / LOG_FILE).read_text()
    assert "u2" not in text and "nobody" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [e["total"] for e in lines] == [14, 0]
    assert lines[1]["rows_removed"] == {}
    # the hash is the salted one (answerable with the workspace's salt), not a bare sha256 of the id
    assert lines[0]["user_hash"] == user_hash(ws, "u2") != user_hash(ws, "u3")

    assert lines[0]["user_hash"] != hashlib.sha256(b"u2").hexdigest()


def test_forget_rejects_an_empty_id(ws: Workspace) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        forget_user(ws, "  ")


def test_the_forget_list_follows_the_log_without_being_rebuilt(ws: Workspace) -> None:
    """A service holds one ForgetList: an erasure written by another process (`shoprec forget`)
    shows up on the next check, because the list re-reads the log when its size changes."""
    forgotten = ForgetList(ws)
    assert "u2" not in forgotten and not is_forgotten(ws, "u2")  # no log, no salt yet: nobody
    assert not (ws.root / ".forget_salt").exists()  # checking never creates the salt
    forget_user(ws, "u2")
    assert "u2" in forgotten and " u2 " in forgotten and "u1" not in forgotten
    assert is_forgotten(ws, "u2") and not is_forgotten(ws, "u3")
    forget_user(ws, "u3")
    assert "u3" in forgotten and is_forgotten(ws, "u3")
    assert len(forgotten.hashes()) == 2


def test_forget_reaches_a_data_sets_extra_tables_and_the_training_cache(ws: Workspace) -> None:
    """`data fetch complete-journey` keeps demographics, campaigns and redemptions under extra/;
    the fitted complements cached between the models of a retrain learned from the customer too."""
    (ws.root / "extra").mkdir()
    pq.write_table(
        pa.table({"user_id": ["u1", "u2", "u2"], "campaign_id": [8, 8, 12]}),
        ws.root / "extra" / "campaigns.parquet",
    )
    pq.write_table(
        pa.table({"coupon_upc": [1, 2], "item_id": ["a", "b"]}), ws.root / "extra" / "coupons.parquet"
    )
    cached = ws.root / ".cache" / "complements" / "abc"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    removed = forget_user(ws, "u2")
    assert removed["extra/campaigns.parquet"] == 2 and "extra/coupons.parquet" not in removed
    assert pd.read_parquet(ws.root / "extra" / "campaigns.parquet")["user_id"].tolist() == ["u1"]
    assert not (ws.root / ".cache").exists()
