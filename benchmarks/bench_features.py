"""Benchmark: `features build` on the synthetic shop (1M and 10M events; quick: ~200k).

For each size the shop is generated once (cached under benchmarks/work/), then measured in separate
subprocesses so each peak RSS is that process's own (resource.getrusage ru_maxrss):

- `build`: `features.build.build_features` (validation + every feature table + the three splits),
  the `features build` command minus the CLI;
- `baseline`: a plain pandas + scipy build of the same interaction matrix (read the validated events,
  factorize ids, weight and decay in numpy, scipy COO -> CSR summing duplicates), checked to equal
  shoprec's `interactions.parquet`.

Speed is reported as events/s and as ratios within the same run: baseline seconds / shoprec seconds
for the interaction matrix alone (load + id maps + interactions) and for the whole build.
Targets (issue 2): <= 60 s and <= 4 GB peak at 10M events on the 2-core machine. The machine is
shared, so CPU seconds and the load average are recorded beside wall-clock seconds.

    python -m benchmarks.bench_features          # 1M and 10M events (several minutes)
    python -m benchmarks.bench_features --quick  # ~200k events, well under a minute
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "work" / "features"
EVENTS_PER_CUSTOMER = 61  # measured on the default synthetic shop (180 days): 213,936 events / 3,500

_BUILD = """
import json, resource, sys, time
from features.build import build_features
from features.config import FeatureConfig
from features.workspace import Workspace
t = time.perf_counter()
summary = build_features(Workspace.at(sys.argv[1]), FeatureConfig())
seconds = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "peak_rss_mb": ru.ru_maxrss / 1024, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "timings": summary["features"]["timings"], "events": summary["events"],
                  "users": summary["features"]["users"], "items": summary["features"]["items"],
                  "nnz": summary["features"]["nnz"]}))
"""

# The plain way a data scientist would build the same matrix: pandas + numpy + scipy, default weights.
_BASELINE = """
import json, resource, sys, time
from pathlib import Path
import numpy as np, pandas as pd, scipy.sparse as sp
root = Path(sys.argv[1])
t = time.perf_counter()
ev = pd.read_parquet(root / "validated" / "events.parquet", columns=["user_id", "item_id", "event_type", "timestamp"])
users, u = np.unique(ev["user_id"].to_numpy(dtype=object), return_inverse=True)
items, i = np.unique(ev["item_id"].to_numpy(dtype=object), return_inverse=True)
w = ev["event_type"].map({"view": 1.0, "add_to_cart": 3.0, "remove_from_cart": 0.0, "purchase": 5.0}).fillna(0.0).to_numpy()
ts = ev["timestamp"].astype("int64").to_numpy() // 1_000_000
age_days = (ts.max() - ts) / 86400.0
value = w * 0.5 ** (age_days / 90.0)
m = sp.coo_matrix((value, (u, i)), shape=(len(users), len(items))).tocsr()
m.sum_duplicates(); m.eliminate_zeros()
seconds = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
rss, cpu = ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime
# Same matrix as shoprec's? (shoprec's items also hold catalogue-only items: align by id.)
f = root / "features"
ours = pd.read_parquet(f / "interactions.parquet")
our_users = pd.read_parquet(f / "users.parquet")["user_id"].to_numpy(dtype=object)
our_items = pd.read_parquet(f / "items.parquet")["item_id"].to_numpy(dtype=object)
ru = np.searchsorted(users, our_users[ours.user_idx.to_numpy()])
ri = np.searchsorted(items, our_items[ours.item_idx.to_numpy()])
theirs = sp.csr_matrix((ours.value.to_numpy(np.float64), (ru, ri)), shape=m.shape)
diff = abs(theirs - m).max() if m.nnz else 0.0
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_rss_mb": rss, "nnz": int(m.nnz), "same_nnz": int(m.nnz) == len(ours),
                  "max_abs_diff": float(diff)}))
"""


def _run(script: str, workspace: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", script, str(workspace)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _shop(n_events: int) -> Path:
    """The synthetic shop with about n_events events, generated once and cached."""
    from features.synthetic import generate

    customers = max(100, round(n_events / EVENTS_PER_CUSTOMER))
    items = min(100_000, max(500, customers // 8))
    out = WORK / f"shop_{customers}c_{items}i"
    if not (out / "events.parquet").exists():
        t = time.perf_counter()
        generate(out, customers=customers, items=items, days=180, seed=42)
        print(f"generated {out.name} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return out


def measure(n_events: int) -> dict[str, Any]:
    """Build + baseline on a shop of about n_events events; returns the figures for that size."""
    shop = _shop(n_events)
    build = _run(_BUILD, shop)
    base = _run(_BASELINE, shop)
    t = build["timings"]
    matrix_s = t["load_events"] + t["id_maps"] + t["interactions"]
    n = build["events"]["accepted"]
    return {
        "events": build["events"]["input_rows"],
        "accepted": n,
        "users": build["users"],
        "items": build["items"],
        "nnz": build["nnz"],
        "build_s": round(build["seconds"], 2),
        "validate_s": t["validate"],
        "features_s": round(build["seconds"] - t["validate"], 2),
        "events_per_s": round(n / build["seconds"]),
        # CPU seconds of the whole build process (imports included): robust to other load on the machine
        "build_cpu_s": round(build["cpu_s"], 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(build["peak_rss_mb"]),
        "steps_s": t,
        "baseline_matrix_s": round(base["seconds"], 2),
        "baseline_peak_rss_mb": round(base["peak_rss_mb"]),
        "baseline_cpu_s": round(base["cpu_s"], 1),
        "shoprec_matrix_s": round(matrix_s, 2),
        "matrix_speedup_vs_baseline": round(base["seconds"] / matrix_s, 2),
        "baseline_over_full_build": round(base["seconds"] / build["seconds"], 3),
        "same_matrix": base["same_nnz"] and base["max_abs_diff"] < 1e-3,
        "max_abs_diff": base["max_abs_diff"],
        "meets_60s": build["seconds"] <= 60,
        "meets_4gb": build["peak_rss_mb"] <= 4096,
    }


def main(quick: bool = False) -> dict:
    sizes = [200_000] if quick else [1_000_000, 10_000_000]
    result: dict[str, Any] = {"quick": quick, "sizes": {}}
    for n in sizes:
        print(f"features build, ~{n:,} events ...", file=sys.stderr, flush=True)
        result["sizes"][f"{n // 1000}k"] = measure(n)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main(quick="--quick" in sys.argv), indent=2))
