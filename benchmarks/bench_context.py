"""Context benchmark: does the visit's learned context lift (device, city, weather) find what the
held-out customers bought, against the same engine without it?

    python -m benchmarks.run context [--quick]

The shop: the synthetic shop (full: 20k customers x 4k items x 180 days; quick: 3k x 800 x 120),
whose events carry device, city and weather, with one planted effect (docs/synthetic.md: jacket
sessions happen in the rain ~2x as often). The last 14 days are held out; the training workspace
holds every table and the events before the cut, features are built on it, ALS (64 factors) is fitted
and bundled, and the bundle's context lifts are learned from the training events only
(training/context.py). Then, through the serving engine with every rule (`Engine.recommend`, the
re-buy policy and stock included, `now` = the visit's time):

- each held-out session with a purchase and a known weather is one request, the items bought in it
  the targets; its context is the session's device, city and weather;
- `with_context`: the block of k = 20 for that context; `without_context`: the same request without
  device, city and weather (the same engine otherwise);
- hit rate (a target in the block) and recall (targets in the block / targets), overall, per
  weather, and for the rainy jacket sessions the effect was planted in.

Also run: the learner on a null shop (the same seed with the effect switched off) must learn no lift.
Results: benchmarks/results/context.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work" / "context"
RESULTS = ROOT / "benchmarks" / "results"
HOLDOUT_DAYS = 14
K = 20
MAX_REQUESTS = 4000
SWEEP = (0.1, 0.6, 1.0)


def _shop(name: str, customers: int, items: int, days: int, params: Any = None) -> Path:
    from features.synthetic import generate

    out = WORK / name / "raw"
    if not (out / "events.parquet").exists():
        shutil.rmtree(out, ignore_errors=True)
        generate(out, customers=customers, items=items, days=days, seed=11, progress=False, params=params)
    return out


def _train_workspace(raw: Path, cut: pd.Timestamp) -> Path:
    """Every table of `raw` and the events before `cut`; features built as of `cut`."""
    from features.build import build_features
    from features.config import FeatureConfig
    from features.workspace import Workspace

    ws_dir = raw.parent / "train"
    if (ws_dir / "features" / "profiles.parquet").exists():
        return ws_dir
    shutil.rmtree(ws_dir, ignore_errors=True)
    ws_dir.mkdir(parents=True)
    for table in ("catalog", "stock", "customers"):
        shutil.copy(raw / f"{table}.parquet", ws_dir / f"{table}.parquet")
    ev = pd.read_parquet(raw / "events.parquet")
    ev[ev["timestamp"] < cut].to_parquet(ws_dir / "events.parquet", index=False)
    build_features(Workspace.at(ws_dir), FeatureConfig(), now=cut.to_pydatetime())
    return ws_dir


def _requests(raw: Path, cut: pd.Timestamp, seed: int = 0) -> pd.DataFrame:
    """One row per held-out session with a purchase and a weather: user, time, context, targets."""
    ev = pd.read_parquet(raw / "events.parquet")
    held = ev[(ev["timestamp"] >= cut) & (ev["event_type"] == "purchase") & ev["weather"].notna()]
    cat = pd.read_parquet(raw / "catalog.parquet", columns=["item_id", "category"])
    held = held.merge(cat, on="item_id", how="left")
    req = (
        held.groupby("session_id")
        .agg(
            user_id=("user_id", "first"),
            ts=("timestamp", "min"),
            device=("device", "first"),
            city=("city", "first"),
            weather=("weather", "first"),
            targets=("item_id", lambda s: sorted(set(s))),
            jackets=("category", lambda s: bool((s == "fashion/outerwear/jackets").any())),
        )
        .reset_index()
    )
    if len(req) > MAX_REQUESTS:
        req = req.sample(MAX_REQUESTS, random_state=seed).sort_values("session_id")
    return req.reset_index(drop=True)


def _score(engine: Any, req: pd.DataFrame, with_context: bool) -> pd.DataFrame:
    from serving.pipeline import Context

    hits, recalls, seconds = [], [], []
    for r in req.itertuples(index=False):
        cx = Context(
            device=r.device if with_context and isinstance(r.device, str) else None,
            city=r.city if with_context and isinstance(r.city, str) else None,
            weather=r.weather if with_context else None,
        )
        t0 = time.perf_counter()
        block = {x.item_id for x in engine.recommend(r.user_id, K, cx, now=r.ts.timestamp())}
        seconds.append(time.perf_counter() - t0)
        got = len(block & set(r.targets))
        hits.append(got > 0)
        recalls.append(got / len(r.targets))
    return pd.DataFrame({"hit": hits, "recall": recalls, "seconds": seconds})


def _summary(req: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
    def part(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        if not n:
            return {"requests": 0}
        w, o = a[mask], b[mask]
        return {
            "requests": n,
            f"hit@{K}_with_context": round(float(w["hit"].mean()), 4),
            f"hit@{K}_without_context": round(float(o["hit"].mean()), 4),
            f"recall@{K}_with_context": round(float(w["recall"].mean()), 4),
            f"recall@{K}_without_context": round(float(o["recall"].mean()), 4),
            "hit_ratio": round(float(w["hit"].mean() / max(o["hit"].mean(), 1e-12)), 3),
        }

    out = {"all": part(np.ones(len(req), dtype=bool))}
    for w in sorted(req["weather"].unique()):
        out[f"weather={w}"] = part((req["weather"] == w).to_numpy())
    out["rain_jacket_sessions"] = part(((req["weather"] == "rain") & req["jackets"]).to_numpy())
    return out


def main(quick: bool = False) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from features.synthetic import ShopParams
    from features.workspace import Workspace
    from serving.context import ContextBoost
    from serving.pipeline import Engine, EngineConfig
    from serving.state import ShopState
    from training.bundle import write_bundle
    from training.context import ContextLift, fit_from_workspace
    from training.data import load_train_data
    from training.models import get_model_class

    customers, items, days = (3000, 800, 120) if quick else (20000, 4000, 180)
    name = "quick" if quick else "full"
    raw = _shop(name, customers, items, days)
    end = pd.read_parquet(raw / "events.parquet", columns=["timestamp"])["timestamp"].max().ceil("D")
    cut = end - pd.Timedelta(days=HOLDOUT_DAYS)
    t0 = time.perf_counter()
    ws = Workspace.at(_train_workspace(raw, cut))
    model = get_model_class("als")(get_model_class("als").Config(factors=64)).fit(load_train_data(ws))
    bundle = write_bundle(model, ws, ws.root / "bundle-als")
    lift = ContextLift.load(bundle)
    state = ShopState.from_workspace(ws)
    engine = Engine.from_bundle(bundle, state)
    prep_s = time.perf_counter() - t0
    req = _requests(raw, cut)
    with_ctx = _score(engine, req, True)
    without = _score(engine, req, False)
    # The boost's size: the default (EngineConfig.context_boost) above; others here, each on an
    # engine of its own (the popular-block cache is per engine configuration).
    sweep = {}
    for boost in SWEEP:
        other = Engine.from_bundle(bundle, state, config=EngineConfig(context_boost=boost))
        sweep[str(boost)] = _summary(req, _score(other, req, True), without)
        other.close()
    # The null shop: the same seed, jackets in the rain no more often than anything else.
    base_rain = dict(ShopParams().weather_shares)["rain"]
    null_raw = _shop(
        f"{name}-null", customers, items, days, dataclasses.replace(ShopParams(), p_rain_leaf=base_rain)
    )
    null_ws_dir = null_raw.parent / "validated-only"
    null_lifts = _null_lifts(null_raw, null_ws_dir, fit_from_workspace)
    result = {
        "shop": {"customers": customers, "items": items, "days": days, "holdout_days": HOLDOUT_DAYS, "k": K},
        "learned_lifts": [dataclasses.asdict(x) for x in (lift.lifts if lift else [])],
        "pairs_tested": lift.tested if lift else 0,
        "null_shop_lifts": null_lifts,
        "context_boost": EngineConfig().context_boost,
        "metrics": _summary(req, with_ctx, without),
        "sweep_context_boost": {
            b: {k: v for k, v in m.items() if k in ("all", "weather=rain", "rain_jacket_sessions")}
            for b, m in sweep.items()
        },
        "latency_ms_p50": {
            "with_context": round(float(with_ctx["seconds"].median() * 1000), 3),
            "without_context": round(float(without["seconds"].median() * 1000), 3),
        },
        "prep_seconds": round(prep_s, 1),
        "no_boost_without_lift": _no_boost_check(engine, req, ContextBoost),
        "load_average": list(os.getloadavg()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "context.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _null_lifts(raw: Path, ws_dir: Path, fit: Any) -> list[dict[str, Any]]:
    """The learner on the null shop's validated tables (no model needed)."""
    from features.validate import validate_workspace
    from features.workspace import Workspace

    if not (ws_dir / "validated" / "events.parquet").exists():
        shutil.rmtree(ws_dir, ignore_errors=True)
        ws_dir.mkdir(parents=True)
        for table in ("events", "catalog", "stock", "customers"):
            shutil.copy(raw / f"{table}.parquet", ws_dir / f"{table}.parquet")
        validate_workspace(Workspace.at(ws_dir))
    return [dataclasses.asdict(x) for x in fit(Workspace.at(ws_dir)).lifts]


def _no_boost_check(engine: Any, req: pd.DataFrame, boost_cls: Any) -> bool:
    """With the lifts removed, a request with its context answers exactly as one without."""
    from serving.pipeline import Context

    saved = engine.context_lift
    engine.context_lift = boost_cls(None)
    try:
        for r in req.head(50).itertuples(index=False):
            now = r.ts.timestamp()
            a = engine.recommend(r.user_id, K, Context(weather=r.weather, device=r.device), now=now)
            b = engine.recommend(r.user_id, K, Context(), now=now)
            if a != b:
                return False
        return True
    finally:
        engine.context_lift = saved
