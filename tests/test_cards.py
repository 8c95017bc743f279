"""MLflow as a person uses it: every run has a model card as its description (the
`mlflow.note.content` tag) and as `model_card.md`, plots per run (Recall@K, per-segment bars,
SASRec's learning curve with per-epoch metrics), and no customer id anywhere in params, tags,
cards or logs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

from features.workspace import Workspace  # noqa: E402

TINY_SASREC = {"dim": "16", "n_layers": "1", "n_heads": "1", "max_len": "20", "epochs": "4", "patience": "0",
               "threads": "1", "device": "cpu", "progress": "false"}  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate

    root = tmp_path_factory.mktemp("cards") / "shop"
    generate(root, customers=200, items=100, days=60, seed=1, progress=False)
    ws = Workspace.at(root)
    build_features(ws, FeatureConfig())
    return ws


@pytest.fixture(autouse=True)
def _own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")


def _client(ws: Workspace):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=ws.mlflow_uri)


def test_a_training_run_has_a_model_card_and_plots(ws: Workspace) -> None:
    from training.promote import promote
    from training.train import TrainConfig, train

    first = train(ws, TrainConfig(model="popular"))
    promote(ws)
    second = train(ws, TrainConfig(model="itemknn", params={"neighbours": "20"}))
    client = _client(ws)
    run = client.get_run(second.run_id)
    note = run.data.tags["mlflow.note.content"]
    artifact = Path(client.download_artifacts(second.run_id, "model_card.md")).read_text()
    assert note == artifact == second.card
    assert note.startswith(f"# itemknn · registered version {second.version}")
    m = second.metrics
    # data, split, metrics per segment, config and what it was compared with
    assert f"{int(m['n_users/new'])} | {m['ndcg@10/new']:.4f} |" in note  # the cold-start row
    assert f"| 10 | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} |" in note
    assert "`loo`: leave-last-out" in note and run.data.tags["data_hash"] in note
    assert "| neighbours | `20` |" in note
    champ = first.metrics["ndcg@10"]
    verb = "beats" if m["ndcg@10"] > champ else "does not beat"
    assert f"{verb} champion v{first.version} (popular) on ndcg@10" in note
    assert f"| v{first.version} | popular | champion | {champ:.4f} |" in note
    arts = {a.path for a in client.list_artifacts(second.run_id, "plots")}
    assert arts == {"plots/recall_at_k.png", "plots/segments.png", "plots/popularity.png"}

    # the promotion is a run with its own card: the decision and the versions it weighed
    decision = promote(ws)
    exp = client.get_experiment_by_name("shoprec-promote")
    last = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    card = last.data.tags["mlflow.note.content"]
    assert decision.reason in card and f"| v{second.version} | itemknn |" in card


def test_sasrec_logs_its_learning_curve(ws: Workspace) -> None:
    from training.train import TrainConfig, train

    result = train(ws, TrainConfig(model="sasrec", params=TINY_SASREC, register=False, refit=False))
    client = _client(ws)
    arts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert "plots/learning_curve.png" in arts
    valid = sorted(client.get_metric_history(result.run_id, "valid_ndcg_at_10"), key=lambda x: x.step)
    loss = client.get_metric_history(result.run_id, "train_loss")
    assert [v.step for v in valid] == list(range(4)) and len(loss) == 4  # one point per epoch
    best = max(range(4), key=lambda i: valid[i].value)
    assert client.get_run(result.run_id).data.metrics["chosen_epochs"] == best + 1
    assert "early stopping on validation NDCG@10 kept epoch" in result.card


def test_no_customer_id_in_params_tags_cards_or_logs(ws: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from training.promote import promote
    from training.train import TrainConfig, train
    from training.tune import TuneConfig, tune

    caplog.set_level(logging.DEBUG)
    train(ws, TrainConfig(model="ease", params={"lambda_": "50"}))
    tune(ws, TuneConfig(model="popular", trials=1, seed=0))
    promote(ws)
    client = _client(ws)
    ids = set(pd.read_parquet(ws.feature("users"))["user_id"].astype(str))
    texts = [caplog.text]
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            d = run.data
            texts += [*d.params, *d.params.values(), *d.tags, *d.tags.values()]
            for name in ("model_card.md", "decision.json"):
                if any(a.path == name for a in client.list_artifacts(run.info.run_id)):
                    texts.append(Path(client.download_artifacts(run.info.run_id, name)).read_text())
    text = "\n".join(texts)
    assert "mlflow.note.content" in text  # the cards were read
    assert not [u for u in ids if u in text]


def test_verdicts_say_how_a_run_stands_against_the_champion() -> None:
    from training.card import Comparison, Rival

    champ = Rival("3", "ease", 0.2, "champion")
    c = Comparison("ndcg@10", champ, (Rival("2", "als", 0.15),))
    assert c.verdict(0.25).startswith("beats champion v3 (ease) on ndcg@10: 0.2500 > 0.2000")
    assert c.verdict(0.2).startswith("does not beat champion v3 (ease)")  # a tie keeps the champion
    stale = Comparison("ndcg@10", Rival("3", "ease", None, "champion"))
    assert "another data snapshot" in stale.verdict(0.9)
    assert "the best so far" in Comparison("ndcg@10", None, (Rival("2", "als", 0.15),)).verdict(0.3)
    assert "behind v2 (als)" in Comparison("ndcg@10", None, (Rival("2", "als", 0.15),)).verdict(0.1)
    assert Comparison("ndcg@10").verdict(None).startswith("not evaluated")


def test_a_long_card_is_cut_in_the_tag_and_whole_in_the_artifact(tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from training import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("cards", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    card = "# long\n" + "| row | 0.1234 |\n" * 1000
    mlflow.set_tracking_uri(uri)
    tracking.log_card(client, run.info.run_id, card)
    note = client.get_run(run.info.run_id).data.tags["mlflow.note.content"]
    assert len(note) <= 8000
    assert "the whole card is the run's `model_card.md` artifact" in note
    assert Path(client.download_artifacts(run.info.run_id, "model_card.md")).read_text() == card


def test_plots_never_switch_the_matplotlib_backend(tmp_path: Path) -> None:
    """A run trained inside a notebook must leave its inline backend alone (the plots build
    Figures directly; pyplot is never touched)."""
    import matplotlib

    from training import plots

    before = matplotlib.get_backend()
    metrics = {"recall@5": 0.2, "recall@10": 0.3, "ndcg@10": 0.25, "ndcg@10/new": 0.1, "n_users/new": 4.0,
               "ndcg@10/segment_vip": 0.4, "n_users/segment_vip": 2.0}  # fmt: skip
    assert plots.recall_curve(metrics, tmp_path / "r.png") is not None
    assert plots.segment_bars(metrics, tmp_path / "s.png") is not None
    history = [
        {"epoch": 0.0, "train_loss": 2.0, "valid": 0.1},
        {"epoch": 1.0, "train_loss": 1.5, "valid": 0.2},
    ]
    assert plots.learning_curve(history, tmp_path / "l.png") is not None
    assert plots.learning_curve([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("r.png", "s.png", "l.png"))
    assert matplotlib.get_backend() == before
    assert plots.segment_metrics(metrics) == {"new": (0.1, 4), "segment_vip": (0.4, 2)}
    assert json.dumps(plots.at_k_curves(metrics)) == json.dumps(
        {"ndcg": [[10, 0.25]], "recall": [[5, 0.2], [10, 0.3]]}
    )
