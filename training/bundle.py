"""The serving bundle: everything serving needs at request time, in one directory that MLflow logs
with each registered version (docs/workspace.md, "The serving bundle"). Serving reads it with
`serving.bundle.load_bundle(path)` and never touches the workspace.

    bundle/
      bundle.json        {"model", "data_hash", "created_at", "metrics", "complements", "context"}
      model/             the main model (Recommender.save)
      complements/       a `bought-together` model fitted on the same data
      context/           items (+ item statistics), stock, profiles, sizes, last purchases,
                         category re-buy, the full user x item matrix, sequences
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

if TYPE_CHECKING:
    from features.workspace import Workspace
    from training.base import Recommender, TrainData

log = logging.getLogger(__name__)

COMPLEMENTS_MODEL = "bought-together"
ITEM_STAT_COLUMNS = ("n_users", "n_events", "n_purchases", "popularity", "trend", "pop_rank")
BUNDLE_FORMAT = 1


def write_bundle(
    model: Recommender,
    ws: Workspace,
    path: str | Path,
    *,
    data: TrainData | None = None,
    complements: Recommender | None = None,
    metrics: dict[str, float] | None = None,
    data_hash: str | None = None,
) -> Path:
    """Write the serving bundle for `model` into `path` and return it.

    data:        the full (not split) TrainData the model was fitted on; loaded from `ws` when None.
                 Supplies the bundle's user x item matrix and sequences, and fits the complements.
    complements: a fitted `bought-together` model; fitted here on `data` when None (or `model`
                 itself when it is one).
    metrics:     the evaluation metrics to record in bundle.json.
    """
    from training.tracking import data_hash as compute_hash

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if data is None:
        from training.data import load_train_data

        data = load_train_data(ws)
    model.save(path / "model")

    if complements is None:
        complements = model if model.name == COMPLEMENTS_MODEL else fit_complements(data)
    if complements is not None:
        complements.save(path / "complements")

    context = write_context(ws, data, path / "context")
    meta = {
        "format": BUNDLE_FORMAT,
        "model": model.name,
        "data_hash": data_hash or compute_hash(ws),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "metrics": dict(metrics or {}),
        "complements": complements.name if complements is not None else None,
        "context": context,
        "n_users": int(data.n_users),
        "n_items": int(data.n_items),
    }
    (path / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
    return path


def fit_complements(data: TrainData) -> Recommender | None:
    """Fit the `bought-together` model on `data`; None (with a warning) when it cannot be fitted,
    e.g. a data set without baskets: serving then falls back to item similarity."""
    from training.models import get_model_class

    try:
        klass = get_model_class(COMPLEMENTS_MODEL)
        return klass().fit(data)
    except Exception as e:  # a bundle without complements still serves; say why
        log.warning("bundle: no complements model (%s: %s); /bought_together falls back", type(e).__name__, e)
        return None


def write_context(ws: Workspace, data: TrainData, out: Path) -> list[str]:
    """Copy the request-time context from the workspace's features into `out`; returns the file
    names written. Tables that the workspace lacks (no catalogue, no stock) are left out."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def put(name: str, frame: pd.DataFrame | None) -> None:
        if frame is not None:
            frame.to_parquet(out / f"{name}.parquet", index=False)
            written.append(f"{name}.parquet")

    items = data.items.copy()
    stats = _read(ws.feature("item_stats"))
    if stats is not None and "item_idx" in stats:
        keep = ["item_idx", *[c for c in ITEM_STAT_COLUMNS if c in stats.columns]]
        if "category" not in items.columns and "category" in stats.columns:
            keep.append("category")
        items = items.merge(stats[keep], on="item_idx", how="left")
    put("items", items)
    put("stock", _read(ws.validated("stock")))
    profiles = _read(ws.feature("profiles"))
    if profiles is None and {"user_idx", "user_id"} <= set(data.users.columns):
        profiles = data.users
    put("profiles", profiles)
    sizes = _read(ws.feature("sizes"))
    put(
        "sizes",
        sizes[[c for c in ("user_idx", "garment", "size") if c in sizes.columns]]
        if sizes is not None
        else None,
    )
    put("last_purchases", _read(ws.feature("last_purchases")))
    put("category_rebuy", _read(ws.feature("category_rebuy")))

    sp.save_npz(out / "user_items.npz", sp.csr_matrix(data.user_items, dtype=np.float32))
    written.append("user_items.npz")
    if data.sequences:
        # Built as one Arrow list column from the flat items and their offsets: a pandas frame of
        # per-user arrays would hold every positive event as Python objects (1M customers: 60M).
        lens = np.fromiter((len(s) for s in data.sequences), dtype=np.int64, count=len(data.sequences))
        offsets = np.concatenate([[0], np.cumsum(lens)])
        flat = pa.array(np.concatenate([np.asarray(s, dtype=np.int32) for s in data.sequences]), pa.int32())
        lists = (
            pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)
            if offsets[-1] < 2**31
            else pa.LargeListArray.from_arrays(pa.array(offsets), flat)
        )
        seqs = pa.table(
            {"user_idx": pa.array(np.arange(len(data.sequences), dtype=np.int32)), "item_idx": lists}
        )
        pq.write_table(seqs, out / "sequences.parquet")
        written.append("sequences.parquet")
    return written


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    """bundle.json of a bundle directory."""
    return json.loads((Path(path) / "bundle.json").read_text())


def _read(p: Path) -> pd.DataFrame | None:
    return pd.read_parquet(p) if p.exists() else None
