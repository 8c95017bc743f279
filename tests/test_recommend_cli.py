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


def _engine(ws: Workspace):
    """The champion's engine over the workspace's shop state, as the service builds it."""
    from serving.loader import ServeConfig, default_engine_factory, make_source
    from serving.state import ShopState
    from serving.store import InMemoryStore

    source = make_source(ServeConfig(data=ws.root, poll_seconds=0))
    version = source.version("champion")
    return default_engine_factory(ShopState.from_workspace(ws), InMemoryStore())(
        source.fetch(version), version
    )


def test_recommend_csv_and_parquet_with_fallbacks(ws: Workspace, people, tmp_path: Path) -> None:
    from serving.feed import feed_context

    assert people["refused"], "the synthetic shop should hold customers without consent"
    ids = people["consent"] + people["refused"] + ["never-seen-customer"]
    users = tmp_path / "users.csv"
    pd.DataFrame({"user_id": ids}).to_csv(users, index=False)

    res = _run(ws, users, tmp_path / "recs.csv", "--exclude-seen", "always")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["model"] == "itemknn" and summary["model_uri"] == "models:/shoprec@champion"
    recs = pd.read_csv(tmp_path / "recs.csv", dtype={"user_id": str, "item_id": str, "model_version": str})
    assert list(recs.columns) == [
        "user_id", "rank", "item_id", "score", "reason", "variant", "model_version", "recommendation_id",
    ]  # fmt: skip
    assert recs.groupby("user_id").size().to_dict() == {u: 5 for u in ids}
    assert (recs.groupby("user_id")["rank"].apply(list) == [[1, 2, 3, 4, 5]] * len(ids)).all()
    assert recs.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    assert (
        set(recs["variant"]) == {"champion"}
        and recs.groupby("user_id")["recommendation_id"].nunique().eq(1).all()
    )

    engine = _engine(ws)
    popular = engine.popular(5, context=feed_context("always"))
    # non-consenting customers: exactly the non-personal block, with its reasons; an unknown
    # customer: the popular block of new customers
    for u, want in [*((u, popular) for u in people["refused"]),
                    ("never-seen-customer", engine.popular(5, segment="new", context=feed_context("always")))]:  # fmt: skip
        rows = recs[recs["user_id"] == u]
        assert rows["item_id"].tolist() == [r.item_id for r in want]
        assert rows["reason"].tolist() == [r.reason for r in want]
    # known customers: personal, never an item they interacted with (--exclude-seen always)
    ui = engine.state.histories.user_items
    item_ids = engine.state.current.catalog.item_ids
    for u in people["consent"]:
        rows = recs[recs["user_id"] == u]
        assert not set(rows["reason"]) <= {r.reason for r in popular} or rows["item_id"].tolist() != [
            r.item_id for r in popular
        ]
        seen = {str(item_ids[i]) for i in ui[engine.state.customers[u].row].indices}
        assert not seen & set(rows["item_id"])

    # the same users as Parquet, from a text file: the same rows
    txt = tmp_path / "users.txt"
    txt.write_text("\n".join(ids) + "\n")
    res = _run(ws, txt, tmp_path / "recs.parquet", "--exclude-seen", "always")
    assert res.exit_code == 0, res.output
    pq = pd.read_parquet(tmp_path / "recs.parquet")
    cols = ["user_id", "rank", "item_id", "reason", "variant", "model_version"]
    pd.testing.assert_frame_equal(pq[cols].reset_index(drop=True), recs[cols].reset_index(drop=True))
    np.testing.assert_allclose(pq["score"].to_numpy(), recs["score"].to_numpy(), rtol=1e-5)


def test_exclude_seen_never_can_return_history_and_learned_follows_policy(ws: Workspace, people) -> None:
    from serving.feed import Feed, feed_context

    feed = Feed(ws)
    try:
        users = people["consent"]
        never = feed.run(users, 20, feed_context("never"), progress=False)
        always = feed.run(users, 20, feed_context("always"), progress=False)
        learned = feed.run(users, 20, feed_context("learned"), progress=False)
        state = feed.state
        ui, item_ids = state.histories.user_items, state.current.catalog.item_ids
        seen = {u: {str(item_ids[i]) for i in ui[state.customers[u].row].indices} for u in users}
        # itemknn scores a customer's own items highly: without exclusion some come back
        assert any(seen[u] & set(never.loc[never.user_id == u, "item_id"]) for u in users)
        assert not any(seen[u] & set(always.loc[always.user_id == u, "item_id"]) for u in users)
        # learned: no purchase inside its re-buy window, whatever the model scores
        engine = feed.holder.models.champion
        h = state.histories
        import time

        now = time.time()
        for u in users:
            at = h.purchases(state.customers[u].row)
            out = {
                str(item_ids[i])
                for i, b in zip(h.p_item[at], engine.purchases.back_at[at], strict=True)
                if now < b
            }
            assert not out & set(learned.loc[learned.user_id == u, "item_id"])
    finally:
        feed.close()


def test_feed_equals_recommend_batch_for_the_same_users_and_context(ws: Workspace, people) -> None:
    """One engine for every channel: the e-mail feed and the service's /recommend_batch give the
    same blocks (items, order, scores, reasons, variant, model version) for the same customers,
    with an A/B split and a control group in play."""
    from serving.feed import Feed, feed_context
    from serving.loader import ServeConfig
    from serving.schemas import RequestContext
    from serving.service import ShopRec

    shares = "champion=0.5,control=0.5"
    users = people["consent"] + people["refused"] + ["never-seen-customer"] + people["consent"][:2]
    feed = Feed(ws, env={**os.environ, "SHOPREC_AB_SHARES": shares})
    svc = ShopRec.inner(
        config=ServeConfig(data=ws.root, poll_seconds=0, shares={"champion": 0.5, "control": 0.5})
    )
    try:
        got = feed.run(users, 6, feed_context(), progress=False)
        import bentoml

        batch = svc.recommend_batch(users, 6, RequestContext(channel="email"), bentoml.Context())
    finally:
        feed.close()
        svc.holder.stop()
        svc.sync.stop()
    want = [
        (b.user_id, rank, i.item_id, i.score, i.reason, b.variant, b.model_version)
        for b in batch.results
        for rank, i in enumerate(b.items, 1)
    ]
    firsts = {}
    rows = []
    for r in got.itertuples(index=False):
        rows.append((r.user_id, r.rank, r.item_id, float(r.score), r.reason, r.variant, r.model_version))
        firsts.setdefault(r.user_id, r.variant)
    dedup = list(dict.fromkeys(users))
    assert [row for row in want if row[0] in dedup][: len(rows)] == rows or sorted(set(want)) == sorted(
        set(rows)
    )
    assert set(firsts.values()) == {"champion", "control"}  # both arms are in play


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


def test_feed_is_written_chunk_by_chunk_with_the_same_rows(ws: Workspace, people, tmp_path: Path) -> None:
    """A feed for many customers is written one chunk at a time (serving.feed.CHUNK customers) and
    reads back as the one frame `Feed.run` builds; the file appears only when complete."""
    import serving.feed as feed_mod
    from serving.feed import Feed, feed_context, write_frames

    users = people["consent"] + people["refused"] + ["never-seen-1", "never-seen-2"]
    feed = Feed(ws)
    try:
        whole = feed.run(users, 5, feed_context(), progress=False)
        old = feed_mod.CHUNK
        feed_mod.CHUNK = 3  # many chunks on a tiny shop
        try:
            parts = list(feed.frames(users, 5, feed_context(), progress=False))
        finally:
            feed_mod.CHUNK = old
    finally:
        feed.close()
    assert len(parts) == -(-len(users) // 3) > 1
    cols = ["user_id", "rank", "item_id", "reason", "variant"]
    for suffix in (".parquet", ".csv"):
        out = write_frames(iter(parts), tmp_path / f"feed{suffix}")
        back = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out, dtype={"user_id": str})
        assert back[cols].astype(str).values.tolist() == whole[cols].astype(str).values.tolist()
        assert not list(tmp_path.glob(".*.part"))

    def broken():
        yield parts[0]
        raise RuntimeError("the run stopped")

    with pytest.raises(RuntimeError):
        write_frames(broken(), tmp_path / "stopped.parquet")
    assert not (tmp_path / "stopped.parquet").exists()
