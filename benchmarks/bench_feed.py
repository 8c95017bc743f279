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


def _violations(ws: Any, recs: Any) -> dict[str, int]:
    """Items out of stock, and repeat items of categories nobody re-buys, in an output (a frame with
    user_id and item_id; vectorised, so that it checks a million customers' feed too)."""
    import pandas as pd

    from features.consent import consent_given

    recs = recs[["user_id", "item_id"]].astype({"user_id": str, "item_id": str})
    stock = pd.read_parquet(ws.validated("stock"), columns=["item_id", "quantity"])
    sold_out = stock.groupby("item_id")["quantity"].sum().loc[lambda q: q == 0].index.astype(str)
    out_of_stock = int(recs["item_id"].isin(sold_out).sum())
    truth = ws.root / "truth" / "categories.parquet"
    never: set[str] = set()
    if truth.exists():
        cats = pd.read_parquet(truth)
        never = set(cats.loc[~cats["rebuyable"].astype(bool), "category"].astype(str))
    lp = pd.read_parquet(ws.feature("last_purchases"), columns=["user_idx", "item_idx", "category"])
    lp = lp[lp["category"].astype(str).str.strip("/").isin(never)]
    users = pd.read_parquet(ws.feature("users"), columns=["user_idx", "user_id"])
    items = pd.read_parquet(ws.feature("items"), columns=["item_idx", "item_id"])
    lp = lp.merge(users, on="user_idx").merge(items, on="item_idx")[["user_id", "item_id"]]
    lp = lp.astype(str).drop_duplicates()
    repeats = recs.merge(lp, on=["user_id", "item_id"])
    if ws.validated("customers").exists():
        c = pd.read_parquet(ws.validated("customers"), columns=["user_id", "consent_personalisation"])
        values = c["consent_personalisation"]
        given = values.map(lambda v: consent_given(v, has_customers_table=True)).astype(bool)
        consenting = set(c.loc[given.to_numpy(), "user_id"].astype(str))
        keep = repeats["user_id"].isin(consenting)
    else:
        keep = pd.Series(True, index=repeats.index)
    # Customers without consent get the one shared block, whatever they bought (by design: their
    # purchases are not used to tailor it); the rule is checked on the consenting ones.
    return {
        "out_of_stock_items": out_of_stock,
        "never_rebought_repeats": int(keep.sum()),
        "shared_block_repeats_without_consent": int((~keep).sum()),
    }


def compare(ws: Any, k: int = 10, repeats: int = 2, blas_threads: int = 1) -> dict[str, Any]:
    """The feed (every rule, through the engine) against the plain baseline over the same factors,
    for every customer the champion knows, in this process; best of `repeats` each."""
    import pandas as pd
    from threadpoolctl import threadpool_limits

    from serving.feed import Feed, feed_context

    result: dict[str, Any] = {"k": k, "blas_threads": blas_threads, "repeats": repeats}
    with threadpool_limits(blas_threads, "blas"):
        t0 = time.perf_counter()
        feed = Feed(ws, env={**os.environ, "SHOPREC_AB_SHARES": "champion=1"})
        result["feed_load_s"] = round(time.perf_counter() - t0, 2)
        engine = feed.holder.models.champion
        uf, itf = engine.model.factors()
        user_ids = engine.model.users.sort_values("user_idx")["user_id"].astype(str).tolist()
        cx = feed_context()
        times: dict[str, float] = {"baseline": float("inf"), "feed": float("inf")}
        for _ in range(repeats):
            t0 = time.perf_counter()
            base = baseline(uf, itf, k)
            times["baseline"] = min(times["baseline"], time.perf_counter() - t0)
            print(f"   baseline {times['baseline']:.1f} s", flush=True)
            t0 = time.perf_counter()
            kept, reasons, rows = [], pd.Series(dtype="int64"), 0
            for frame in feed.frames(user_ids, k, cx, progress=False):
                rows += len(frame)
                kept.append(frame[["user_id", "item_id"]])
                heads = frame["reason"].str.split(" ").str[:2].str.join(" ").value_counts()
                reasons = reasons.add(heads, fill_value=0)
            times["feed"] = min(times["feed"], time.perf_counter() - t0)
            print(f"   feed {times['feed']:.1f} s", flush=True)
        feed.close()
    feed_recs = pd.concat(kept, ignore_index=True)
    ids = engine.model.items.sort_values("item_idx")["item_id"].astype(str).to_numpy()
    base_recs = pd.DataFrame({"user_id": np.repeat(user_ids, k), "item_id": ids[base.ravel()]})
    result.update(
        {
            "feed_customers": len(user_ids),
            "catalogue_items": int(len(engine.state.current.catalog.item_ids)),
            "baseline_s": round(times["baseline"], 2),
            "feed_s": round(times["feed"], 2),
            "feed_vs_baseline": round(times["feed"] / times["baseline"], 2),
            "feed_rows": rows,
            "feed_reasons": {str(r): int(n) for r, n in reasons.sort_values(ascending=False).head(8).items()},
            "rules_in_feed": _violations(ws, feed_recs),
            "rules_in_baseline": _violations(ws, base_recs),
        }
    )
    return result


def main(quick: bool = False) -> dict:
    from features.workspace import Workspace

    customers, items, k = (5_000, 2_000, 10) if quick else (100_000, 20_000, 10)
    name = f"shop{customers // 1000}k-{items // 1000}k"
    start = time.perf_counter()
    ws = Workspace.at(build_shop(name, customers, items))
    print(f"== {name}: shop ready in {time.perf_counter() - start:.0f} s", flush=True)
    result: dict[str, Any] = {
        "quick": quick,
        "customers": customers,
        "items": items,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    result.update(compare(ws, k))
    result["target"] = "<= 1.5"
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feed.json").write_text(json.dumps(result, indent=2))
    if quick:
        shutil.rmtree(ws.serving_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    if "--workspace" in sys.argv:  # one shop's feed against its baseline (benchmarks/bench_scale.py)
        from features.workspace import Workspace

        args = sys.argv[sys.argv.index("--workspace") + 1 :]
        threads = int(os.environ.get("BENCH_BLAS_THREADS", "1"))
        print(json.dumps(compare(Workspace.at(Path(args[0])), repeats=1, blas_threads=threads)))
    else:
        print(json.dumps(main(quick="--quick" in sys.argv), indent=2))
