"""Benchmark: `validate_workspace` on N synthetic events (target: 10M in well under 30 s, < ~3 GB).

Events are drawn with numpy (string ids, typed timestamps, 0.1% injected bad rows) and written as
Parquet, as `data generate` does. Measured: validation wall time, events/s, peak RSS of this process
(VmHWM of the child process that validates), its CPU seconds and the load average
(the machine is shared), and the ratio against a plain pandas baseline that applies the same event rules with
boolean masks in the same run (the baseline is timed on the same file).

Run: `.venv/bin/python -m benchmarks.bench_validate [--quick]` → benchmarks/results/validate.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results" / "validate.json"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def make_events(n: int, seed: int = 0) -> pa.Table:
    """n events: 1% of users/items as ids, 4 event types, one year of timestamps; every 1000th row
    gets one injected fault (missing user, future timestamp, quantity 0 or negative price)."""
    rng = np.random.default_rng(seed)
    users = np.char.add("u", rng.integers(0, max(n // 20, 10), n).astype(str))
    items = np.char.add("i", rng.integers(0, max(n // 100, 10), n).astype(str))
    types = np.array(["view", "add_to_cart", "purchase", "remove_from_cart"])[rng.integers(0, 4, n)]
    ts = np.datetime64("2024-01-01", "us") + rng.integers(0, 365 * 86400, n).astype("timedelta64[s]")
    quantity = rng.integers(1, 4, n)
    price = rng.uniform(1, 100, n).round(2)
    bad = np.arange(0, n, 1000)
    kind = np.arange(len(bad)) % 4
    users = users.astype(object)
    users[bad[kind == 0]] = None
    ts[bad[kind == 1]] = np.datetime64("2030-01-01", "us")
    quantity[bad[kind == 2]] = 0
    price[bad[kind == 3]] = -1.0
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "event_type": pa.array(types, pa.string()),
            "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "quantity": pa.array(quantity, pa.int64()),
            "price": pa.array(price, pa.float64()),
        }
    )


def pandas_baseline(path: Path) -> tuple[int, int]:
    """The same event rules with pandas masks: (accepted, quarantined)."""
    df = pd.read_parquet(path)
    bad = df["user_id"].isna() | df["item_id"].isna() | df["event_type"].isna() | df["timestamp"].isna()
    bad |= df["timestamp"] > pd.Timestamp(NOW)
    bad |= df["quantity"] < 1
    bad |= df["price"] < 0
    df["event_type"] = df["event_type"].str.lower()
    ok = df[~bad]
    ok.to_parquet(path.with_name("baseline_ok.parquet"))
    df[bad].astype(str).to_parquet(path.with_name("baseline_bad.parquet"))
    return len(ok), int(bad.sum())


def main(quick: bool = False) -> dict:
    n = 200_000 if quick else 10_000_000
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.at(tmp)
        t0 = time.perf_counter()
        pq.write_table(make_events(n), ws.root / "events.parquet")
        t_gen = time.perf_counter() - t0

        # Validation runs in a child process so its peak RSS is its own, not the generator's.
        code = (
            "import json, time; from datetime import datetime; from features.validate import validate_workspace; "
            "from features.workspace import Workspace; t0 = time.perf_counter(); "
            f"s = validate_workspace(Workspace.at({str(ws.root)!r}), now=datetime.fromisoformat({NOW.isoformat()!r})); "
            "import re, resource; u = resource.getrusage(resource.RUSAGE_SELF); "
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
            "print(json.dumps({'s': s, 't': time.perf_counter() - t0, 'rss_kib': hwm, "
            "'cpu': u.ru_utime + u.ru_stime}))"
        )
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        child = json.loads(out.stdout.strip().splitlines()[-1])
        summary, t_ours = child["s"], child["t"]
        # The child's own peak (VmHWM of its address space): ru_maxrss would count the parent's
        # pages inherited at fork, since Linux keeps that high-water mark across exec.
        rss_ours = child["rss_kib"] / 1024**2  # GiB

        t0, c0 = time.perf_counter(), time.process_time()
        base_ok, base_bad = pandas_baseline(ws.root / "events.parquet")
        t_base, cpu_base = time.perf_counter() - t0, time.process_time() - c0
    ev = summary["events"]
    assert ev["accepted"] == base_ok and ev["quarantined"] == base_bad, (ev, base_ok, base_bad)
    result = {
        "events": n,
        "quick": quick,
        "generate_s": round(t_gen, 2),
        "validate_s": round(t_ours, 2),
        "events_per_s": round(n / t_ours),
        # CPU seconds of the validating process (imports included): on a shared 2-core machine the
        # wall time mostly measures the neighbours, this does not.
        "validate_cpu_s": round(child["cpu"], 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "validate_peak_rss_gib": round(rss_ours, 2),
        "pandas_baseline_s": round(t_base, 2),
        "speedup_vs_pandas": round(t_base / t_ours, 2),
        "pandas_baseline_cpu_s": round(cpu_base, 2),
        "cpu_speedup_vs_pandas": round(cpu_base / child["cpu"], 2),
        "summary": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(main(quick=ap.parse_args().quick)))
