"""Run every benchmark (or the ones named) and write one JSON file per benchmark under
benchmarks/results/, plus benchmarks/results/summary.json.

    python -m benchmarks.run                 # everything (long: tens of minutes on 2 cores)
    python -m benchmarks.run --quick         # a smoke run of each benchmark, well under a minute each
    python -m benchmarks.run features sasrec # only these

Each benchmark module `benchmarks/bench_<name>.py` exposes `main(quick: bool = False) -> dict`.
A benchmark that fails is reported as such and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
NAMES = (
    "validate", "features", "changelog", "training", "sasrec", "serving", "feed", "segments", "context", "ab",
    "rebuy", "nbr", "replicas",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small smoke runs")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {}
    failed = False
    for name in args.names or NAMES:
        print(f"== benchmark {name}{' (quick)' if args.quick else ''}", flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            result = module.main(quick=args.quick)
            summary[name] = {"ok": True, "seconds": round(time.perf_counter() - start, 1), "result": result}
        except Exception as e:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            summary[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            failed = True
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v.get("ok") for k, v in summary.items()}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
