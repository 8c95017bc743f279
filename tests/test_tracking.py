"""MLflow tracking: what a training run carries, the serving bundle, loading by alias in a fresh
process, and the same against a real `mlflow server` on PostgreSQL (skipped when unreachable)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from features.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def build_workspace(root: Path) -> Workspace:
    """The tiny synthetic shop with features built (200 customers, 100 items, 60 days)."""
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate

    generate(root, customers=200, items=100, days=60, seed=1)
    ws = Workspace.at(root)
    build_features(ws, FeatureConfig())
    return ws


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("shop"))


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _top(model, ws: Workspace, n_users: int = 20, k: int = 10) -> np.ndarray:
    from training.base import History
    from training.data import load_train_data

    data = load_train_data(ws)
    users = np.arange(min(n_users, data.n_users))
    ids, _ = model.recommend(users, History.of(data, users), k, exclude=data.user_items[users])
    return ids


@pytest.fixture(scope="module")
def trained(ws: Workspace):
    """One itemknn training (deterministic: no random initialisation) registered and promoted."""
    from training.promote import promote
    from training.train import TrainConfig, train

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    result = train(ws, TrainConfig(model="itemknn", params={"neighbours": "20"}))
    promote(ws)
    return result


def test_train_logs_params_tags_metrics_and_bundle(ws: Workspace, trained) -> None:
    from mlflow import MlflowClient

    from training import tracking

    client = MlflowClient(tracking_uri=ws.mlflow_uri)
    run = client.get_run(trained.run_id)
    # params are the model's config, typed values as strings; the --set override is in them
    assert run.data.params["neighbours"] == "20"
    assert run.data.params["similarity"] == "cosine"
    tags = run.data.tags
    assert tags["model"] == "itemknn" and tags["split"] == "loo" and tags["task"] == "recommend"
    assert tags["data_hash"] == tracking.data_hash(ws)
    assert tags["code_version"] != ""
    # metrics: shoprec's `ndcg@10` stored as `ndcg_at_10`, the same number the JSON line reports
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(trained.metrics["ndcg@10"])
    assert 0.0 < trained.metrics["recall@50"] <= 1.0
    assert trained.version == "1"

    bundle = tracking.load_bundle_dir(f"runs:/{trained.run_id}/bundle", ws)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"] == "itemknn" and meta["data_hash"] == tags["data_hash"]
    assert meta["metrics"]["ndcg@10"] == pytest.approx(trained.metrics["ndcg@10"])
    assert json.loads((bundle / "model" / "config.json").read_text())["model"] == "itemknn"
    assert json.loads((bundle / "complements" / "config.json").read_text())["model"] == "bought-together"
    # Only what was learned: the model fitted on all data (every user of the features, not the
    # split's training part), the re-buy policy and the event weights; never the shop's tables.
    model_users = pd.read_parquet(bundle / "model" / "users.parquet")
    assert len(model_users) == len(pd.read_parquet(ws.feature("users")))
    assert (bundle / "policy" / "policy.json").exists()
    assert meta["event_weights"] == json.loads((ws.features_dir / "interactions.json").read_text())["weights"]
    assert not (bundle / "context").exists(), "shop state (stock, customers, histories) is live, not bundled"
    arts = {a.path for a in client.list_artifacts(trained.run_id, "plots")}
    assert arts == {"plots/recall_at_k.png", "plots/popularity.png", "plots/segments.png"}


def test_no_customer_id_in_params_tags_or_logs(ws: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from mlflow import MlflowClient

    from training.train import TrainConfig, train

    caplog.set_level(logging.DEBUG)
    result = train(ws, TrainConfig(model="popular", register=False, plots=False))
    run = MlflowClient(tracking_uri=ws.mlflow_uri).get_run(result.run_id)
    ids = set(pd.read_parquet(ws.feature("users"))["user_id"].astype(str))
    text = " ".join([*run.data.params, *run.data.params.values(), *run.data.tags, *run.data.tags.values()])
    assert not [u for u in ids if u in text]
    assert not [u for u in ids if u in caplog.text]
    assert result.version is None  # register=False registers nothing


def test_model_loads_by_alias_in_fresh_process_with_same_ranking(ws: Workspace, trained) -> None:
    from training.data import load_train_data
    from training.train import build_model

    script = (
        "import json, sys, numpy as np\n"
        "from features.workspace import Workspace\n"
        "from training.tracking import load_model\n"
        "from training.base import History\n"
        "from training.data import load_train_data\n"
        "ws = Workspace.at(sys.argv[1])\n"
        "m = load_model('models:/shoprec@champion', ws)\n"
        "d = load_train_data(ws); u = np.arange(20)\n"
        "ids, _ = m.recommend(u, History.of(d, u), 10, exclude=d.user_items[u])\n"
        "print(json.dumps({'model': m.name, 'ids': ids.tolist()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(
        [sys.executable, "-c", script, str(ws.root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["model"] == "itemknn"
    # the registered model is the refit on all data with the logged config: refit it here and compare
    expected = build_model("itemknn", {"neighbours": 20}).fit(load_train_data(ws))
    np.testing.assert_array_equal(np.array(got["ids"]), _top(expected, ws))


# -- a real `mlflow server` on PostgreSQL --------------------------------------------------------


def _pg_reachable() -> str | None:
    try:
        import psycopg2

        psycopg2.connect(connect_timeout=3, dbname="postgres", **PG).close()
    except Exception as e:  # any failure means: no PostgreSQL to test against here
        return f"PostgreSQL at 127.0.0.1:5432 unreachable ({type(e).__name__}: {e})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg_database():
    """A throwaway PostgreSQL database (dropped afterwards); yields its SQLAlchemy URL."""
    reason = _pg_reachable()
    if reason:
        pytest.skip(reason)
    import psycopg2

    name = f"shoprec_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        cur = conn.cursor()
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()


@pytest.fixture(scope="module")
def mlflow_server(pg_database: str, tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` with the PostgreSQL backend and a local artifact store; always stopped."""
    import httpx

    port = _free_port()
    arts = tmp_path_factory.mktemp("mlflow-artifacts")
    log = (tmp_path_factory.mktemp("mlflow-log") / "server.log").open("w")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            pg_database,
            "--artifacts-destination",
            str(arts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"mlflow server not healthy after 120 s: {Path(log.name).read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.mark.services
@pytest.mark.slow
def test_train_against_mlflow_server_on_postgres_and_load_by_alias(
    ws: Workspace, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from training.promote import promote
    from training.tracking import load_bundle_dir
    from training.train import TrainConfig, train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    result = train(ws, TrainConfig(model="popular", plots=False))
    assert result.version == "1"  # a fresh registry on the server, not the workspace's SQLite one
    decision = promote(ws)
    assert decision.promoted and decision.champion == "1"
    bundle = load_bundle_dir("models:/shoprec@champion")  # no workspace: the server alone
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"] == "popular"
    assert meta["metrics"]["ndcg@10"] == pytest.approx(result.metrics["ndcg@10"])
    client = MlflowClient(tracking_uri=mlflow_server)
    assert client.get_model_version_by_alias("shoprec", "champion").run_id == result.run_id
    assert not ws.root.joinpath("mlartifacts", "shoprec", result.run_id).exists()  # artifacts on the server
