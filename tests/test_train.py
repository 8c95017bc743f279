"""`shoprec train` with SASRec: early stopping on the split's validation part, refit for the
epochs validation chose (a tiny synthetic shop; seconds on one CPU thread)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

from features.workspace import Workspace  # noqa: E402
from training.train import TrainConfig, build_model, chosen_epochs, fit_and_evaluate, refit_params  # noqa: E402

TINY_SASREC = {
    "dim": "16",
    "n_layers": "1",
    "n_heads": "1",
    "max_len": "20",
    "epochs": "12",
    "patience": "2",
    "threads": "1",
    "device": "cpu",
    "progress": "false",
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate

    root: Path = tmp_path_factory.mktemp("shop")
    generate(root, customers=200, items=100, days=60, seed=1)
    ws = Workspace.at(root)
    build_features(ws, FeatureConfig())
    return ws


def test_sasrec_train_stops_early_on_validation_and_keeps_the_best_epoch(ws: Workspace) -> None:
    """Before: `train` fitted the whole schedule with no validation (history had no "valid")."""
    from training.evaluate import evaluate

    config = TrainConfig(model="sasrec", params=TINY_SASREC, split="loo", plots=False, register=False)
    model, metrics, _, split = fit_and_evaluate(ws, config)
    assert len(split.valid) > 0
    curve = [h.get("valid") for h in model.history]
    assert curve and all(v is not None for v in curve)  # scored on validation after every epoch
    best = chosen_epochs(model)
    assert best == curve.index(max(curve)) + 1
    # stopped `patience` epochs after the best, unless the schedule ended first
    assert len(curve) == min(12, best + 2)
    # the fitted model is the best epoch's: its validation score is the curve's maximum
    valid = evaluate(model, split, on="valid", ks=(10,), exclude_seen=config.exclude_seen)["ndcg@10"]
    assert valid == pytest.approx(max(curve), abs=1e-9)
    assert "ndcg@10" in metrics
    # the refit on all data runs exactly the chosen epochs, without early stopping
    params = refit_params(model, config.params)
    assert params == {**TINY_SASREC, "epochs": best, "patience": 0}
    refit = build_model("sasrec", params)
    assert refit.config.epochs == best and refit.config.patience == 0


def test_models_without_a_validation_hook_keep_their_params(ws: Workspace) -> None:
    config = TrainConfig(model="ease", params={"lambda_": "50"}, split="loo", plots=False, register=False)
    model, _, _, _ = fit_and_evaluate(ws, config)
    assert chosen_epochs(model) is None
    assert refit_params(model, config.params) == {"lambda_": "50"}


def test_a_catalogue_too_big_for_ease_gets_the_bounded_variant_and_says_so(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `make retrain` on Complete Journey stopped at EASE ("catalogue of 68509 items exceeds
    max_items=20000") and nothing after it trained. Now EASE fits on the most popular items, the
    run registers a version, and the warning travels in the result line and the MLflow run."""
    import mlflow

    from training.train import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the workspace's own SQLite store
    config = TrainConfig(
        model="ease", params={"max_items": "40", "top_items": "30"}, split="loo", plots=False
    )
    result = train(ws, config)
    assert result.version is not None
    assert len(result.warnings) == 1 and "exceeds max_items=40" in result.warnings[0]
    assert result.to_json()["warnings"] == list(result.warnings)
    tag = mlflow.MlflowClient(ws.mlflow_uri).get_run(result.run_id).data.tags["fit_warnings"]
    assert "fitted on the 30 most popular items only" in tag
    assert result.metrics["ndcg@10"] > 0


def test_bundles_of_one_retrain_share_one_complements_fit(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bundle carries a bought-together model fitted on the same data; the second bundle
    reuses the first one's fit (on Complete Journey one fit takes minutes), and other data gets
    its own."""
    import numpy as np

    from training.bundle import fit_complements, write_bundle
    from training.data import load_train_data
    from training.models.bought_together import BoughtTogether

    data = load_train_data(ws)
    model = build_model("popular", {}).fit(data)
    write_bundle(model, ws, tmp_path / "b1", data=data, data_hash="x")
    keys = list((ws.root / ".cache" / "complements").iterdir())
    assert len(keys) == 1

    def no_refit(self, *args, **kwargs):
        raise AssertionError("complements refitted although cached")

    with monkeypatch.context() as m:
        m.setattr(BoughtTogether, "_fit", no_refit)
        write_bundle(model, ws, tmp_path / "b2", data=data, data_hash="x")
    fresh = BoughtTogether().fit(data)
    cached = fit_complements(data, cache=ws.root / ".cache")
    assert (cached.similarity_ != fresh.similarity_).nnz == 0
    # one basket less: another key, fitted afresh, and the old key goes
    data.baskets = data.baskets[1:]
    other = fit_complements(data, cache=ws.root / ".cache")
    assert [p.name for p in (ws.root / ".cache" / "complements").iterdir()] != [k.name for k in keys]
    assert len(list((ws.root / ".cache" / "complements").iterdir())) == 1
    assert other is not None and np.isfinite(other.similarity_.data).all()


@pytest.mark.parametrize("model_name", ["itemknn", "tifu"])
def test_evaluation_in_slices_of_customers_gives_the_same_metrics(
    ws: Workspace, model_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evaluate` builds the re-buy exclusions one slice of customers at a time (a million customers'
    durable exclusions at once took 22 GB); slices smaller than the customers give the same
    figures as one slice, with the learned policy (durables included) and with the validation
    basket in a test customer's history."""
    import training.evaluate as ev
    from training.data import load_split
    from training.train import build_model

    split = load_split(ws, "loo")
    model = build_model(model_name, {}).fit(split.train)
    whole = {on: ev.evaluate(model, split, on=on, batch_size=16) for on in ("valid", "test")}
    monkeypatch.setattr(ev, "EXCLUSION_SLICE", 16)
    calls = []
    real = ev.exclusion_matrix
    monkeypatch.setattr(ev, "exclusion_matrix", lambda *a, **k: calls.append(1) or real(*a, **k))
    for on in ("valid", "test"):
        sliced = ev.evaluate(model, split, on=on, batch_size=16)
        assert sliced == whole[on]
    assert len(calls) >= 2 * (int(whole["test"]["n_users"]) // 16)
    assert whole["test"]["n_users"] > 48 and whole["test"]["recall@20"] > 0


def test_the_split_is_freed_before_the_refit_and_the_plots_still_come(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a million-customer shop the split's arrays are gigabytes; the refit on all data loads the
    whole shop beside them. `train` draws the plots first and lets the split go: while the refit
    fits, no `Split` is alive (before: the plots were drawn after the refit and kept it)."""
    import gc

    import mlflow

    from training import train as train_module
    from training.data import Split

    alive_at_refit: list[int] = []
    real_build = train_module.build_model
    calls = {"n": 0}

    def build(name: str, params: dict) -> object:
        model = real_build(name, params)
        calls["n"] += 1
        if calls["n"] == 2:  # the second model built is the refit's
            fit = model.fit

            def counting_fit(data: object, **kw: object) -> object:
                gc.collect()
                alive_at_refit.append(sum(isinstance(o, Split) for o in gc.get_objects()))
                return fit(data, **kw)

            model.fit = counting_fit  # type: ignore[method-assign]
        return model

    monkeypatch.setattr(train_module, "build_model", build)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = train_module.train(ws, TrainConfig(model="popular", split="loo", register=False))
    assert alive_at_refit == [0]
    artifacts = mlflow.MlflowClient(ws.mlflow_uri).list_artifacts(result.run_id, "plots")
    assert {Path(a.path).name for a in artifacts} >= {"recall_at_k.png", "segments.png", "popularity.png"}
    logged = mlflow.MlflowClient(ws.mlflow_uri).get_run(result.run_id).data.metrics
    assert logged["popularity_median_recommended"] > 0  # the plot's medians, drawn before the refit
