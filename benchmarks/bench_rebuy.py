"""Re-buy policy benchmark (training/policy.py): how the window and the floor were chosen, and the
planted truth of the synthetic shop on the e-mail feed.

    python -m benchmarks.run rebuy [--quick]

1. Instacart sample, `loo` split (each customer's last order held out), repeat-blend (cf_weight
   0.05, recency half-life 50) fitted once: Recall@20 (validation / test) with the learned policy
   at every window fraction (the category's window, and per-customer windows) and every floor.
   The chosen floor is the largest of the grid whose validation recall equals that without a floor;
   the chosen fraction the best on validation (ties: the smallest).
2. The synthetic shop of bench_feed (100k customers x 20k items, ALS; quick: 5k x 2k), through
   `serving.feed.Feed` (the engine of `shoprec recommend` and /recommend_batch) with every rule:
   - the policy learned against the truth (re-buyable = consumables, durable = durables, the
     learned cycles against the planted ones);
   - `never_rebought_repeats`: items a customer bought in a leaf the truth says nobody re-buys, in
     the feed of every customer (must be 0), and the same count with the rule off (`never`) for a
     sample, which shows the check finds them;
   - just bought: for consenting owners, a consumable of their block bought now through the online
     store (what POST /events does); how many come back in their next feed block (must be 0);
   - durables: for consenting customers without a laptop, a laptop bought now; other laptops in
     their next block, also with the laptops page as context (both must be 0), and blocks holding
     one of the laptop's planted accessories.
Results: benchmarks/results/rebuy.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
FLOORS_H = (0.0, 1.0, 2.0, 3.0, 6.0, 12.0, 24.0, 48.0, 168.0)
LAPTOPS = "electronics/computers/laptops"


def instacart(quick: bool) -> dict[str, Any]:
    """Recall@20 per window fraction and floor on the Instacart sample (module docstring, 1)."""
    from benchmarks.bench_training import WORK
    from features.build import FeatureConfig, build_features
    from features.datasets import fetch
    from features.workspace import Workspace
    from training.data import load_split
    from training.evaluate import evaluate
    from training.models import get_model_class
    from training.policy import RebuyPolicy

    ws = Workspace.at(WORK / "instacart-sample")
    if ws.raw("events") is None:
        fetch("instacart-sample", ws.root)
    if not (ws.split_dir("loo") / "customer_rebuy.parquet").exists():  # built before customer windows
        build_features(ws, FeatureConfig())
    split = load_split(ws, "loo")
    klass = get_model_class("repeat-blend")
    config = {"cf_weight": 0.05, "recency_half_life": 50.0}
    model = klass(klass.Config.from_dict(config)).fit(split.train)
    tr = split.train

    def recall(fraction: float, floor: float, own: bool) -> dict[str, float]:
        p = RebuyPolicy.from_frame(
            tr.category_rebuy,
            window_fraction=fraction,
            floor_hours=floor,
            customer_rebuy=tr.customer_rebuy if own else None,
        )
        return {
            part: round(evaluate(model, split, on=part, policy=p)["recall@20"], 4)
            for part in ("valid", "test")
        }

    fractions = FRACTIONS[:3] if quick else FRACTIONS
    floors = FLOORS_H[:4] if quick else FLOORS_H
    by_fraction = {
        "per_customer_windows": {str(f): recall(f, 0.0, True) for f in fractions},
        "category_windows": {str(f): recall(f, 0.0, False) for f in fractions},
    }
    by_floor = {str(h): recall(0.0, h, True) for h in floors}
    never = {
        part: round(evaluate(model, split, on=part, exclude_seen="never")["recall@20"], 4)
        for part in ("valid", "test")
    }
    best_fraction = max(fractions, key=lambda f: (by_fraction["per_customer_windows"][str(f)]["valid"], -f))
    no_floor = by_floor[str(0.0)]["valid"]
    chosen_floor = max(h for h in floors if by_floor[str(h)]["valid"] >= no_floor)
    default = RebuyPolicy()
    return {
        "model": "repeat-blend",
        "config": config,
        "metric": "recall@20 (valid / test), loo split",
        "exclude_seen_never": never,
        "by_fraction_floor_0": by_fraction,
        "by_floor_hours_fraction_0": by_floor,
        "chosen": {"window_fraction": best_fraction, "floor_hours": chosen_floor},
        "defaults": {"window_fraction": default.window_fraction, "floor_hours": default.floor_hours},
        "defaults_match_choice": bool(
            default.window_fraction == best_fraction and default.floor_hours == chosen_floor
        ),
    }


def _policy_vs_truth(ws: Any, policy: Any) -> dict[str, Any]:
    cats = pd.read_parquet(ws.root / "truth" / "categories.parquet")
    cycles = pd.read_parquet(ws.root / "truth" / "rebuy_cycles.parquet").set_index("category")["cycle_days"]
    want_rebuy = set(cats.loc[cats["rebuyable"].astype(bool), "category"])
    want_durable = set(cats.loc[cats["kind"] == "durable", "category"])
    own = policy.customer_windows
    return {
        "rebuyable_learned": sorted(policy.rebuyable_categories),
        "rebuyable_exact": policy.rebuyable_categories == want_rebuy,
        "durable_learned": dict(policy.durables),
        "durable_exact": policy.durable_categories == want_durable,
        "window_days_learned_vs_planted": {
            c: [round(d, 2), float(cycles[c])] for c, d in sorted(policy.rebuyable.items())
        },
        "customer_windows": 0 if own is None else len(own),
    }


def _repeats(blocks: dict[str, list[str]], bought: dict[str, set[str]]) -> int:
    return int(sum(len(bought.get(u, set()) & set(items)) for u, items in blocks.items()))


def _blocks(frame: pd.DataFrame) -> dict[str, list[str]]:
    return frame.groupby("user_id", sort=False)["item_id"].apply(list).to_dict()


def shop(quick: bool) -> dict[str, Any]:
    """The planted truth on the feed (module docstring, 2)."""
    from threadpoolctl import threadpool_limits

    from benchmarks.bench_feed import build_shop
    from features.workspace import Workspace
    from serving.feed import Feed, feed_context

    customers, items, k = (5_000, 2_000, 10) if quick else (100_000, 20_000, 10)
    ws = Workspace.at(build_shop(f"shop{customers // 1000}k-{items // 1000}k", customers, items))
    cats = pd.read_parquet(ws.root / "truth" / "categories.parquet")
    never = set(cats.loc[~cats["rebuyable"].astype(bool), "category"])
    consumable = set(cats.loc[cats["rebuyable"].astype(bool), "category"])
    catalog = pd.read_parquet(ws.root / "catalog.parquet").set_index("item_id")
    category = catalog["category"].astype(str).str.strip("/")
    ev = pd.read_parquet(ws.root / "events.parquet", columns=["user_id", "item_id", "event_type"])
    ev = ev[ev["event_type"] == "purchase"].drop(columns="event_type")
    ev["category"] = ev["item_id"].map(category)
    bought_never = ev[ev["category"].isin(never)].groupby("user_id")["item_id"].apply(set).to_dict()
    laptop_buyers = set(ev.loc[ev["category"] == LAPTOPS, "user_id"])
    customers_t = pd.read_parquet(ws.root / "customers.parquet").set_index("user_id")
    consent = customers_t["consent_personalisation"].fillna(False).astype(bool)
    out: dict[str, Any] = {"customers": customers, "items": items, "k": k}
    with threadpool_limits(1, "blas"):
        feed = Feed(ws, env={**os.environ, "SHOPREC_AB_SHARES": "champion=1"})
        try:
            engine = feed.holder.models.champion
            out["policy_vs_truth"] = _policy_vs_truth(ws, engine.policy)
            users = engine.model.users.sort_values("user_idx")["user_id"].astype(str).tolist()
            t0 = time.perf_counter()
            frame = feed.run(users, k, feed_context(), progress=False)
            out["feed_s"] = round(time.perf_counter() - t0, 1)
            blocks = _blocks(frame)
            refused = [u for u in users if not consent.get(u, False)]
            out["feed"] = {
                "customers": len(blocks),
                # consenting customers: the rule; without consent: the one shared block by design
                "never_rebought_repeats": _repeats(
                    {u: b for u, b in blocks.items() if consent.get(u, False)}, bought_never
                ),
                "shared_block_repeats_without_consent": _repeats(
                    {u: blocks.get(u, []) for u in refused}, bought_never
                ),
                "customers_without_consent": len(refused),
            }
            sample = users[:: max(1, len(users) // 10_000)]
            off = _blocks(feed.run(sample, k, feed_context("never"), progress=False))
            out["feed"]["rule_off_sample"] = {
                "customers": len(sample),
                "never_rebought_repeats": _repeats(off, bought_never),
            }
            out["just_bought"] = _just_bought(feed, engine, blocks, category, consumable, consent, k)
            out["durable"] = _durable(
                feed, engine, ws, blocks, category, consent, laptop_buyers, k, n=200 if quick else 1000
            )
        finally:
            feed.close()
    return out


def _just_bought(feed, engine, blocks, category, consumable, consent, k: int, n: int = 1000) -> dict:  # noqa: ANN001
    """A consumable of each picked customer's block bought now; is it in their next block?"""
    from serving.feed import feed_context

    picked: dict[str, str] = {}
    for u, items in blocks.items():
        if consent.get(u, False):
            shown = [i for i in items if category.get(i) in consumable]
            if shown:
                picked[u] = shown[0]
        if len(picked) == n:
            break
    now = time.time()
    engine.record_events(
        [{"user_id": u, "item_id": i, "event_type": "purchase", "timestamp": now} for u, i in picked.items()]
    )
    after = _blocks(feed.run(list(picked), k, feed_context(), progress=False))
    later = engine.recommend_batch(list(picked), k, now=now + engine.policy.floor_seconds + 60)
    return {
        "customers": len(picked),
        "back_in_next_block": int(sum(i in after.get(u, []) for u, i in picked.items())),
        "back_after_the_floor": int(sum(i in {r.item_id for r in later[u]} for u, i in picked.items())),
        "floor_hours": engine.policy.floor_hours,
    }


def _durable(feed, engine, ws, blocks, category, consent, laptop_buyers, k: int, n: int) -> dict:  # noqa: ANN001
    """A laptop bought now by customers who have none; other laptops and its accessories next."""
    from serving.feed import feed_context

    pairs = pd.read_parquet(ws.root / "truth" / "complements.parquet")
    pairs = pairs[pairs["category"] == LAPTOPS]
    accessories = pairs.groupby("item_id")["complement_id"].apply(set).to_dict()
    stock = pd.read_parquet(ws.root / "stock.parquet").groupby("item_id")["quantity"].sum()
    laptops_in_stock = sorted(i for i in accessories if stock.get(i, 0) > 0)
    laptops = set(category.index[category == LAPTOPS])
    rng = np.random.default_rng(0)
    users = [u for u in blocks if consent.get(u, False) and u not in laptop_buyers][:n]
    bought = {u: laptops_in_stock[int(rng.integers(len(laptops_in_stock)))] for u in users}
    now = time.time()
    engine.record_events(
        [{"user_id": u, "item_id": i, "event_type": "purchase", "timestamp": now} for u, i in bought.items()]
    )
    cx = feed_context(page_category=LAPTOPS)
    after = _blocks(feed.run(users, k, cx, progress=False))
    plain = _blocks(feed.run(users, k, feed_context(), progress=False))
    return {
        "customers": len(users),
        "laptops_in_next_block": int(sum(len(laptops & set(plain.get(u, []))) for u in users)),
        "laptops_in_next_block_laptops_page": int(sum(len(laptops & set(after.get(u, []))) for u in users)),
        "blocks_with_a_planted_accessory": int(
            sum(bool(accessories[bought[u]] & set(plain.get(u, []))) for u in users)
        ),
        "durable_days": dict(engine.policy.durables).get(LAPTOPS),
    }


def main(quick: bool = False) -> dict:
    start = time.perf_counter()
    result: dict[str, Any] = {"quick": quick, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    print("== instacart-sample: recall@20 per window fraction and floor", flush=True)
    result["instacart"] = instacart(quick)
    print(json.dumps(result["instacart"]["chosen"]), flush=True)
    print("== synthetic shop: the planted truth on the feed", flush=True)
    result["synthetic"] = shop(quick)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rebuy.json").write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    print(json.dumps(main(quick="--quick" in sys.argv), indent=2, default=str))
