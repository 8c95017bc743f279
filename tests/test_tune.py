"""Tuning: two trials end to end (each an MLflow run, best params reusable by `train`), pruning
by the per-step callback, and two processes sharing one PostgreSQL-backed study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from features.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate

    root = tmp_path_factory.mktemp("shop")
    generate(root, customers=200, items=100, days=60, seed=1)
    w = Workspace.at(root)
    build_features(w, FeatureConfig())
    return w


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)


def test_two_trials_end_to_end_and_train_reuses_best_params(ws: Workspace) -> None:
    import optuna
    from mlflow import MlflowClient

    from training.train import TrainConfig, train
    from training.tune import TuneConfig, best_params, search_space, tune

    result = tune(ws, TuneConfig(model="itemknn", trials=2, seed=3))
    assert result.n_trials == 2 and result.n_complete == 2
    assert result.storage == ws.optuna_uri and (ws.root / "optuna.db").exists()
    searched = {p.name for p in search_space("itemknn")}
    assert set(result.best_params) == searched  # every dimension of the space, nothing else

    study = optuna.load_study(study_name="shoprec-itemknn-loo", storage=ws.optuna_uri)
    assert study.user_attrs["model"] == "itemknn"
    assert study.user_attrs["best_params"] == result.best_params
    best = max(study.trials, key=lambda t: t.value)
    assert result.best_value == pytest.approx(best.value)

    # every trial is an MLflow run carrying its params and its validation score
    client = MlflowClient(tracking_uri=ws.mlflow_uri)
    exp = client.get_experiment_by_name("shoprec-tune")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    by_trial = {r.data.tags["trial"]: r for r in runs}
    for t in study.trials:
        run = by_trial[str(t.number)]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.data.params["neighbours"] == str(t.params["neighbours"])
        assert run.data.metrics["valid/ndcg_at_10"] == pytest.approx(t.value)
        assert run.data.tags["study"] == "shoprec-itemknn-loo"

    model, params = best_params(ws, "shoprec-itemknn-loo")
    assert model == "itemknn" and params == result.best_params
    trained = train(ws, TrainConfig(model=model, params=params, register=False, plots=False))
    logged = client.get_run(trained.run_id).data.params
    assert logged["neighbours"] == str(params["neighbours"]) and logged["similarity"] == params["similarity"]

    with pytest.raises(ValueError, match="tunes 'itemknn'"):
        tune(ws, TuneConfig(model="popular", trials=1, study="shoprec-itemknn-loo"))
    with pytest.raises(LookupError, match="no study"):
        best_params(ws, "never-ran")


def test_pruning_callback_stops_a_trial_below_the_median() -> None:
    """The callback a model's fit calls per step reports to Optuna; a trial trailing the median of
    finished trials at the same step is pruned (raises TrialPruned out of fit)."""
    import optuna

    from training.tune import _pruning_callback

    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    )
    for _ in range(2):  # two finished trials at 0.5 on every step
        t = study.ask()
        cb = _pruning_callback(t, model=None, split=None, tc=None, metric="ndcg@10", eval_every=1)
        for step in range(4):
            cb(step, {"ndcg@10": 0.5})
        study.tell(t, 0.5)
    good = study.ask()
    cb = _pruning_callback(good, None, None, None, "ndcg@10", 1)
    for step in range(4):
        cb(step, {"valid": 0.6})  # SASRec reports its validation score as "valid"
    study.tell(good, 0.6)
    bad = study.ask()
    cb = _pruning_callback(bad, None, None, None, "ndcg@10", 1)
    cb(0, {"ndcg@10": 0.1})  # step 0 is warm-up: never pruned
    with pytest.raises(optuna.TrialPruned):
        cb(1, {"ndcg@10": 0.1})


@pytest.mark.services
@pytest.mark.slow
def test_two_processes_share_one_postgres_study(ws: Workspace, tmp_path: Path) -> None:
    try:
        import psycopg2

        conn = psycopg2.connect(connect_timeout=3, dbname="postgres", **PG)
    except Exception as e:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unreachable ({type(e).__name__}: {e})")
    import optuna

    name = f"shoprec_tune_{uuid.uuid4().hex[:10]}"
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    try:
        procs = []
        for i in range(2):
            # each worker its own MLflow store (SQLite allows one writer); the study is shared
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow{i}.db",
            }
            cmd = [
                sys.executable,
                "-m",
                "serving.cli",
                "tune",
                "--data",
                str(ws.root),
                "--model",
                "popular",
                "--trials",
                "2",
                "--storage",
                url,
                "--study",
                "shared",
            ]
            procs.append(
                subprocess.Popen(
                    cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-2000:]
            line = json.loads(out.strip().splitlines()[-1])
            assert line["study"] == "shared" and "postgresql" in line["storage"]
        study = optuna.load_study(study_name="shared", storage=url)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == 4
        workers = {t.user_attrs["worker"] for t in done}
        assert len(workers) == 2  # both processes contributed trials to the one study
        assert {t.user_attrs["worker"].split(":")[1] for t in done} == {str(p.pid) for p in procs}
        del study
    finally:
        cur = conn.cursor()
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()


def test_stage_configs_reject_unknown_keys_by_name() -> None:
    """TrainConfig, TuneConfig and PromoteConfig share one strict from_dict: a typo in a config
    file is an error naming the config and the known keys, never a silently ignored setting."""
    from training.promote import PromoteConfig
    from training.train import TrainConfig
    from training.tune import TuneConfig

    assert TuneConfig.from_dict({"model": "als", "trials": 2}) == TuneConfig(model="als", trials=2)
    assert PromoteConfig.from_dict({"min_delta": 0.01}).min_delta == 0.01
    for klass, values in (
        (TrainConfig, {"model": "als"}),
        (TuneConfig, {"model": "als"}),
        (PromoteConfig, {}),
    ):
        with pytest.raises(
            ValueError, match=rf"unknown config key\(s\) for {klass.__name__}: trails; known: .*split"
        ):
            klass.from_dict({**values, "trails": 3})
