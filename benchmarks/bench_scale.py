"""Benchmark: how far one machine goes. `make bench-scale` (not part of `make test` or `make bench`).

Stages, each a real `shoprec` command in its own process, timed from outside with the peak RSS of its
whole process tree (the Spark JVM included) sampled every 0.2 s:

1. `data generate` of the synthetic shop at about 10M, 30M, 60M and 100M events (100k items; the
   60M shop is the 1M-customer shop), streamed to Parquet chunk by chunk;
2. `features build --engine duckdb` at each size (the issue's target: 100M events in <= 10 min and
   <= 12 GB peak on the 2-core machine), and `--engine spark` (local[2]) on the same 10M shop in the
   same run;
3. the 1M-customer shop (60M events) end to end, right after its features are built:
   `train --model als` (fit on the loo split, evaluation, refit on all data, bundle, MLflow),
   `promote`, the e-mail feed for every customer through the engine with every rule against the
   plain numpy matmul + argpartition over the same factors in one process (benchmarks/bench_feed.py
   `--workspace`; target <= 2x), and `shoprec serve --data` loaded with it: seconds until it
   answers, its memory, /recommend under wrk (paced ~200 req/s and saturation) and a /stock update.
   Then `train --model next-basket` on the same shop (after the ALS stages, so the feed and the
   service stay ALS's): its neighbour pool and its learners are samples of at most 20,000 customers
   (docs/nbr.md); wall time, peak RSS and what a served score costs (`score_ms`, measured at training).

Shops are generated under --work (default /tmp/shoprec-scale) and deleted as soon as they are no
longer needed (disk is shared). Results: benchmarks/results/scale.json, written after every stage,
so a run stopped part-way keeps what it measured (`--quick`: scale_quick.json). A stage that fails or passes --stage-timeout is
recorded with its error, and the run goes on: what breaks first is part of the answer.

    python -m benchmarks.bench_scale                 # everything (an hour or more on 2 cores)
    python -m benchmarks.bench_scale --quick         # 200k/400k events, Spark and the end-to-end stages: minutes
    python -m benchmarks.bench_scale --sizes 10 30   # some sizes (millions of events)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "scale.json"
SHOPREC = str(Path(sys.executable).with_name("shoprec"))
# what each train stage records (n_users_heldout: the held-out customers when n_users is a sample)
HEADLINE = ("ndcg@10", "recall@20", "n_users", "n_users_heldout")
EVENTS_PER_CUSTOMER = 60.0  # the default synthetic shop over 180 days (60M events at 1M customers)
ITEMS = 100_000
# Spark local[2]'s JVM heap for the scale run (the engine's default, 2g, is for tests; at 10M events
# the first run failed after 431 s).
SPARK_DRIVER_MEMORY = "8g"


def run_stage(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd`; seconds, CPU seconds and peak RSS (MB) of its process tree, exit status, the load
    average around it, and its last JSON line. CPU seconds (user + system of the stage and every
    process it started) say what the work costs whatever else loads the machine."""
    load_before = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    peak = 0
    cpu_seen: dict[int, float] = {}  # pid -> last CPU seconds seen (a JVM that is never reaped
    done = threading.Event()  # by its parent does not show in RUSAGE_CHILDREN)

    def sample() -> None:
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [p, *p.children(recursive=True)]
                rss = 0
                for c in tree:
                    try:
                        rss += c.memory_info().rss
                        t = c.cpu_times()
                        cpu_seen[c.pid] = t.user + t.system
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
        status: Any = proc.returncode
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        out, err = proc.communicate()
        status = "timeout"
    done.set()
    sampler.join()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = max((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), sum(cpu_seen.values()))
    result: dict[str, Any] = {
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_s": round(cpu, 1),
        "peak_rss_mb": round(peak / 2**20),
        "status": status,
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    last = next((line for line in reversed(out.splitlines()) if line.startswith("{")), None)
    if last:
        result["output"] = json.loads(last)
    if status != 0:
        # the first lines that name an error (a JVM's stack trace buries its cause), then the end
        named = [line for line in err.splitlines() if "Error" in line or "Exception" in line]
        result["error"] = "\n".join(named[:8]) + "\n...\n" + err[-1500:]
    return result


def _shop(
    work: Path, n_events: float, customers: int | None = None, days: int = 180
) -> tuple[Path, dict[str, Any]]:
    customers = customers or max(1000, round(n_events / EVENTS_PER_CUSTOMER * 180 / days))
    items = min(ITEMS, max(500, customers // 4))
    path = work / f"shop_{customers}c_{days}d"
    done = path / "generated.json"
    if done.exists():  # the generator is deterministic for a seed: a shop left by a stopped run is reused
        return path, {**json.loads(done.read_text()), "reused": True}
    shutil.rmtree(path, ignore_errors=True)
    gen = run_stage(
        [
            SHOPREC,
            "data",
            "generate",
            "--out",
            str(path),
            "--customers",
            str(customers),
            "--items",
            str(items),
        ],
        timeout=3600,
    )
    gen.update(customers=customers, items=items)
    if gen["status"] == 0:
        done.write_text(json.dumps(gen))
    return path, gen


def _build(path: Path, engine: str, timeout: float) -> dict[str, Any]:
    shutil.rmtree(path / "features", ignore_errors=True)
    cmd = [SHOPREC, "features", "build", "--data", str(path), "--engine", engine]
    if engine == "spark":  # local mode runs every task in the driver's JVM: give it the room a user would
        cmd += ["--spark-conf", f"spark.driver.memory={SPARK_DRIVER_MEMORY}"]
    r = run_stage(cmd, timeout=timeout)
    summary = r.pop("output", None)
    if summary:
        f = summary["features"]
        r.update(
            events=summary["events"]["input_rows"],
            users=f["users"],
            items=f["items"],
            nnz=f["nnz"],
            timings=f["timings"],
        )
        r["events_per_s"] = round(r["events"] / r["seconds"])
    return r


def _save(results: dict[str, Any]) -> None:
    # A quick run never overwrites the figures of a full one.
    path = Path(results["out"]) if results.get("out") else RESULTS
    path = path.with_name("scale_quick.json") if results["quick"] else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


def _tree_rss_mb(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        return round(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20)
    except psutil.Error:
        return 0


def _serve(path: Path, env: dict[str, str], seconds: float = 20.0) -> dict[str, Any]:
    """`shoprec serve --data` on the trained shop as a user starts it: seconds until it answers,
    memory, and /recommend under wrk (paced ~200 req/s and saturation) with real customer ids; then
    a stock update seen in the answers."""
    import pandas as pd

    from benchmarks.bench_serving import BENCH_KEY, WRK_LUA, live_update, load_test
    from serving.devserver import serve_process

    load = path / "load"
    load.mkdir(exist_ok=True)
    users = pd.read_parquet(path / "features" / "profiles.parquet", columns=["user_id"])["user_id"]
    rng = np.random.default_rng(0)
    picks = users.iloc[rng.choice(len(users), size=2000)].astype(str)
    bodies = [json.dumps({"user_id": u, "k": 10, "context": {"channel": "web"}}) for u in picks]
    (load / "recommend.jsonl").write_text("\n".join(bodies) + "\n")
    (load / "load.lua").write_text(WRK_LUA)
    out: dict[str, Any] = {}
    cmd = [SHOPREC, "serve", "--data", str(path), "--poll-seconds", "0", "--no-access-log"]
    start = time.perf_counter()
    with serve_process(
        lambda port: [*cmd, "--port", str(port)],
        env={**env, "SHOPREC_API_KEY": BENCH_KEY},
        log_path=path / "serve.log",
        timeout_s=1800,
    ) as (url, pid):
        out["ready_s"] = round(time.perf_counter() - start, 1)
        out["rss_ready_mb"] = _tree_rss_mb(pid)
        print(f"   serving after {out['ready_s']} s, {out['rss_ready_mb']} MB", flush=True)
        out["/recommend"] = load_test(
            url, "/recommend", load / "recommend.jsonl", load / "load.lua", seconds, pid
        )
        items = pd.read_parquet(path / "features" / "items.parquet", columns=["item_id"])["item_id"]
        out["/stock update"] = live_update(url, items.astype(str).tolist())
        out["rss_after_load_mb"] = _tree_rss_mb(pid)
    return out


def end_to_end(path: Path, out: dict[str, Any], stage_timeout: float, save: Any) -> None:
    """ALS trained on the shop (fit on the loo split, evaluated, refit on all data, bundled, logged
    to MLflow), promoted, the e-mail feed for every customer against the plain baseline, and the
    service loaded with it. Each stage recorded as it ends; a failed stage stops the ones after it."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}"}
    als = run_stage(
        [SHOPREC, "train", "--data", str(path), "--model", "als"], timeout=stage_timeout * 2, env=env
    )
    metrics = (als.pop("output", None) or {}).get("metrics", {})
    als["metrics"] = {k: metrics[k] for k in HEADLINE if k in metrics}
    out["als"] = als
    save()
    if als["status"] != 0:
        return
    out["promote"] = run_stage([SHOPREC, "promote", "--data", str(path)], timeout=600, env=env)
    save()
    if out["promote"]["status"] != 0:
        return
    # the feed and its baseline in one process (the ratio), with the machine's 2 BLAS threads each
    feed = run_stage(
        [sys.executable, "-m", "benchmarks.bench_feed", "--workspace", str(path)],
        timeout=stage_timeout * 2,
        env={**env, "BENCH_BLAS_THREADS": str(os.cpu_count() or 1)},
    )
    feed.update(feed.pop("output", None) or {})
    feed["target"] = "feed_vs_baseline <= 2"
    out["feed"] = feed
    save()
    try:
        out["serve"] = _serve(path, env)
    except Exception as e:  # noqa: BLE001 - what breaks is part of the answer
        out["serve"] = {"error": f"{type(e).__name__}: {e}"}
    save()
    out["next_basket"] = next_basket_stage(path, env, stage_timeout)
    save()


def next_basket_stage(path: Path, env: dict[str, str], stage_timeout: float) -> dict[str, Any]:
    """`train --model next-basket` on the shop: the stage's wall time and peak RSS, its metrics, and
    the served score's median and p99 that `train` measured and logged to MLflow (`score_ms`)."""
    r = run_stage(
        [SHOPREC, "train", "--data", str(path), "--model", "next-basket"], timeout=stage_timeout * 2, env=env
    )
    output = r.pop("output", None) or {}
    metrics = output.get("metrics", {})
    r["metrics"] = {k: metrics[k] for k in HEADLINE if k in metrics}
    if output.get("run_id"):
        from mlflow import MlflowClient

        logged = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_run(output["run_id"]).data.metrics
        r.update({k: round(logged[k], 2) for k in ("score_ms", "score_ms_p99") if k in logged})
    return r


def spark_vs_duckdb(path: Path, millions: float, stage_timeout: float, results: dict[str, Any]) -> None:
    entry = {"target_events_m": millions, "duckdb": _build(path, "duckdb", stage_timeout)}
    entry["spark_local2"] = _build(path, "spark", stage_timeout)
    entry["load_average"] = os.getloadavg()
    d, sp = entry["duckdb"], entry["spark_local2"]
    if d["status"] == 0 and sp["status"] == 0:
        entry["spark_over_duckdb_seconds"] = round(sp["seconds"] / d["seconds"], 2)
    results["spark_vs_duckdb"] = entry


def markdown(results: dict[str, Any]) -> str:
    """The run as the tables of docs/scale.md (`python -m benchmarks.bench_scale --markdown`)."""

    def gb(mb: Any) -> str:
        return f"{mb / 1024:.1f}" if isinstance(mb, (int, float)) else "-"

    def row(stage: str, r: dict[str, Any], events: Any = "") -> str:
        status = "ok" if r.get("status") == 0 else f"**failed** ({r.get('status')})"
        ev = f"{events:,}" if isinstance(events, int) else events
        return f"| {stage} | {ev} | {status} | {r.get('seconds', '-')} | {r.get('cpu_s', '-')} | {gb(r.get('peak_rss_mb'))} |"

    lines = [
        "| stage | events | status | wall s | CPU s | peak RSS (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for f in sorted(results.get("features", []), key=lambda f: f["target_events_m"]):
        g = f["generate"]
        n = (g.get("output") or {}).get("events", "")
        who = f"{g.get('customers', 0):,} customers, {g.get('items', 0):,} items"
        lines.append(row(f"`data generate` ({who})", g, n))
        if "duckdb" in f:
            lines.append(row("`features build --engine duckdb`", f["duckdb"], f["duckdb"].get("events", n)))
    sv = results.get("spark_vs_duckdb")
    if sv:
        for key, name in (("duckdb", "duckdb (beside Spark)"), ("spark_local2", "spark, local[2]")):
            if key in sv:
                lines.append(row(f"`features build --engine {name}`", sv[key], sv[key].get("events", "")))
    e2e = results.get("end_to_end")
    if e2e:
        for key, name in (
            ("als", "`train --model als`"),
            ("promote", "`promote`"),
            ("feed", "e-mail feed + baseline"),
            ("next_basket", "`train --model next-basket`"),
        ):
            if key in e2e:
                lines.append(row(f"{name} ({e2e['customers']:,} customers)", e2e[key]))
    return "\n".join(lines)


def main(
    quick: bool = False,
    sizes: list[float] | None = None,
    work: Path = Path("/tmp/shoprec-scale"),
    spark_at: float | None = None,
    als_at: float | None = None,
    stage_timeout: float = 1800,
    customers: int | None = None,
    days: int = 180,
    out: Path | None = None,
) -> dict[str, Any]:
    sizes = sizes or ([0.2, 0.4] if quick else [10, 30, 60, 100])
    spark_at = spark_at if spark_at is not None else min(sizes)
    als_at = als_at if als_at is not None else (sizes[-1] if quick else 60)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "benchmark": "scale",
        "quick": quick,
        "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "load_average_start": os.getloadavg(),
        "note": "wall seconds and peak RSS of each stage's process tree; the machine was shared",
        "features": [],
        "days": days,
        "out": str(out) if out else None,
    }
    for millions in sizes:
        path, gen = _shop(work, millions * 1e6, customers, days)
        entry: dict[str, Any] = {"target_events_m": millions, "generate": gen}
        results["features"].append(entry)
        if gen["status"] == 0:
            entry["duckdb"] = _build(path, "duckdb", stage_timeout)
            entry["load_average"] = os.getloadavg()
        _save(results)
        if millions == spark_at and gen["status"] == 0:
            # Spark beside DuckDB on the same shop, back to back, so both see the same machine load
            spark_vs_duckdb(path, spark_at, stage_timeout, results)
            _save(results)
            shutil.rmtree(path, ignore_errors=True)
        elif millions == als_at and entry.get("duckdb", {}).get("status") == 0:
            # the million-customer shop end to end, at once (its features are fresh)
            results["end_to_end"] = {"target_events_m": millions, "customers": gen["customers"]}
            end_to_end(path, results["end_to_end"], stage_timeout, lambda: _save(results))
            shutil.rmtree(path, ignore_errors=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()
    _save(results)
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=float, nargs="*", help="shop sizes in millions of events")
    ap.add_argument("--work", type=Path, default=Path("/tmp/shoprec-scale"))
    ap.add_argument("--spark-at", type=float, help="size (M events) that Spark local[2] also builds")
    ap.add_argument("--als-at", type=float, help="size (M events) that ALS trains on")
    ap.add_argument("--stage-timeout", type=float, default=1800)
    ap.add_argument("--customers", type=int, help="customers of every shop (default: events / 60)")
    ap.add_argument("--days", type=int, default=180, help="days of history of every shop")
    ap.add_argument("--out", type=Path, help="results file (default benchmarks/results/scale.json)")
    ap.add_argument("--markdown", type=Path, help="print the tables of a results file and stop")
    a = ap.parse_args()
    if a.markdown:
        print(markdown(json.loads(a.markdown.read_text())))
        sys.exit(0)
    r = main(a.quick, a.sizes, a.work, a.spark_at, a.als_at, a.stage_timeout, a.customers, a.days, a.out)
    print(json.dumps(r, indent=2))
