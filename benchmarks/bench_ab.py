"""Benchmark: does `shoprec ab report` recover a planted uplift, and stay quiet when there is none?

Shop: the synthetic shop (SHOP below), features built, ALS and popular trained and tracked in the
workspace's MLflow store, the better promoted champion. Customers: every customer of the shop,
split champion 50% / control 50% by the service's hash with a new salt per run (a new
randomisation each time). Behaviour (serving.ab_sim.Plan): two visits per customer; a block leads
to a purchase of a shown item with probability 0.10, and 0.13 in the champion variant (planted
+30% per block; the planted uplift of customer conversion, 1 - (1 - p)^2, is +27.95%); half the
purchases quote the block's recommendation id, half come without it (found by the 24-hour
window); 5% of visits also buy an item no block showed them (never attributed); clicks 25% in
every variant. The A/A runs plant no uplift.

- 50 seeded runs with the planted uplift: how often the report's 95% interval of the conversion
  uplift holds the planted value (target >= 90%), how often it is significant (power), the mean
  estimate;
- 50 seeded A/A runs: how often the report flags an effect at p < 0.05 (target <= 10%);
- sample-ratio flags in all of them (a fair split: expected ~0.1% at the 0.001 threshold);
- 5 seeded runs of the planted plan through a real `shoprec serve` process over HTTP (`bentoml
  serve` of serving.service:ShopRec with its own salt each, one `/recommend` per visit and
  `POST /events`), the report read from the served workspace: the live service end to end.

The 100 seeded runs drive the service's engine, router and impression log in this process
(serving.ab_sim.EngineShop, events into the change log as `POST /events` writes them): over HTTP
each run would cost a server start and ~20 s of requests on the shared 2-core machine.

Run: `.venv/bin/python -m benchmarks.bench_ab [--quick]` -> benchmarks/results/ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results" / "ab.json"
SHOP = {"customers": 3000, "items": 400, "days": 60, "seed": 11}
QUICK_SHOP = {"customers": 800, "items": 200, "days": 45, "seed": 11}
SHARES = {"champion": 0.5, "control": 0.5}
API_KEY = "bench-ab"
N_HTTP = 5  # planted runs through a real server (each its own server start and salt)


def make_shop(root: Path, shop: dict[str, int], models: tuple[str, ...] = ("popular", "als")) -> Any:
    """The synthetic shop with features, `models` trained and the best promoted (its own MLflow)."""
    from training.demo import demo_workspace

    return demo_workspace(root, models=models, promote=True, **shop)


def seeded_runs(ws: Any, work: Path, plan: Any, seeds: range, label: str) -> list[dict[str, Any]]:
    from serving.ab_sim import run_in_process
    from serving.feed import Feed

    catalog = pd.read_parquet(ws.validated("catalog"), columns=["item_id", "price"])
    users = pd.read_parquet(ws.raw("customers"), columns=["user_id"])["user_id"].astype(str).tolist()
    feed = Feed(ws, env={"SHOPREC_AB_SHARES": "champion=1"})
    out = []
    try:
        for seed in seeds:
            start = time.perf_counter()
            p = type(plan)(**{**plan.__dict__, "seed": seed})
            got = run_in_process(
                feed, work / f"{label}-{seed}", p, shares=SHARES, salt=f"bench-{label}-{seed}",
                users=users, catalog=catalog,
            )  # fmt: skip
            got["seconds"] = round(time.perf_counter() - start, 2)
            out.append(got)
            shutil.rmtree(work / f"{label}-{seed}", ignore_errors=True)
            print(
                f"{label} seed {seed}: {json.dumps({k: v for k, v in got.items() if k != 'users'})}",
                flush=True,
            )
    finally:
        feed.close()
    return out


def http_run(ws: Any, plan: Any, salt: str) -> dict[str, Any]:
    """The planted plan once through a real `bentoml serve` on the workspace (a fresh impression log
    and change log: the previous run's are moved aside)."""
    from serving.ab_report import ReportConfig, ab_report
    from serving.ab_sim import HttpShop, outcome, simulate
    from serving.devserver import bentoml_serve, serve_process

    for old in (ws.serving_dir / "impressions.jsonl", ws.changes_dir / "events.jsonl"):
        if old.exists():
            old.rename(old.with_name(f"{old.name}.{uuid.uuid4().hex[:8]}"))
    catalog = pd.read_parquet(ws.validated("catalog"), columns=["item_id", "price"])
    users = pd.read_parquet(ws.raw("customers"), columns=["user_id"])["user_id"].astype(str).tolist()
    env = {
        "SHOPREC_DATA": str(ws.root), "SHOPREC_API_KEY": API_KEY, "SHOPREC_POLL_SECONDS": "0",
        "SHOPREC_AB_SHARES": ",".join(f"{k}={v}" for k, v in SHARES.items()), "SHOPREC_AB_SALT": salt,
    }  # fmt: skip
    start = time.perf_counter()
    with serve_process(bentoml_serve("serving.service:ShopRec"), env=env, timeout_s=180) as running:
        ready = time.perf_counter() - start
        shop = HttpShop(running.url, API_KEY, per_request=True)  # the web shop: one /recommend per visit
        try:
            counts = simulate(shop, users, plan, catalog)
        finally:
            shop.close()
        served = time.perf_counter() - start - ready
    report = ab_report(ws, ReportConfig(shares=SHARES, salt=salt))
    got = outcome(report, plan)
    got.update(counts=counts, server_start_s=round(ready, 1), simulation_s=round(served, 1))
    print(f"http seed {plan.seed}: {json.dumps({k: v for k, v in got.items() if k != 'users'})}", flush=True)
    return got


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    est = np.array([r["estimate"] for r in runs], float)
    return {
        "runs": len(runs),
        "planted_uplift": runs[0]["planted"],
        "coverage": float(np.mean([r["covered"] for r in runs])),
        "flagged_rate": float(np.mean([r["flagged"] for r in runs])),
        "srm_flags": int(sum(r["srm_flagged"] for r in runs)),
        "estimate_mean": float(est.mean()),
        "estimate_sd": float(est.std(ddof=1)) if len(est) > 1 else None,
        "interval_width_mean": float(np.mean([r["high"] - r["low"] for r in runs])),
        "seconds_per_run": float(np.mean([r["seconds"] for r in runs])),
    }


def main(quick: bool = False) -> dict[str, Any]:
    from serving.ab_sim import Plan

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n = 5 if quick else 50
    shop = QUICK_SHOP if quick else SHOP
    work = Path(tempfile.mkdtemp(prefix="shoprec-bench-ab-"))
    saved_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        start = time.perf_counter()
        ws = make_shop(work / "shop", shop)
        built = time.perf_counter() - start
        planted = Plan(p_buy=0.10, uplift=0.30)
        aa = Plan(p_buy=0.10, uplift=0.0)
        runs = seeded_runs(ws, work / "runs", planted, range(n), "planted")
        aa_runs = seeded_runs(ws, work / "runs", aa, range(1000, 1000 + n), "aa")
        http = [
            http_run(ws, Plan(p_buy=0.10, uplift=0.30, seed=seed), f"bench-http-{seed}")
            for seed in range(2000, 2000 + (1 if quick else N_HTTP))
        ]
    finally:
        if saved_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "shop": shop,
        "shares": SHARES,
        "plan": {k: v for k, v in planted.__dict__.items() if k != "seed"},
        "shop_build_s": round(built, 1),
        "planted": summary(runs),
        "aa": summary(aa_runs),
        "http_runs": {
            "runs": len(http),
            "covered": int(sum(r["covered"] for r in http)),
            "flagged": int(sum(r["flagged"] for r in http)),
            "srm_flags": int(sum(r["srm_flagged"] for r in http)),
            "estimates": [round(r["estimate"], 4) for r in http],
            "server_start_s": [r["server_start_s"] for r in http],
            "simulation_s": [r["simulation_s"] for r in http],
        },
        "targets": {"coverage": ">= 0.90", "aa_flagged_rate": "<= 0.10"},
        "passed": summary(runs)["coverage"] >= 0.9 and summary(aa_runs)["flagged_rate"] <= 0.1,
        "engine": "the 100 seeded runs: the service's engine, router and impression log in process; "
        "http_runs: a real bentoml serve over HTTP, one /recommend per visit",
        "runs_detail": {"planted": runs, "aa": aa_runs, "http": http},
    }
    if not quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return {k: v for k, v in result.items() if k != "runs_detail"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 seeds per kind on a smaller shop, nothing written"
    )
    args = parser.parse_args()
    print(json.dumps(main(quick=args.quick), indent=2, default=str))
