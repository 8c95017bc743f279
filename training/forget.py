"""`shoprec forget` on the model side (CONTRACT "Privacy"): erase customers from serving bundles,
and from every bundle the workspace's MLflow store holds, so that no registered version (nor the
champion a service loads after a restart) knows them.

In a bundle directory (training.bundle):
* every model directory (`model/`, `complements/`; a blend's base model is its own business) is
  loaded, `Recommender.forget_users` erases the customers' id rows and per-user state (factor
  rows, segment codes), and it is saved back in its place;
* every other Parquet table loses the customers' rows: by `user_id` where it has one, else by
  `user_idx` (the indices the bundle's own id mappings give the customers);
* `context/user_items.npz` (the interaction matrix) loses the customers' rows (emptied, so the
  other rows keep their indices);
* `bundle.json` counts the erasures (`erasures`), so a service serving a local bundle directory
  sees a new version and swaps it in.
The ids themselves are never written anywhere, nor logged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

if TYPE_CHECKING:
    from features.workspace import Workspace

log = logging.getLogger(__name__)

USER_MATRICES = ("context/user_items.npz",)  # sparse matrices whose rows are user indices


def _ids(user_ids: Iterable[str]) -> set[str]:
    ids = {str(u).strip() for u in user_ids}
    if not ids or "" in ids:
        raise ValueError("forget needs non-empty user ids")
    return ids


def _model_dirs(root: Path) -> list[Path]:
    """Directories under `root` holding a saved Recommender (config.json naming a registered
    model), outermost only."""
    from training.models import MODEL_NAMES

    found: list[Path] = []
    for cfg in sorted(root.rglob("config.json"), key=lambda p: len(p.parts)):
        d = cfg.parent
        if any(d.is_relative_to(f) for f in found):
            continue
        try:
            name = json.loads(cfg.read_text()).get("model")
        except (ValueError, OSError, AttributeError):
            continue
        if name in MODEL_NAMES:
            found.append(d)
    return found


def _user_indices(root: Path, ids: set[str]) -> set[int]:
    """The `user_idx` of the customers in every table of the bundle that maps ids to indices."""
    out: set[int] = set()
    for path in root.rglob("*.parquet"):
        names = pq.read_schema(path).names
        if "user_id" in names and "user_idx" in names:
            t = pq.read_table(path, columns=["user_id", "user_idx"])
            hit = _id_mask(t["user_id"], ids)
            out.update(int(i) for i in t.filter(hit)["user_idx"].to_pylist() if i is not None)
    return out


def _id_mask(column: pa.ChunkedArray, ids: set[str]) -> pa.ChunkedArray:
    text = pc.utf8_trim_whitespace(column.cast(pa.string()))
    return pc.fill_null(pc.is_in(text, pa.array(sorted(ids), pa.string())), False)


def _rewrite(path: Path, table: pa.Table, drop: pa.ChunkedArray | pa.Array) -> int:
    n = int(pc.sum(drop).as_py() or 0)
    if n:
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table.filter(pc.invert(drop)), tmp)
        os.replace(tmp, path)
    return n


def _forget_table(path: Path, ids: set[str], idx: set[int]) -> int:
    names = pq.read_schema(path).names
    if "user_id" in names:
        t = pq.read_table(path)
        return _rewrite(path, t, _id_mask(t["user_id"], ids))
    if "user_idx" in names and idx:
        t = pq.read_table(path)
        drop = pc.fill_null(pc.is_in(t["user_idx"], pa.array(sorted(idx), t["user_idx"].type)), False)
        return _rewrite(path, t, drop)
    return 0


def _forget_matrix(path: Path, idx: set[int]) -> int:
    X = sp.load_npz(path).tocsr()
    rows = np.array(sorted(i for i in idx if 0 <= i < X.shape[0]), dtype=np.int64)
    if rows.size == 0 or not np.diff(X.indptr)[rows].any():
        return 0
    keep = np.ones(X.shape[0], dtype=np.float32)
    keep[rows] = 0.0
    Y = sp.csr_matrix(sp.diags(keep) @ X, dtype=X.dtype)
    Y.eliminate_zeros()
    tmp = path.with_name(path.stem + ".tmp.npz")
    sp.save_npz(tmp, Y)
    os.replace(tmp, path)
    return int(rows.size)


def _forget_model(d: Path, ids: set[str]) -> int:
    from training.base import Recommender

    model = Recommender.load(d)
    erased = model.forget_users(ids)
    if erased.size == 0:
        return 0
    tmp = d.with_name(d.name + ".forget-tmp")
    old = d.with_name(d.name + ".forget-old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    model.save(tmp)
    d.rename(old)
    tmp.rename(d)
    shutil.rmtree(old)
    return int(erased.size)


def forget_in_bundle(path: str | Path, user_ids: Iterable[str]) -> dict[str, int]:
    """Erase the customers from the bundle directory at `path` (see the module docstring).
    Returns {file or model directory relative to `path`: rows erased}, only where rows were."""
    root = Path(path)
    ids = _ids(user_ids)
    idx = _user_indices(root, ids)  # before any mapping loses its rows
    removed: dict[str, int] = {}
    models = _model_dirs(root)
    for d in models:
        if n := _forget_model(d, ids):
            removed[str(d.relative_to(root))] = n
    for p in sorted(root.rglob("*.parquet")):
        if any(p.is_relative_to(d) for d in models):
            continue
        if n := _forget_table(p, ids, idx):
            removed[str(p.relative_to(root))] = n
    for name in USER_MATRICES:
        if (root / name).exists() and (n := _forget_matrix(root / name, idx)):
            removed[name] = n
    meta_path = root / "bundle.json"
    if removed and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta["erasures"] = int(meta.get("erasures", 0)) + 1
        meta["erased_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        tmp = meta_path.with_name("bundle.json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(tmp, meta_path)
    return removed


def stored_bundles(ws: Workspace | None) -> dict[str, str]:
    """Every run of the MLflow store (the workspace's, or MLFLOW_TRACKING_URI) that logged a
    `bundle/`: {run_id: label}, the label naming the registered versions it backs
    ("shoprec v3") or "unregistered run"."""
    from training import tracking

    client = tracking.configure(ws)
    labels: dict[str, list[str]] = {}
    for mv in client.search_model_versions():
        if mv.run_id:
            labels.setdefault(mv.run_id, []).append(f"{mv.name} v{mv.version}")
    runs: set[str] = set(labels)
    experiments = [e.experiment_id for e in client.search_experiments()]
    token = None
    while experiments:
        page = client.search_runs(experiments, max_results=1000, page_token=token)
        runs.update(r.info.run_id for r in page)
        token = page.token
        if not token:
            break
    out: dict[str, str] = {}
    for run_id in sorted(runs):
        if any(a.path == "bundle" and a.is_dir for a in client.list_artifacts(run_id)):
            out[run_id] = ", ".join(sorted(labels.get(run_id, []))) or "unregistered run"
    return out


def forget_in_store(ws: Workspace | None, user_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """Erase the customers from every bundle the MLflow store holds (every registered version's,
    and every other run's). Artifacts on the local disk are rewritten in place; on an artifact
    server the bundle is downloaded, erased and uploaded over the old files. Returns
    {"<run_id> (<label>)": {file: rows erased}} for the bundles that held the customers."""
    from mlflow.artifacts import download_artifacts

    from training import tracking

    ids = _ids(user_ids)
    client = tracking.configure(ws)
    out: dict[str, dict[str, int]] = {}
    for run_id, label in stored_bundles(ws).items():
        uri = client.get_run(run_id).info.artifact_uri
        if uri.startswith("file:") or "://" not in uri:
            local = Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri) / "bundle"
            removed = forget_in_bundle(local, ids)
        else:
            with tempfile.TemporaryDirectory(prefix="shoprec-forget-") as tmp:
                local = Path(download_artifacts(run_id=run_id, artifact_path="bundle", dst_path=tmp))
                removed = forget_in_bundle(local, ids)
                if removed:
                    client.log_artifacts(run_id, str(local), "bundle")
        if removed:
            out[f"{run_id} ({label})"] = removed
            log.info("erased %d row(s) from the bundle of %s", sum(removed.values()), label)
    return out


def forget_customer(ws: Workspace, user_id: str) -> dict[str, object]:
    """Erase one customer from the workspace: its tables, change log and forget log
    (features.privacy), and every bundle its MLflow store holds (`forget_in_store`). The one
    erasure `shoprec forget` and `POST /forget` both run; a summary without the id."""
    from features.privacy import forget_user, log_erasure

    summary: dict[str, object] = {"workspace": forget_user(ws, user_id)}
    if ws.mlflow_db.exists() or os.environ.get("MLFLOW_TRACKING_URI"):
        models = forget_in_store(ws, [user_id])
        log_erasure(
            ws, user_id, {f"{k}/{f}": n for k, v in models.items() for f, n in v.items()}, kind="models"
        )
        summary["models"] = models
    return summary
