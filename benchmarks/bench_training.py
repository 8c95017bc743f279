"""Benchmark: model quality side by side on the real data sets, and the speed of training/ranking.

Data come through the real pipeline (`features.datasets.fetch` + `features.build.build_features`),
cached under benchmarks/work/training/. Every model is evaluated with `training.evaluate.evaluate`
(full ranking over the catalogue); hyper-parameters are chosen on the validation part, the reported
number is the test part.

- MovieLens-100K `loo` (chronological leave-one-out) and `random` (per user 80/10/10): NDCG@10 of
  popular, itemknn (cosine, BM25), bpr, als, ease (λ, and Steck's dropout variants EDLAE / DLAE,
  chosen on validation). Targets: best >= 0.110 on loo (SASRec's job, bench_sasrec), >= 0.34 on
  random (EASE grid: also DLAE on popularity-normalised columns, `pop_beta`; and the same sweep on
  a second random draw, seed 43, for the draw-to-draw spread). RecBole 1.2.1 reference in the JSON. On `random` two test figures per model, both fitted
  on train only, both NDCG with the ideal DCG over min(|test|, k) items as in RecBole:
  `test` (training.evaluate: the validation items join the customer's history, i.e. the model's
  input) and `test_recbole_input` (RecBole's full-sort protocol: the model scores from the training
  matrix alone, train and valid items excluded). Plus, labelled as such, the chosen EASE config
  refitted on train + valid and scored on test (`refit_train_valid`).
- Instacart sample, each customer's last order held out (`loo`): Recall@20 of "re-buy what you
  bought most often" (repeat-blend with cf_weight=0, recency off), raw ALS, and repeat-blend
  (cf_weight / recency chosen on validation); exclude_seen=never (groceries are re-bought) and, for
  information, the learned policy.
- Speed (ratios in the same process): ALS fit through shoprec vs raw `implicit` on the same matrix
  (target <= 1.15); batch top-20 over 100k users × 20k items with exclusions through
  `Recommender.recommend` vs a plain numpy matmul + argpartition without exclusions (target <= 1.0).

    python -m benchmarks.bench_training          # everything (a few minutes on 2 cores)
    python -m benchmarks.bench_training --quick  # loo only, one config per model, 4k users
    python -m benchmarks.bench_training --only-movielens  # refresh the MovieLens part of the JSON
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit runs its own threads (see implicit_models)

import numpy as np
import scipy.sparse as sp

from features.workspace import Workspace

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "work" / "training"
RECBOLE_ML100K = {
    "loo": {"ease": 0.0706, "bpr": 0.0673, "itemknn": 0.0629, "popular": 0.0354, "als(tuned, issue)": 0.076},
    "random": {"ease": 0.3295, "bpr": 0.2931, "itemknn": 0.2834},
}


def prepare(name: str) -> Workspace:
    """Fetch data set `name` and build its features once (cached under benchmarks/work/training)."""
    from features.build import build_features
    from features.config import FeatureConfig
    from features.datasets import fetch

    ws = Workspace.at(WORK / name)
    if ws.raw("events") is None:
        fetch(name, ws.root)
    if not (ws.features_dir / "summary.json").exists():
        build_features(ws, FeatureConfig())
    return ws


def _fit_eval(
    split: Any, name: str, cfg: dict, *, exclude: str, metric: str, recbole_input: bool = False
) -> dict[str, Any]:
    from training.evaluate import evaluate
    from training.models import get_model_class

    klass = get_model_class(name)
    t, c = time.perf_counter(), time.process_time()
    model = klass(klass.Config.from_dict(cfg)).fit(split.train)
    fit_s, fit_cpu_s = time.perf_counter() - t, time.process_time() - c
    valid = evaluate(model, split, on="valid", exclude_seen=exclude)
    test = evaluate(model, split, on="test", exclude_seen=exclude)
    out = {
        "model": name,
        "config": cfg,
        "valid": round(valid[metric], 4),
        "test": round(test[metric], 4),
        "fit_s": round(fit_s, 2),
        "fit_cpu_s": round(fit_cpu_s, 2),
        "test_metrics": {k: round(v, 4) for k, v in test.items() if "/" not in k},
    }
    if recbole_input:
        out["test_recbole_input"] = round(recbole_input_ndcg(model, split), 4)
    return out


def recbole_input_ndcg(model: Any, split: Any, k: int = 10) -> float:
    """NDCG@k on test as RecBole's full sort scores it: the model's input is the training matrix
    alone (RecBole's EASE: `interaction_matrix[user] @ item_similarity`, the train matrix), items in
    train or valid are excluded, ideal DCG over min(|test|, k) items (training.evaluate's
    ndcg_at_k, the same definition as RecBole's)."""
    from training.base import History
    from training.evaluate import hit_matrix, ndcg_at_k

    tr = split.train
    users = np.sort(split.test["user_idx"].unique()).astype(np.int64)
    row = np.searchsorted(users, split.test["user_idx"].to_numpy())
    T = sp.csr_matrix(
        (np.ones(len(split.test), np.float32), (row, split.test["item_idx"].to_numpy(np.int64))),
        shape=(len(users), tr.n_items),
    )
    T.data[:] = 1.0
    v = split.valid[split.valid["user_idx"].isin(users)]
    V = sp.csr_matrix(
        (
            np.ones(len(v), np.float32),
            (np.searchsorted(users, v["user_idx"].to_numpy()), v["item_idx"].to_numpy(np.int64)),
        ),
        shape=T.shape,
    )
    seen = sp.csr_matrix(tr.user_items[users].maximum(V))
    seen.data[:] = 1.0
    ids, _ = model.recommend(users, History.of(tr, users), k, exclude=seen)
    return float(ndcg_at_k(hit_matrix(ids, T), np.diff(T.indptr), k).mean())


def refit_train_valid(split: Any, name: str, cfg: dict) -> dict[str, float]:
    """The chosen config refitted on train + valid, scored on test (history = train + valid): a
    second figure, not RecBole's protocol (which fits on train only)."""
    import dataclasses

    from training.evaluate import evaluate
    from training.models import get_model_class

    tr = split.train
    V = sp.csr_matrix(
        (
            np.ones(len(split.valid), np.float32),
            (split.valid["user_idx"].to_numpy(np.int64), split.valid["item_idx"].to_numpy(np.int64)),
        ),
        shape=tr.user_items.shape,
    )
    data = dataclasses.replace(tr, user_items=sp.csr_matrix(tr.user_items.maximum(V)))
    klass = get_model_class(name)
    model = klass(klass.Config.from_dict(cfg)).fit(data)
    test = evaluate(model, split, on="test")
    return {"model": name, "config": cfg, "ndcg@10": round(test["ndcg@10"], 4)}


def _sweep(
    split: Any, name: str, grid: list[dict], *, exclude: str, metric: str, recbole_input: bool = False
) -> dict[str, Any]:
    """Every config of `grid`; the one best on validation is the model's reported result."""
    runs = [
        _fit_eval(split, name, cfg, exclude=exclude, metric=metric, recbole_input=recbole_input)
        for cfg in grid
    ]
    for r in runs:
        rb = f" (recbole input {r['test_recbole_input']:.4f})" if recbole_input else ""
        print(
            f"  {name:<14} {json.dumps(r['config']):<60} valid {r['valid']:.4f} test {r['test']:.4f}{rb}",
            flush=True,
        )
    best = max(runs, key=lambda r: r["valid"])
    keys = ("config", "valid", "test", "test_recbole_input", "fit_s", "fit_cpu_s")
    return {"best": best, "tried": [{k: r[k] for k in keys if k in r} for r in runs]}


def random_ease_grid() -> list[dict]:
    """EASE, Steck's dropout-denoised EDLAE (diag(B) = 0) / DLAE (free diagonal), and DLAE on
    popularity-normalised columns (pop_beta)."""
    lambdas = (100.0, 150.0, 200.0, 300.0, 400.0, 500.0)
    return (
        [{"lambda_": lam} for lam in lambdas]
        + [
            {"lambda_": lam, "dropout": p, "zero_diagonal": zd}
            for zd in (True, False)
            for p in (0.25, 0.5, 0.75)
            for lam in lambdas
        ]
        + [
            {"lambda_": lam, "dropout": p, "zero_diagonal": False, "pop_beta": b}
            for b in (0.1, 0.15)
            for p in (0.5, 0.75)
            for lam in (100.0, 150.0, 200.0, 300.0)
        ]
    )


def second_random_draw(seed: int = 43) -> dict[str, Any]:
    """The same EASE/DLAE sweep on a second random 80/10/10 draw (FeatureConfig.seed = `seed`;
    the main draw is the default seed 42): how far the chosen config's test NDCG@10 moves from one
    draw to the next. Chosen on that draw's validation, as on the first."""
    import shutil

    from features.build import build_features
    from features.config import FeatureConfig
    from training.data import load_split

    src = prepare("movielens-100k")
    ws = Workspace.at(WORK / f"movielens-100k-seed{seed}")
    ws.root.mkdir(parents=True, exist_ok=True)
    for name in ("events", "catalog", "customers"):
        if (src.root / f"{name}.parquet").exists() and not (ws.root / f"{name}.parquet").exists():
            shutil.copy(src.root / f"{name}.parquet", ws.root / f"{name}.parquet")
    if not (ws.features_dir / "summary.json").exists():
        build_features(ws, FeatureConfig(seed=seed))
    split = load_split(ws, "random")
    print(f"movielens-100k random, second draw (seed {seed}): NDCG@10 (valid / test)", flush=True)
    res = _sweep(split, "ease", random_ease_grid(), exclude="learned", metric="ndcg@10")
    best = res["best"]
    return {
        "seed": seed,
        "best_config": best["config"],
        "valid": best["valid"],
        "test": best["test"],
        "tried": res["tried"],
    }


def movielens(quick: bool) -> dict[str, Any]:
    from training.data import load_split

    ws = prepare("movielens-100k")
    out: dict[str, Any] = {}
    for kind in ("loo",) if quick else ("loo", "random"):
        split = load_split(ws, kind)
        print(f"movielens-100k {kind}: NDCG@10 (valid / test)", flush=True)
        lambdas = [300.0] if quick else [100.0, 200.0, 300.0, 400.0, 600.0]
        ease_grid = [{"lambda_": lam} for lam in lambdas]
        if kind == "random" and not quick:
            # EASE, and Steck's dropout-denoised EDLAE (diag(B) = 0) / DLAE (free diagonal)
            ease_grid = random_ease_grid()
        elif not quick:
            ease_grid += [
                {"lambda_": lam, "dropout": 0.5, "zero_diagonal": zd}
                for zd in (True, False)
                for lam in (100.0, 200.0, 400.0)
            ]
        grids: dict[str, list[dict]] = {
            "popular": [{}],
            "itemknn": [{}]
            if quick
            else [{"similarity": "cosine"}, {"similarity": "bm25"}, {"neighbours": 50}],
            "als": [{}]
            if quick
            else [
                {"factors": f, "regularization": r, "alpha": a}
                for f, r, a in ((64, 0.05, 2.0), (128, 0.1, 2.0), (64, 0.5, 1.0))
            ],
            "ease": ease_grid,
        }
        if not quick:
            grids["bpr"] = [
                {},
                {"learning_rate": 0.01, "iterations": 50},
                {"learning_rate": 0.002, "iterations": 200},
            ]
        rb = kind == "random"
        res = {
            m: _sweep(split, m, g, exclude="learned", metric="ndcg@10", recbole_input=rb)
            for m, g in grids.items()
        }
        best_name = max(res, key=lambda m: res[m]["best"]["valid"])  # chosen on validation too
        out[kind] = {
            "ndcg@10_test": {m: r["best"]["test"] for m, r in res.items()},
            "best_model": best_name,
            "best_config": res[best_name]["best"]["config"],
            "best_ndcg@10": res[best_name]["best"]["test"],
            "target": 0.110 if kind == "loo" else 0.34,
            "recbole_reference": RECBOLE_ML100K[kind],
        }
        if rb:
            out[kind]["ndcg@10_test_recbole_input"] = {
                m: r["best"]["test_recbole_input"] for m, r in res.items()
            }
            out[kind]["best_ndcg@10_recbole_input"] = res[best_name]["best"]["test_recbole_input"]
            out[kind]["refit_train_valid"] = refit_train_valid(split, "ease", res["ease"]["best"]["config"])
            print(f"  ease refit on train + valid: test {out[kind]['refit_train_valid']}", flush=True)
            out[kind]["second_draw"] = second_random_draw()
        out[kind]["details"] = res
    return out


def instacart(quick: bool) -> dict[str, Any]:
    from training.data import load_split

    ws = prepare("instacart-sample")
    split = load_split(ws, "loo")
    print("instacart-sample loo: Recall@20 (valid / test)", flush=True)
    base = _sweep(
        split,
        "repeat-blend",
        [{"cf_weight": 0.0, "recency_half_life": 0.0}],
        exclude="never",
        metric="recall@20",
    )
    als = _sweep(split, "als", [{}], exclude="never", metric="recall@20")
    grid = [{"cf_weight": 0.1, "recency_half_life": 50.0}]
    if not quick:
        grid += [
            {"cf_weight": w, "recency_half_life": h}
            for w in (0.05, 0.1, 0.2)
            for h in (20.0, 50.0, 100.0)
            if (w, h) != (0.1, 50.0)
        ]
    blend = _sweep(split, "repeat-blend", grid, exclude="never", metric="recall@20")
    learned = _fit_eval(split, "repeat-blend", blend["best"]["config"], exclude="learned", metric="recall@20")
    b, a, r = base["best"]["test"], als["best"]["test"], blend["best"]["test"]
    return {
        "recall@20_test": {"rebuy-most-often": b, "als": a, "repeat-blend": r},
        "ratio_blend_vs_rebuy": round(r / b, 4) if b else None,
        "target_ratio": 1.03,
        "meets_target": bool(r >= 1.03 * b and r > a),
        "repeat_blend_learned_policy_recall@20": learned["test"],
        "details": {"rebuy": base, "als": als, "repeat-blend": blend},
    }


def complements(quick: bool) -> dict[str, Any]:
    """Instacart held-out orders: hide one item per order, predict it from the rest (evaluate_baskets)."""
    from training.data import load_split
    from training.evaluate import evaluate_baskets
    from training.models import get_model_class

    split = load_split(prepare("instacart-sample"), "loo")
    out: dict[str, Any] = {}
    for name in ("popular", "itemknn", "bought-together"):
        klass = get_model_class(name)
        model = klass().fit(split.train)
        r = evaluate_baskets(model, split, ks=(10, 20), max_baskets=2_000 if quick else 20_000)
        out[name] = {k: round(v, 4) for k, v in r.items()}
        print(
            f"  baskets {name:<16} hit@10 {r['basket_hit@10']:.4f} hit@20 {r['basket_hit@20']:.4f}",
            flush=True,
        )
    return out


def als_speed(quick: bool) -> dict[str, Any]:
    """ALS fit through shoprec vs raw implicit on the same matrix (best of 3 each, alternating)."""
    from threadpoolctl import threadpool_limits

    from training.base import TrainData
    from training.models import get_model_class

    rng = np.random.default_rng(0)
    n_users, n_items, nnz = (5_000, 2_000, 60_000) if quick else (100_000, 20_000, 2_000_000)
    X = sp.csr_matrix(
        (np.ones(nnz, np.float32), (rng.integers(0, n_users, nnz), rng.zipf(1.3, nnz) % n_items)),
        shape=(n_users, n_items),
    )
    X.sum_duplicates()
    import pandas as pd

    data = TrainData(
        X,
        pd.DataFrame({"user_idx": np.arange(n_users), "user_id": np.arange(n_users).astype(str)}),
        pd.DataFrame({"item_idx": np.arange(n_items), "item_id": np.arange(n_items).astype(str)}),
    )
    ALS = get_model_class("als")
    cfg = {"factors": 64, "iterations": 5 if quick else 15, "regularization": 0.05, "alpha": 2.0}
    ours, raw = [], []
    for _ in range(3):
        t = time.perf_counter()
        ALS(ALS.Config.from_dict(cfg)).fit(data)
        ours.append(time.perf_counter() - t)
        from implicit.cpu.als import AlternatingLeastSquares

        t = time.perf_counter()
        with threadpool_limits(1, "blas"):
            m = AlternatingLeastSquares(
                factors=64, iterations=cfg["iterations"], regularization=0.05, alpha=2.0, random_state=42
            )
            m.fit(X, show_progress=False)
        raw.append(time.perf_counter() - t)
    return {
        "matrix": [n_users, n_items, int(X.nnz)],
        "shoprec_s": round(min(ours), 3),
        "implicit_s": round(min(raw), 3),
        "ratio": round(min(ours) / min(raw), 3),
        "target": 1.15,
    }


def topk_speed(quick: bool) -> dict[str, Any]:
    """Batch top-20 with exclusions via Recommender.recommend vs plain matmul + argpartition (no exclusions)."""
    import pandas as pd

    from training.base import History
    from training.models.implicit_models import ALS

    rng = np.random.default_rng(0)
    n_users, n_items, f, k, batch = (
        (4_000, 20_000, 64, 20, 2048) if quick else (100_000, 20_000, 64, 20, 2048)
    )
    U = rng.standard_normal((n_users, f), dtype=np.float32)
    V = rng.standard_normal((n_items, f), dtype=np.float32)
    model = ALS(ALS.Config(factors=f))
    model.user_factors_, model.item_factors_, model.n_items = U, V, n_items
    model.items = pd.DataFrame({"item_idx": np.arange(n_items)})
    per_user = 20
    ex = sp.csr_matrix(
        (
            np.ones(n_users * per_user, np.float32),
            (np.repeat(np.arange(n_users), per_user), rng.integers(0, n_items, n_users * per_user)),
        ),
        shape=(n_users, n_items),
    )
    ex.sum_duplicates()
    hist = History(ex)
    users = np.arange(n_users)

    def baseline() -> None:
        for s in range(0, n_users, batch):
            scores = U[s : s + batch] @ V.T
            np.argpartition(-scores, k - 1, axis=1)[:, :k]

    # interleaved, best of 2 each: other work on a shared machine slows whichever runs at that moment
    base_t, ours_t = [], []
    for _ in range(2):
        t = time.perf_counter()
        baseline()
        base_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        ids, _ = model.recommend(users, hist, k, exclude=ex, batch_size=batch)
        ours_t.append(time.perf_counter() - t)
    baseline_s, ours_s = min(base_t), min(ours_t)
    # correctness spot check: same top-20 set as a brute-force ranking with exclusions, on 50 users
    chk = rng.choice(n_users, 50, replace=False)
    s = U[chk] @ V.T
    s[ex[chk].toarray() > 0] = -np.inf
    want = np.argsort(-s, axis=1)[:, :k]
    same = float(np.mean([set(a) == set(b) for a, b in zip(ids[chk], want, strict=True)]))
    return {
        "users": n_users,
        "items": n_items,
        "k": k,
        "baseline_matmul_argpartition_s": round(baseline_s, 2),
        "recommend_with_exclusions_s": round(ours_s, 2),
        "ratio": round(ours_s / baseline_s, 3),
        "target": 1.0,
        "same_as_bruteforce": same,
    }


def main(quick: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    result: dict[str, Any] = {"quick": quick}
    result["movielens_100k"] = movielens(quick)
    result["instacart_sample"] = instacart(quick)
    print("instacart-sample held-out orders: hide one item, predict it from the rest", flush=True)
    result["instacart_complements"] = complements(quick)
    print("speed ...", flush=True)
    result["speed_als_fit"] = als_speed(quick)
    result["speed_topk"] = topk_speed(quick)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(result, indent=2))
    return result


def movielens_only() -> dict[str, Any]:
    """Re-run only the MovieLens-100K part and replace it in an existing training.json (the other
    parts keep the figures of the run that wrote them; `partial_rerun` says so)."""
    path = RESULTS / "training.json"
    result = json.loads(path.read_text()) if path.exists() else {"quick": False}
    t0 = time.perf_counter()
    result["movielens_100k"] = movielens(False)
    result["partial_rerun"] = {
        "part": "movielens_100k",
        "seconds": round(time.perf_counter() - t0, 1),
        "note": "only movielens_100k was re-run; the other parts are from the previous full run",
    }
    path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if "--only-movielens" in sys.argv:
        r = movielens_only()
        print(json.dumps({k: r["movielens_100k"]["random"][k] for k in ("best_config", "best_ndcg@10")}))
        print(
            json.dumps(
                {k: v for k, v in r["movielens_100k"]["random"]["second_draw"].items() if k != "tried"}
            )
        )
        sys.exit(0)
    r = main(quick="--quick" in sys.argv)
    print(
        json.dumps({k: v for k, v in r.items() if k not in ("movielens_100k", "instacart_sample")}, indent=2)
    )
    print(
        json.dumps(
            {
                "ml_loo": r["movielens_100k"]["loo"]["ndcg@10_test"],
                "ml_random": r["movielens_100k"].get("random", {}).get("ndcg@10_test"),
                "ml_random_recbole_input": r["movielens_100k"]
                .get("random", {})
                .get("ndcg@10_test_recbole_input"),
                "instacart": r["instacart_sample"]["recall@20_test"],
            },
            indent=2,
        )
    )
