"""`shoprec recommend` and the training CLI: batch recommendations with the champion, unknown and
non-consenting customers get popular items, exclusions are honoured, CSV and Parquet agree."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from features.workspace import Workspace  # noqa: E402


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Tiny shop; one itemknn version trained and promoted through the CLI."""
    from typer.testing import CliRunner

    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from serving.cli import app

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("shop")
    generate(root, customers=200, items=100, days=60, seed=1)
    w = Workspace.at(root)
    build_features(w, FeatureConfig())
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(root), "--model", "itemknn", "--set", "neighbours=30"])
    assert res.exit_code == 0, res.output
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(line) == {"run_id", "model", "version", "metrics"} and line["model"] == "itemknn"
    res = runner.invoke(app, ["promote", "--data", str(root)])
    assert res.exit_code == 0, res.output
    return w


@pytest.fixture(scope="module")
def people(ws: Workspace) -> dict[str, list[str]]:
    """Known customers with and without consent, with a history."""
    prof = pd.read_parquet(ws.feature("profiles"))
    consent = prof["consent_personalisation"].astype("boolean")
    return {
        "consent": prof.loc[consent.fillna(True), "user_id"].astype(str).head(5).tolist(),
        "refused": prof.loc[consent.eq(False).fillna(False), "user_id"].astype(str).head(2).tolist(),
    }


def _run(ws: Workspace, users: Path, out: Path, *extra: str):
    from typer.testing import CliRunner

    from serving.cli import app

    return CliRunner().invoke(
        app,
        ["recommend", "--data", str(ws.root), "--users", str(users), "--k", "5", "--out", str(out), *extra],
    )


def test_recommend_csv_and_parquet_with_fallbacks(ws: Workspace, people, tmp_path: Path) -> None:
    from training.recommend import REASON_PERSONAL, REASON_POPULAR, BundleContext
    from training.tracking import load_bundle_dir

    assert people["refused"], "the synthetic shop should hold customers without consent"
    ids = people["consent"] + people["refused"] + ["never-seen-customer"]
    users = tmp_path / "users.csv"
    pd.DataFrame({"user_id": ids}).to_csv(users, index=False)

    res = _run(ws, users, tmp_path / "recs.csv", "--exclude-seen", "always")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["model"] == "itemknn" and summary["model_uri"] == "models:/shoprec@champion"
    recs = pd.read_csv(tmp_path / "recs.csv", dtype={"user_id": str, "item_id": str})
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score", "reason"]
    assert recs.groupby("user_id").size().to_dict() == {u: 5 for u in ids}
    assert (recs.groupby("user_id")["rank"].apply(list) == [[1, 2, 3, 4, 5]] * len(ids)).all()
    assert recs.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()

    ctx = BundleContext.load(load_bundle_dir("models:/shoprec@champion", ws))
    top_popular = [str(ctx.item_ids[i]) for i in ctx.popular[:5]]
    # unknown and non-consenting customers: exactly the popular list, marked as such
    for u in [*people["refused"], "never-seen-customer"]:
        rows = recs[recs["user_id"] == u]
        assert rows["item_id"].tolist() == top_popular
        assert set(rows["reason"]) == {REASON_POPULAR}
    # known customers: personal, never an item they interacted with (--exclude-seen always)
    index = dict(zip(ctx.model.users["user_id"].astype(str), ctx.model.users["user_idx"], strict=True))
    for u in people["consent"]:
        rows = recs[recs["user_id"] == u]
        assert REASON_PERSONAL in set(rows["reason"])
        seen = {str(ctx.item_ids[i]) for i in ctx.user_items[index[u]].indices}
        assert not seen & set(rows["item_id"])

    # the same users as Parquet, from a text file: the same rows
    txt = tmp_path / "users.txt"
    txt.write_text("\n".join(ids) + "\n")
    res = _run(ws, txt, tmp_path / "recs.parquet", "--exclude-seen", "always")
    assert res.exit_code == 0, res.output
    pq = pd.read_parquet(tmp_path / "recs.parquet")
    pd.testing.assert_frame_equal(
        pq[["user_id", "rank", "item_id", "reason"]].reset_index(drop=True),
        recs[["user_id", "rank", "item_id", "reason"]].reset_index(drop=True),
    )
    np.testing.assert_allclose(pq["score"].to_numpy(), recs["score"].to_numpy(), rtol=1e-5)


def test_exclude_seen_never_can_return_history_and_learned_follows_policy(ws: Workspace, people) -> None:
    from training.policy import RebuyPolicy
    from training.recommend import BundleContext, recommend_users
    from training.tracking import load_bundle_dir

    ctx = BundleContext.load(load_bundle_dir("models:/shoprec@champion", ws))
    users = people["consent"]
    never = recommend_users(ctx, users, 20, exclude_seen="never", progress=False)
    always = recommend_users(ctx, users, 20, exclude_seen="always", progress=False)
    index = dict(zip(ctx.model.users["user_id"].astype(str), ctx.model.users["user_idx"], strict=True))
    seen = {u: {str(ctx.item_ids[i]) for i in ctx.user_items[index[u]].indices} for u in users}
    # itemknn scores a customer's own items highly: without exclusion some come back
    assert any(seen[u] & set(never.loc[never.user_id == u, "item_id"]) for u in users)
    assert not any(seen[u] & set(always.loc[always.user_id == u, "item_id"]) for u in users)

    now = float(ctx.last_purchases["last_ts"].max()) if len(ctx.last_purchases) else 0.0
    learned = recommend_users(ctx, users, 20, exclude_seen="learned", now=now, progress=False)
    rows = np.array([index[u] for u in users])
    banned = RebuyPolicy.from_frame(ctx.category_rebuy).exclusions(
        rows, ctx.last_purchases, now, len(ctx.item_ids)
    )
    for r, u in enumerate(users):
        out = set(learned.loc[learned.user_id == u, "item_id"])
        assert not out & {str(ctx.item_ids[i]) for i in banned[r].indices}


def test_recommend_bad_input_is_a_clear_error(ws: Workspace, tmp_path: Path) -> None:
    users = tmp_path / "u.csv"
    pd.DataFrame({"a": ["x"], "b": ["y"]}).to_csv(users, index=False)
    res = _run(ws, users, tmp_path / "out.csv")
    assert res.exit_code == 2 and "user_id" in res.output
    pd.DataFrame({"user_id": ["x"]}).to_csv(users, index=False)
    res = _run(ws, users, tmp_path / "out.json")
    assert res.exit_code == 2 and ".csv or .parquet" in res.output
    res = _run(ws, users, tmp_path / "out.csv", "--model-uri", "models:/shoprec@nope")
    assert res.exit_code == 2 and "cannot fetch" in res.output


def test_train_cli_rejects_unknown_model_and_config_key(ws: Workspace) -> None:
    from typer.testing import CliRunner

    from serving.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(ws.root), "--model", "nosuch"])
    assert res.exit_code == 2 and "unknown model" in res.output
    res = runner.invoke(app, ["train", "--data", str(ws.root), "--model", "als", "--set", "factorz=3"])
    assert res.exit_code == 2 and "factorz" in res.output
    res = runner.invoke(app, ["train", "--data", str(ws.root), "--model", "als", "--set", "factors"])
    assert res.exit_code == 2 and "key=value" in res.output
