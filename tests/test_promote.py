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
    knn = train(ws, TrainConfig(model="itemknn", params={"neighbours": "1"}, **cfg))
    # The known answer on this shop (loo, re-buy rates learned from the training part): ALS clearly
    # beats popularity (0.152 vs 0.060), which beats a 1-neighbour kNN (0.056).
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
    # the best version scored on this snapshot competes (the 3-neighbour kNN, 0.065 > 0.060)
    best_fresh = max((pop, knn, worse), key=lambda r: r.metrics["ndcg@10"])
    assert stale.candidate == best_fresh.version == worse.version

    # The decision is logged as a run with both scores.
    exp = client.get_experiment_by_name("shoprec-promote")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    last = runs[0]
    assert last.data.tags["decision"] == "kept" and last.data.tags["champion"] == als.version
    assert last.data.metrics["champion_score"] == pytest.approx(stale.champion_score)
    assert last.data.metrics["candidate_score"] == pytest.approx(worse.metrics["ndcg@10"])


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


def test_preference_orders_score_then_simplicity_then_registration() -> None:
    from training.promote import Scored, preference

    def s(version: str, model: str, score: float | None) -> Scored:
        return Scored(version, model, "run", score, True)

    tied = [s("1", "sasrec", 0.3), s("2", "ease", 0.3), s("3", "popular", 0.3), s("4", "popular", 0.3)]
    assert max(tied, key=preference).version == "3"  # the simplest model, then the earlier version
    assert max([*tied, s("5", "sasrec", 0.31)], key=preference).version == "5"  # a better score wins
    assert max([s("6", "unknown-model", 0.3), s("7", "sasrec", 0.3)], key=preference).version == "7"
    assert max([s("8", "popular", None), s("9", "sasrec", 0.0)], key=preference).version == "9"


def test_a_tie_goes_to_the_simpler_model_and_never_dethrones_the_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (CDNOW): with equal scores the last-trained version (SASRec) became champion.
    Here ALS is registered after popularity and its logged score is set equal to popularity's:
    popularity must take the alias, and the tied ALS must not take it from popularity later."""
    from mlflow import MlflowClient

    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from training import tracking
    from training.promote import promote
    from training.train import TrainConfig, train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the workspace's own SQLite store
    generate(tmp_path, customers=120, items=60, days=40, seed=3)
    w = Workspace.at(tmp_path)
    build_features(w, FeatureConfig())
    cfg = {"register": True, "plots": False, "refit": False}
    pop = train(w, TrainConfig(model="popular", **cfg))
    als = train(w, TrainConfig(model="als", params={"factors": "8", "iterations": "3"}, **cfg))
    client = MlflowClient(tracking_uri=w.mlflow_uri)
    client.log_metric(als.run_id, tracking.to_mlflow_key("ndcg@10"), pop.metrics["ndcg@10"])

    first = promote(w)
    assert first.promoted and first.champion == pop.version, first.reason
    assert first.challenger == als.version

    again = promote(w)  # the tied, newer ALS does not beat the champion
    assert not again.promoted and again.champion == pop.version and _alias(w, "champion") == pop.version

    # a strictly better score does take it
    client.log_metric(als.run_id, tracking.to_mlflow_key("ndcg@10"), pop.metrics["ndcg@10"] + 0.01)
    better = promote(w)
    assert better.promoted and better.champion == als.version, better.reason


def test_a_version_over_the_serving_budget_takes_no_alias_and_a_slow_champion_gives_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`shoprec train` logs the bundled model's time to score one customer; promote holds the median
    to --max-score-ms. Here ALS (the better model) is made to look slow by its logged score_ms."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from serving.cli import app
    from training.promote import PromoteConfig, PromotionError, promote
    from training.train import TrainConfig, train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    generate(tmp_path, customers=120, items=60, days=40, seed=3)
    w = Workspace.at(tmp_path)
    build_features(w, FeatureConfig())
    cfg = {"register": True, "plots": False, "refit": False}
    pop = train(w, TrainConfig(model="popular", **cfg))
    als = train(w, TrainConfig(model="als", params={"factors": "8", "iterations": "3"}, **cfg))
    assert als.metrics["ndcg@10"] > pop.metrics["ndcg@10"]
    client = MlflowClient(tracking_uri=w.mlflow_uri)
    for r in (pop, als):  # measured and logged with the run
        assert 0 < r.latency["score_ms"] <= r.latency["score_ms_p99"]
        assert client.get_run(r.run_id).data.metrics["score_ms"] == pytest.approx(r.latency["score_ms"])
    assert "serving cost" in als.card and "latency" not in als.to_json()  # the card; the JSON line as before

    client.log_metric(als.run_id, "score_ms", 50.0)
    slow = promote(w)  # the default budget, 10 ms
    assert slow.champion == pop.version and slow.over_budget == {als.version: 50.0}
    assert slow.challenger is None and _alias(w, "challenger") is None  # not even the runner-up
    assert {r.version: r.role for r in slow.board}[als.version] == "over budget"

    free = promote(w, PromoteConfig(max_score_ms=None))  # no budget: the better model wins
    assert free.promoted and free.champion == als.version

    gives_way = promote(w, PromoteConfig(max_score_ms=20.0))  # the champion is over this budget
    assert gives_way.promoted and gives_way.champion == pop.version and _alias(w, "champion") == pop.version
    assert "over the 20 ms budget" in gives_way.reason

    client.log_metric(pop.run_id, "score_ms", 30.0)
    with pytest.raises(PromotionError, match="max-score-ms"):
        promote(w, PromoteConfig(max_score_ms=20.0))
    with pytest.raises(ValueError, match="max_score_ms"):
        PromoteConfig(max_score_ms=0.0)

    res = CliRunner().invoke(app, ["promote", "--data", str(w.root), "--max-score-ms", "0"])  # 0: no budget
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["champion"] == als.version
    res = CliRunner().invoke(app, ["promote", "--data", str(w.root)])
    assert res.exit_code == 2 and "max-score-ms" in res.output


def test_score_latency_times_one_customer_a_call() -> None:
    import time

    import numpy as np

    from training.base import History, ModelConfig, Recommender, TrainData
    from training.evaluate import score_latency

    calls: list[int] = []

    class Slow(Recommender):
        name = "slow"
        Config = ModelConfig

        def _fit(self, data: TrainData, *, callback: object = None) -> None:
            pass

        def score(self, users: np.ndarray, history: History) -> np.ndarray:
            calls.append(len(users))
            time.sleep(0.003)
            return np.zeros((len(users), self.n_items), np.float32)

    import pandas as pd
    import scipy.sparse as sp

    def data_of(ui: sp.csr_matrix) -> TrainData:
        users = pd.DataFrame(
            {"user_idx": range(ui.shape[0]), "user_id": [f"u{i}" for i in range(ui.shape[0])]}
        )
        items = pd.DataFrame(
            {"item_idx": range(ui.shape[1]), "item_id": [f"i{i}" for i in range(ui.shape[1])]}
        )
        return TrainData(ui, users, items)

    data = data_of(sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0], [0, 1, 1]], np.float32)))
    model = Slow(ModelConfig()).fit(data)
    out = score_latency(model, data, requests=20, warmup=3)
    assert calls == [1] * 23  # one customer a call, the warm-up calls untimed
    assert out["score_ms"] >= 3.0 and out["score_ms_p99"] >= out["score_ms"]
    assert (
        score_latency(
            model,
            TrainData(
                sp.csr_matrix((2, 3), dtype=np.float32), np.array(["a", "b"]), np.array(["x", "y", "z"])
            ),
        )
        == {}
    )
