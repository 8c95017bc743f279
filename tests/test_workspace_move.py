"""A workspace is self-contained: copied or moved to another directory, it trains, promotes and
serves from its own files. Regression test for MLflow's SQLite store recording absolute artifact
locations: a copy wrote its new runs' artifacts into the original directory and, once the original
was gone, could not load the versions trained before the copy."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from features.workspace import Workspace


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _locations(ws: Workspace) -> list[str]:
    con = sqlite3.connect(ws.mlflow_db)
    try:
        exps = [r[0] for r in con.execute("SELECT artifact_location FROM experiments")]
        runs = [r[0] for r in con.execute("SELECT artifact_uri FROM runs")]
    finally:
        con.close()
    return exps + runs


def test_a_copied_then_moved_workspace_trains_promotes_and_serves_from_its_own_files(tmp_path: Path) -> None:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from serving.loader import ServeConfig, make_source
    from training import tracking
    from training.base import Recommender
    from training.promote import promote
    from training.train import TrainConfig, train

    original = tmp_path / "shop"
    generate(original, customers=150, items=80, days=45, seed=3, progress=False)
    ws_a = Workspace.at(original)
    build_features(ws_a, FeatureConfig())
    first = train(ws_a, TrainConfig(model="itemknn", params={"neighbours": "10"}, plots=False))
    promote(ws_a)

    copy = tmp_path / "elsewhere" / "shop-copy"
    shutil.copytree(original, copy)
    ws_b = Workspace.at(copy)
    before = _files(original)

    # Trained in the copy while the original still exists: nothing lands in the original.
    second = train(ws_b, TrainConfig(model="popular", plots=False))
    assert _files(original) == before
    assert all(loc.startswith(ws_b.mlflow_artifacts.as_uri() + "/") for loc in _locations(ws_b))
    assert (
        ws_b.mlflow_artifacts / "shoprec" / second.run_id / "artifacts" / "bundle" / "bundle.json"
    ).exists()

    # The original goes away: the copy still promotes, loads every version and serves.
    moved = tmp_path / "shop.gone"
    original.rename(moved)
    decision = promote(ws_b)
    assert decision.champion in {first.version, second.version}
    for version in (first.version, second.version):
        where = tmp_path / "downloads" / str(version)
        where.mkdir(parents=True)
        bundle = tracking.load_bundle_dir(f"models:/{tracking.REGISTERED_MODEL}/{version}", ws_b, dst=where)
        assert Recommender.load(bundle / "model").n_items > 0
    source = make_source(ServeConfig(data=copy))
    champion = source.version("champion")
    assert champion == decision.champion
    served = source.fetch(champion)
    try:
        assert (served / "bundle.json").exists()
    finally:
        source.release(champion)
    assert not original.exists()  # nothing was written to the old place
    assert _files(moved) == before  # nor to the moved-away original


def test_relocate_is_a_no_op_for_a_workspace_in_place_and_for_a_copy_without_artifacts(
    tmp_path: Path,
) -> None:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from training import tracking
    from training.train import TrainConfig, train

    root = tmp_path / "shop"
    generate(root, customers=60, items=40, days=30, seed=4, progress=False)
    ws = Workspace.at(root)
    build_features(ws, FeatureConfig())
    train(ws, TrainConfig(model="popular", plots=False))
    runs_before = [loc for loc in _locations(ws) if "/shoprec/" in loc]
    # In place only MLflow's `Default` experiment (made under the cwd's ./mlruns) moves in, once.
    assert tracking.relocate_store(ws) in ({}, {"experiments": 1})
    assert tracking.relocate_store(ws) == {}
    assert [loc for loc in _locations(ws) if "/shoprec/" in loc] == runs_before
    assert all(loc.startswith(ws.mlflow_artifacts.as_uri() + "/") for loc in _locations(ws))

    bare = tmp_path / "db-only"
    bare.mkdir()
    shutil.copy(ws.mlflow_db, bare / "mlflow.db")
    ws_bare = Workspace.at(bare)
    assert tracking.relocate_store(ws_bare) == {}  # no mlartifacts/ copied: left pointing at the original
    assert all(
        loc.startswith(ws.mlflow_artifacts.as_uri()) for loc in _locations(ws_bare) if "mlartifacts" in loc
    )


def test_a_store_whose_first_run_stopped_before_any_artifact_moves_in_without_a_false_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first `shoprec train` that failed in the fit leaves a store with only MLflow's Default
    experiment (under the cwd's ./mlruns) and no mlartifacts/: the next run moves it in quietly
    instead of asking whether the workspace was copied without its artifacts."""
    from mlflow import MlflowClient

    from training import tracking

    ws = Workspace.at(tmp_path / "shop")
    ws.root.mkdir(parents=True)
    MlflowClient(tracking_uri=ws.mlflow_uri).search_experiments()  # MLflow creates Default only
    assert not ws.mlflow_artifacts.exists()
    assert not any(loc.startswith(ws.mlflow_artifacts.as_uri()) for loc in _locations(ws))
    with caplog.at_level("WARNING", logger="training.tracking"):
        assert tracking.relocate_store(ws) == {"experiments": 1}
    assert not [r for r in caplog.records if "does not exist" in r.getMessage()]
    assert all(loc.startswith(ws.mlflow_artifacts.as_uri()) for loc in _locations(ws))
    assert tracking.relocate_store(ws) == {}
