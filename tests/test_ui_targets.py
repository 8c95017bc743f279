"""`make mlflow-ui` and `make optuna-dashboard` serve a workspace's stores on localhost: the real
targets, started as a person starts them, answering over HTTP with the run's model card and plots
and the study's trials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.server]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, wait_s: float = 0.0) -> bytes:
    """GET `url`; with `wait_s`, retry until the server answers or the time is up."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from features.workspace import Workspace
    from training.train import TrainConfig, train
    from training.tune import TuneConfig, tune

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    ws = Workspace.at(tmp_path_factory.mktemp("ui") / "shop")
    generate(ws.root, customers=150, items=80, days=60, seed=2, progress=False)
    build_features(ws, FeatureConfig())
    result = train(ws, TrainConfig(model="ease", params={"lambda_": "50"}))
    tune(ws, TuneConfig(model="popular", trials=2, seed=0))
    return {"ws": ws, "run_id": result.run_id, "card": result.card}


def start(target: str, **variables: str) -> subprocess.Popen:
    args = ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def test_mlflow_ui_and_optuna_dashboard_serve_the_workspace(workspace: dict) -> None:
    ws, run_id = workspace["ws"], workspace["run_id"]
    mlflow_port, optuna_port = free_port(), free_port()
    ui = start("mlflow-ui", DATA=str(ws.root), MLFLOW_PORT=str(mlflow_port))
    dash = start("optuna-dashboard", DATA=str(ws.root), OPTUNA_PORT=str(optuna_port))
    try:
        base = f"http://127.0.0.1:{mlflow_port}"
        # the run's description is its model card, and its artifacts are served
        run = json.loads(get(f"{base}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}", wait_s=300))
        tags = {t["key"]: t["value"] for t in run["run"]["data"]["tags"]}
        assert tags["mlflow.note.content"] == workspace["card"]
        card = get(f"{base}/get-artifact?path=model_card.md&run_uuid={run_id}").decode()
        assert card == workspace["card"]
        png = get(f"{base}/get-artifact?path=plots/segments.png&run_uuid={run_id}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"

        studies = json.loads(get(f"http://127.0.0.1:{optuna_port}/api/studies", wait_s=300))
        names = [s["study_name"] for s in studies["study_summaries"]]
        assert names == ["shoprec-popular-loo"]
    finally:
        stop(ui)
        stop(dash)


def test_the_targets_say_what_to_run_first(tmp_path: Path) -> None:
    for target, hint in (("mlflow-ui", "make train"), ("optuna-dashboard", "make tune")):
        out = subprocess.run(
            ["make", "--no-print-directory", target, f"DATA={tmp_path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode != 0 and hint in out.stdout + out.stderr
