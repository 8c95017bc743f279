"""`shoprec forget`, complete: after training and registering models, the customer leaves every
registered bundle (id mapping, factor rows, segment code, context rows, interaction matrix row),
the change log, and the raw, validated and feature tables; reloading a bundle does not know them;
a running service's check (`is_forgotten`) says so; and a rebuild + retrain never brings them back.
Other customers' rows stay exactly as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features import changelog
from features.privacy import ForgetList, is_forgotten
from features.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
SHOPREC = Path(sys.executable).with_name("shoprec")

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _bundles(ws: Workspace, dst: Path) -> dict[str, Path]:
    """Every registered version's bundle, downloaded fresh into `dst`: {version: bundle dir}."""
    from training import tracking

    client = tracking.configure(ws)
    out = {}
    for mv in client.search_model_versions(f"name='{tracking.REGISTERED_MODEL}'"):
        where = dst / f"v{mv.version}"
        where.mkdir(parents=True)
        uri = f"models:/{tracking.REGISTERED_MODEL}/{mv.version}"
        out[str(mv.version)] = tracking.load_bundle_dir(uri, ws, dst=where)
    return out


def _ids_anywhere(root: Path) -> set[str]:
    """Every value of every `user_id` column of every Parquet file under `root`."""
    found: set[str] = set()
    for p in root.rglob("*.parquet"):
        if "user_id" in pq.read_schema(p).names:
            found.update(str(v).strip() for v in pq.read_table(p, columns=["user_id"])["user_id"].to_pylist())
    return found


def test_forget_reaches_every_bundle_the_change_log_and_every_table_and_stays(tmp_path: Path) -> None:
    from features.build import FeatureConfig, build_features
    from features.synthetic import generate
    from serving.bundle import load_bundle
    from serving.state import ShopState
    from training.base import Recommender
    from training.promote import promote
    from training.train import TrainConfig, train

    root = tmp_path / "shop"
    generate(root, customers=120, items=60, days=45, seed=11, progress=False)
    ws = Workspace.at(root)
    build_features(ws, FeatureConfig())
    profiles = pd.read_parquet(ws.feature("profiles")).sort_values("n_purchases", ascending=False)
    target, other = (str(u) for u in profiles["user_id"].iloc[:2])
    # What the service was told about both customers since the last build.
    row = {"item_id": "i000001", "event_type": "view", "timestamp": "2024-01-01T00:00:00Z"}
    changelog.append(ws, "events", [{**row, "user_id": target}, {**row, "user_id": other}])
    changelog.append(ws, "customers", [{"user_id": target, "consent_email": True}])
    build_features(ws, FeatureConfig())

    train(
        ws,
        TrainConfig(model="als", params={"factors": "8", "iterations": "5", "num_threads": "1"}, plots=False),
    )
    train(ws, TrainConfig(model="popular", params={"mode": "segment"}, plots=False))
    promote(ws)
    users = pd.read_parquet(ws.feature("users"))
    t_idx = int(users.loc[users["user_id"] == target, "user_idx"].iloc[0])
    o_idx = int(users.loc[users["user_id"] == other, "user_idx"].iloc[0])
    before = _bundles(ws, tmp_path / "before")
    assert len(before) == 2 and all(target in _ids_anywhere(b) for b in before.values())
    als_before = next(
        b for b in before.values() if json.loads((b / "bundle.json").read_text())["model"] == "als"
    )
    factors_before = np.load(als_before / "model" / "user_factors.npy")
    assert np.abs(factors_before[t_idx]).sum() > 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run(
        [str(SHOPREC), "forget", "--data", str(root), "--user", target],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert target not in res.stdout + res.stderr  # the id is never printed or logged
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(summary["models"]) == 2  # both registered versions' bundles held the customer
    assert summary["workspace"]["changes/events.jsonl"] == 1
    assert summary["workspace"]["changes/customers.jsonl"] == 1

    # Every registered bundle, downloaded afresh, lost the customer and only the customer.
    for version, bundle in _bundles(ws, tmp_path / "after").items():
        ids = _ids_anywhere(bundle)
        assert target not in ids and other in ids, version
        meta = json.loads((bundle / "bundle.json").read_text())
        assert meta["erasures"] == 1
        model = Recommender.load(bundle / "model")
        assert target not in set(model.users["user_id"]) and other in set(model.users["user_id"])
        assert not (bundle / "context").exists()  # the shop's tables are never in a bundle
        if meta["model"] == "als":
            factors = np.load(bundle / "model" / "user_factors.npy")
            assert not factors[t_idx].any()
            keep = np.arange(len(factors)) != t_idx
            np.testing.assert_array_equal(factors[keep], factors_before[keep])  # others untouched
        else:  # popular by segment keeps a segment code per customer
            assert model.user_segment_[t_idx] == -1 and model.user_segment_[o_idx] >= 0
        served = load_bundle(bundle)  # what a service loads after a restart
        assert target not in set(served.model.users["user_id"]) and other in set(
            served.model.users["user_id"]
        )
    state = ShopState.from_workspace(ws)  # ... and the shop state it serves
    assert target not in state.customers and other in state.customers

    # The change log, raw, validated and feature tables.
    for table in ("events", "customers"):
        assert target not in changelog.read(ws, table)[0].column("user_id").to_pylist()
        assert target.encode() not in changelog.log_path(ws, table).read_bytes()
    assert other in changelog.read(ws, "events")[0].column("user_id").to_pylist()
    for folder in (root, ws.validated_dir, ws.quarantine_dir, ws.features_dir):
        assert target not in _ids_anywhere(folder), folder

    # A running service's check, also from a fresh process's point of view (the log, not memory).
    assert is_forgotten(ws, target) and not is_forgotten(ws, other)
    assert target in ForgetList(ws) and f" {target} " in ForgetList(ws)
    assert target not in (root / "forget_log.jsonl").read_text()

    # Rebuild and retrain: the customer does not come back.
    build_features(ws, FeatureConfig())
    assert target not in set(pd.read_parquet(ws.feature("users"))["user_id"])
    result = train(ws, TrainConfig(model="popular", plots=False))
    from training import tracking

    fresh = tracking.load_bundle_dir(f"runs:/{result.run_id}/bundle", ws, dst=tmp_path / "fresh")
    assert target not in _ids_anywhere(fresh) and other in _ids_anywhere(fresh)
