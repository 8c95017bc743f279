"""Benchmark: the durable change log (features.changelog) and its fold into `features build`.

What the service pays per write, and what the build pays for the log:
* `append` of 1 row (one `/events` call: flock + write + fsync): median and p99 latency;
* `append` of 1,000 stock rows (one `POST /stock` of 1,000 rows) and `read` of those rows from
  the previous position (what another worker's tail loop pays to see them);
* several processes appending at once: rows per second, and no row lost;
* `validate_workspace` with N raw events plus N/10 logged events and logged catalogue updates,
  as a ratio against the same raw events without a log, in the same run.

Speeds are measured on the shared development machine: read the ratios, not the absolute times.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from features import changelog
from features.validate import validate_workspace
from features.workspace import Workspace

RESULTS = Path(__file__).parent / "results"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _event(i: int) -> dict:
    return {
        "user_id": f"u{i % 5000}",
        "item_id": f"i{i % 2000}",
        "event_type": "view" if i % 5 else "purchase",
        "timestamp": "2024-06-01T12:00:00Z",
        "session_id": f"s{i // 7}",
    }


def _appender(root: str, writer: str, n: int) -> None:
    ws = Workspace.at(root)
    for i in range(n):
        changelog.append(ws, "events", [_event(i)], writer=writer)


def _raw_events(ws: Workspace, n: int) -> None:
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 20_000, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 5_000, n)],
            "event_type": rng.choice(["view", "add_to_cart", "purchase"], n),
            "timestamp": pd.Timestamp("2024-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86400 * 150, n), "s"),
        }
    ).to_parquet(ws.root / "events.parquet")
    pd.DataFrame({"item_id": [f"i{i}" for i in range(5000)], "price": 10.0}).to_parquet(
        ws.root / "catalog.parquet"
    )


def main(quick: bool = False) -> dict:
    base = Path(tempfile.mkdtemp(prefix="shoprec-bench-changelog-"))
    try:
        ws = Workspace.at(base / "log")
        ws.root.mkdir()
        n_single = 200 if quick else 1000
        lat = []
        for i in range(n_single):
            t = time.perf_counter()
            changelog.append(ws, "events", [_event(i)])
            lat.append(time.perf_counter() - t)
        stock = [{"item_id": f"i{i}", "size": "M", "quantity": i % 7} for i in range(1000)]
        pos = changelog.position(ws, "stock")
        t = time.perf_counter()
        changelog.append(ws, "stock", stock)
        append_1000_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        rows, _ = changelog.read(ws, "stock", since=pos)
        read_1000_ms = (time.perf_counter() - t) * 1000
        assert rows.num_rows == 1000

        procs, per = 4, (100 if quick else 500)
        cws = Workspace.at(base / "concurrent")
        cws.root.mkdir()
        ctx = multiprocessing.get_context("spawn")
        workers = [ctx.Process(target=_appender, args=(str(cws.root), f"w{k}", per)) for k in range(procs)]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        concurrent_s = time.perf_counter() - t  # includes the workers' interpreter start
        got = changelog.read(cws, "events")[0].num_rows

        n_raw = 100_000 if quick else 1_000_000
        plain = Workspace.at(base / "plain")
        plain.root.mkdir()
        _raw_events(plain, n_raw)
        folded = Workspace.at(base / "folded")
        shutil.copytree(plain.root, folded.root, dirs_exist_ok=True)
        n_log = n_raw // 10
        for start in range(0, n_log, 10_000):
            changelog.append(folded, "events", [_event(i) for i in range(start, min(n_log, start + 10_000))])
        changelog.append(
            folded, "catalog", [{"item_id": f"i{i}", "price": 9.0, "active": i % 3 > 0} for i in range(5000)]
        )
        t = time.perf_counter()
        validate_workspace(plain, now=NOW)
        plain_s = time.perf_counter() - t
        t = time.perf_counter()
        summary = validate_workspace(folded, now=NOW)
        folded_s = time.perf_counter() - t
        assert summary["events"]["accepted"] == n_raw + n_log

        result = {
            "quick": quick,
            "append_1_row_ms": {
                "median": round(float(np.median(lat)) * 1000, 3),
                "p99": round(float(np.percentile(lat, 99)) * 1000, 3),
                "n": n_single,
            },
            "append_1000_stock_rows_ms": round(append_1000_ms, 2),
            "read_1000_rows_since_position_ms": round(read_1000_ms, 2),
            "concurrent": {
                "processes": procs,
                "appends": procs * per,
                "rows_read_back": got,
                "seconds_incl_start": round(concurrent_s, 2),
            },
            "validate": {
                "raw_events": n_raw,
                "logged_events": n_log,
                "logged_catalog_rows": 5000,
                "raw_only_s": round(plain_s, 2),
                "raw_plus_log_s": round(folded_s, 2),
                "ratio": round(folded_s / plain_s, 2),
            },
            "machine": "shared 2-core development machine; ratios are the figures to read",
            "load_average_1m_at_end": round(os.getloadavg()[0], 1),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("changelog_quick.json" if quick else "changelog.json")).write_text(
        json.dumps(result, indent=2)
    )
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
