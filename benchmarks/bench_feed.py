"""E-mail feed benchmark: `shoprec recommend` for every customer of a shop, through the serving
engine with every rule, against the plain numpy baseline over the same factors, in one process.

    python -m benchmarks.run feed [--quick]

The shop: the synthetic shop with 100k customers and 20k items (quick: 5k x 2k), features built,
ALS (64 factors) trained, the bundle cached under benchmarks/work/feed/. Then, in this process:

- `baseline`: user_factors @ item_factorsᵀ in chunks of 2048 customers, `np.argpartition` for the
  top k and a sort of those k: no rule at all (what a notebook would do);
- `feed`: `serving.feed.Feed.run` for the same customers: the A/B router, the engine's
  `recommend_batch` (stock per size, gender, the learned re-buy policy, consent, diversity, reasons,
  new items), the impression log, and the output frame.

The figure is the ratio feed / baseline of wall seconds (target: <= 1.5). Both are timed best of
two, with one BLAS thread each (the service's setting), and the machine's load average is recorded.
Also recorded: the rules' effect (items out of stock and repeat purchases of never-re-bought
categories in each output, which must be 0 for the feed). Results: benchmarks/results/feed.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work" / "feed"
RESULTS = ROOT / "benchmarks" / "results"


def build_shop(name: str, customers: int, items: int) -> Path:
    """Synthetic shop -> features -> ALS trained, registered and promoted (cached); the workspace."""
    ws_dir = WORK / name
    shoprec = str(Path(sys.executable).with_name("shoprec"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")

    def run(*args: str) -> None:
        subprocess.run([shoprec, *args], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)

    if not (ws_dir / "events.parquet").exists():
        run("data", "generate", "--out", str(ws_dir), "--customers", str(customers), "--items", str(items))
    if not (ws_dir / "features" / "profiles.parquet").exists():
        run("features", "build", "--data", str(ws_dir))
    if not (ws_dir / "mlflow.db").exists():
        run("train", "--data", str(ws_dir), "--model", "als", "--set", "factors=64")
        run("promote", "--data", str(ws_dir))
    return ws_dir


def baseline(uf: np.ndarray, itf: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Top-k item indices per user by the plain product and argpartition; no rules."""
    out = np.empty((len(uf), k), dtype=np.int64)
    for start in range(0, len(uf), chunk):
        s = uf[start : start + chunk] @ itf.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def _violations(ws: Any, frame_items: dict[str, list[str]]) -> dict[str, int]:
    """Items out of stock, and repeat items of categories nobody re-buys, in an output."""
    import pandas as pd

    stock = pd.read_parquet(ws.validated("stock"))
    sold_out = set(stock.groupby("item_id")["quantity"].sum().loc[lambda q: q == 0].index.astype(str))
    truth = ws.root / "truth" / "categories.parquet"
    never = set()
    if truth.exists():
        cats = pd.read_parquet(truth)
        never = set(cats.loc[~cats["rebuyable"].astype(bool), "category"].astype(str))
    lp = pd.read_parquet(ws.feature("last_purchases"))
    users = pd.read_parquet(ws.feature("users"))
    items = pd.read_parquet(ws.feature("items"))
    lp = lp.merge(users, on="user_idx").merge(items[["item_idx", "item_id"]], on="item_idx")
    lp = lp[lp["category"].astype(str).str.strip("/").isin(never)]
    bought = lp.groupby("user_id")["item_id"].apply(set).to_dict()
    from features.consent import consent_given

    has_table = ws.validated("customers").exists()
    consent: dict[str, bool] = {}
    if has_table:
        c = pd.read_parquet(ws.validated("customers"), columns=["user_id", "consent_personalisation"])
        consent = {
            str(u): consent_given(v, has_customers_table=True)
            for u, v in zip(c["user_id"], c["consent_personalisation"], strict=True)
        }
    consent_of = (lambda u: consent.get(u, False)) if has_table else (lambda u: True)
    out_of_stock = sum(i in sold_out for items_ in frame_items.values() for i in items_)

    def rebought(keep: bool) -> int:
        return sum(
            len(bought.get(u, set()) & set(items_))
            for u, items_ in frame_items.items()
            if consent_of(u) == keep
        )

    # Customers without consent get the one shared block, whatever they bought (by design: their
    # purchases are not used to tailor it); the rule is checked on the consenting ones.
    return {
        "out_of_stock_items": int(out_of_stock),
        "never_rebought_repeats": int(rebought(True)),
        "shared_block_repeats_without_consent": int(rebought(False)),
    }


def main(quick: bool = False) -> dict:
    from threadpoolctl import threadpool_limits

    from features.workspace import Workspace
    from serving.feed import Feed, feed_context

    customers, items, k = (5_000, 2_000, 10) if quick else (100_000, 20_000, 10)
    name = f"shop{customers // 1000}k-{items // 1000}k"
    start = time.perf_counter()
    ws = Workspace.at(build_shop(name, customers, items))
    print(f"== {name}: shop ready in {time.perf_counter() - start:.0f} s", flush=True)
    result: dict[str, Any] = {
        "quick": quick,
        "customers": customers,
        "items": items,
        "k": k,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with threadpool_limits(1, "blas"):
        t0 = time.perf_counter()
        feed = Feed(ws, env={**os.environ, "SHOPREC_AB_SHARES": "champion=1"})
        result["feed_load_s"] = round(time.perf_counter() - t0, 2)
        engine = feed.holder.models.champion
        uf, itf = engine.model.factors()
        user_ids = engine.model.users.sort_values("user_idx")["user_id"].astype(str).tolist()
        cx = feed_context()
        times: dict[str, float] = {"baseline": float("inf"), "feed": float("inf")}
        for _ in range(2):
            t0 = time.perf_counter()
            base = baseline(uf, itf, k)
            times["baseline"] = min(times["baseline"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            frame = feed.run(user_ids, k, cx, progress=False)
            times["feed"] = min(times["feed"], time.perf_counter() - t0)
        feed.close()
    ids = engine.state.current.catalog.item_ids
    # the baseline's indices are the model's; identical to the state's on a fresh build
    base_items = {
        u: [str(x) for x in engine.model.items.sort_values("item_idx")["item_id"].to_numpy()[row]]
        for u, row in zip(user_ids, base, strict=True)
    }
    feed_items = frame.groupby("user_id", sort=False)["item_id"].apply(list).to_dict()
    result.update(
        {
            "baseline_s": round(times["baseline"], 2),
            "feed_s": round(times["feed"], 2),
            "feed_vs_baseline": round(times["feed"] / times["baseline"], 2),
            "target": "<= 1.5",
            "feed_rows": len(frame),
            "feed_reasons": frame["reason"]
            .str.split(" ")
            .str[:2]
            .str.join(" ")
            .value_counts()
            .head(8)
            .to_dict(),
            "rules_in_feed": _violations(ws, feed_items),
            "rules_in_baseline": _violations(ws, base_items),
            "catalogue_items": int(len(ids)),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        }
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feed.json").write_text(json.dumps(result, indent=2))
    if quick:
        shutil.rmtree(ws.serving_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    print(json.dumps(main(quick="--quick" in sys.argv), indent=2))
