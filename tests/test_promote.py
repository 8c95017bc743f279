"""Promotion: `champion` moves only to a version that beats it on the same evaluation; a worse
version never takes it; `challenger` is the runner-up; stale numbers are re-evaluated."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from features.workspace import Workspace  # noqa: E402


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate

    root = tmp_path_factory.mktemp("shop")
    generate(root, customers=200, items=100, days=60, seed=1)
    w = Workspace.at(root)
    build_features(w, FeatureConfig())
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return w


def _alias(ws: Workspace, alias: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(
            MlflowClient(tracking_uri=ws.mlflow_uri).get_model_version_by_alias("shoprec", alias).version
        )
    except MlflowException:
        return None


def test_promotion_takes_better_refuses_worse_and_reevaluates_stale(ws: Workspace) -> None:
    from mlflow import MlflowClient

    from training.promote import PromotionError, promote
    from training.train import TrainConfig, train

    with pytest.raises(PromotionError, match="shoprec train"):
        promote(ws)  # nothing registered yet: a clear error, not a silent no-op

    cfg = {"register": True, "plots": False}
    pop = train(ws, TrainConfig(model="popular", **cfg))
    first = promote(ws)
    assert first.promoted and first.champion == pop.version and first.previous_champion is None

    als = train(ws, TrainConfig(model="als", params={"factors": "16", "iterations": "8"}, **cfg))
    knn = train(ws, TrainConfig(model="itemknn", params={"neighbours": "5"}, **cfg))
    # The known answer on this shop: ALS clearly beats popularity, which beats a 5-neighbour kNN.
    s_pop, s_als, s_knn = (r.metrics["ndcg@10"] for r in (pop, als, knn))
    assert s_als > s_pop > s_knn

    better = promote(ws)
    assert better.promoted and better.champion == als.version and better.previous_champion == pop.version
    assert better.candidate_score == pytest.approx(s_als) and better.champion_score == pytest.approx(s_pop)
    assert better.challenger == pop.version  # runner-up, for serving's A/B test
    assert _alias(ws, "champion") == als.version and _alias(ws, "challenger") == pop.version

    # A worse model trained later never takes the alias, whatever its recency.
    worse = train(ws, TrainConfig(model="itemknn", params={"neighbours": "3"}, **cfg))
    assert worse.metrics["ndcg@10"] < s_als
    kept = promote(ws)
    assert not kept.promoted and kept.champion == als.version and _alias(ws, "champion") == als.version
    assert "does not beat" in kept.reason or "still the best" in kept.reason

    # Numbers from another data snapshot are not trusted: the champion is refitted with its own
    # config on the current split and scored again (ALS is seeded, so the score comes back).
    client = MlflowClient(tracking_uri=ws.mlflow_uri)
    client.set_tag(als.run_id, "data_hash", "an-older-snapshot")
    stale = promote(ws)
    assert stale.reevaluated == [als.version]
    assert stale.champion == als.version and not stale.promoted
    assert stale.champion_score == pytest.approx(s_als, abs=0.02)
    assert stale.candidate == pop.version  # the best version scored on this snapshot competes

    # The decision is logged as a run with both scores.
    exp = client.get_experiment_by_name("shoprec-promote")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    last = runs[0]
    assert last.data.tags["decision"] == "kept" and last.data.tags["champion"] == als.version
    assert last.data.metrics["champion_score"] == pytest.approx(stale.champion_score)
    assert last.data.metrics["candidate_score"] == pytest.approx(s_pop)


def test_promote_cli_prints_decision_json_last(ws: Workspace, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from serving.cli import app

    # runs after the test above on the same workspace: a champion exists
    res = CliRunner().invoke(app, ["promote", "--data", str(ws.root)])
    assert res.exit_code == 0, res.output
    decision = json.loads(res.stdout.strip().splitlines()[-1])
    assert decision["metric"] == "ndcg@10" and decision["champion"] is not None
    assert set(decision) >= {"promoted", "candidate_score", "champion_score", "challenger", "reason"}

    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["promote", "--data", str(empty)])
    assert res.exit_code == 2 and "features build" in res.output
