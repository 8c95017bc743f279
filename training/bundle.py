"""The serving bundle: what one registered version learned, in one directory that MLflow logs with
it (docs/workspace.md, "The serving bundle"). Serving reads it with `serving.bundle.load_bundle`.

    bundle/
      bundle.json        {"model", "data_hash", "created_at", "metrics", "complements", "event_weights"}
      model/             the main model (Recommender.save)
      complements/       a `bought-together` model fitted on the same data
      policy/            the learned re-buy policy (training.policy.RebuyPolicy.save)
      context_lift.json  the visit context's learned category lifts (training/context.py)

Only what was learned: the shop's catalogue, stock, customers and histories are live state that
serving reads from the workspace (serving/state.py), never a copy frozen here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
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
        complements = (
            model if model.name == COMPLEMENTS_MODEL else fit_complements(data, cache=ws.root / ".cache")
        )
    if complements is not None:
        complements.save(path / "complements")

    policy = learned_policy(ws)
    policy.save(path / "policy")
    learned_context(ws).save(path)
    meta = {
        "format": BUNDLE_FORMAT,
        "model": model.name,
        "data_hash": data_hash or compute_hash(ws),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "metrics": dict(metrics or {}),
        "complements": complements.name if complements is not None else None,
        "event_weights": event_weights(ws),
        "n_users": int(data.n_users),
        "n_items": int(data.n_items),
    }
    (path / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
    return path


def fit_complements(data: TrainData, cache: Path | None = None) -> Recommender | None:
    """Fit the `bought-together` model on `data`; None (with a warning) when it cannot be fitted,
    e.g. a data set without baskets: serving then falls back to item similarity.

    With `cache` (a folder), the fitted model is kept under `cache/complements/<key>`, the key a
    hash of everything the fit reads (baskets, the interaction pattern, ids, config), and reused:
    every model of a retrain bundles the same complements, and on a grocer's data (Complete
    Journey: 155k baskets, 92k items) one fit takes minutes. Only the latest key is kept."""
    from training.models import get_model_class

    try:
        klass = get_model_class(COMPLEMENTS_MODEL)
        config = klass.Config()
        if cache is None:
            return klass(config).fit(data)
        folder = Path(cache) / "complements"
        target = folder / _complements_key(data, config.to_dict())
        if (target / "config.json").exists():
            log.info("bundle: complements from the cache (%s)", target.name)
            return klass.load(target)
        model = klass(config).fit(data)
        _store(model, folder, target)
        return model
    except Exception as e:  # a bundle without complements still serves; say why
        log.warning("bundle: no complements model (%s: %s); /bought_together falls back", type(e).__name__, e)
        return None


def _complements_key(data: TrainData, config: dict[str, Any]) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    X = sp.csr_matrix(data.user_items)
    for arr in (np.asarray(X.shape), X.indptr, X.indices):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    h.update(np.asarray([len(b) for b in data.baskets], dtype=np.int64).tobytes())
    if data.baskets:
        h.update(np.concatenate([np.asarray(b, dtype=np.int64) for b in data.baskets]).tobytes())
    h.update("\0".join(map(str, data.items["item_id"])).encode())
    h.update("\0".join(map(str, data.users["user_id"])).encode())
    return h.hexdigest()[:24]


def _store(model: Recommender, folder: Path, target: Path) -> None:
    """Save into a temporary sibling and rename it into place (a concurrent writer of the same key
    loses the race harmlessly); older keys are removed."""
    import shutil
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        model.save(tmp)
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    for old in folder.iterdir():
        if old != target and not old.name.startswith(".tmp-"):
            shutil.rmtree(old, ignore_errors=True)


def learned_policy(ws: Workspace) -> Any:
    """The re-buy policy learned by the features build on all data (training.policy)."""
    from training.policy import RebuyPolicy

    users = _read(ws.feature("users"))
    return RebuyPolicy.from_frame(
        _read(ws.feature("category_rebuy")), customer_rebuy=_read(ws.feature("customer_rebuy")), users=users
    )


def learned_context(ws: Workspace) -> Any:
    """The context lifts (training.context) of the workspace's validated events, kept under
    `.cache/context/` by the events' and catalogue's size and mtime: every model of a retrain
    bundles the same lifts, learned once."""
    from training.context import ContextLift, fit_from_workspace

    stats = [p.stat() for p in (ws.validated("events"), ws.validated("catalog")) if p.exists()]
    key = "-".join(f"{st.st_size}.{st.st_mtime_ns}" for st in stats) or "none"
    folder = ws.root / ".cache" / "context"
    cached = ContextLift.load(folder / key)
    if cached is not None:
        return cached
    lift = fit_from_workspace(ws)
    try:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        (folder / key).mkdir(parents=True, exist_ok=True)
        lift.save(folder / key)
    except OSError:
        pass  # a cache only
    return lift


def event_weights(ws: Workspace) -> dict[str, float]:
    """event type -> weight the workspace's interaction matrix was built with (features'
    interactions.json), so serving weighs real-time events as training weighed them."""
    meta = ws.features_dir / "interactions.json"
    if meta.exists():
        weights = json.loads(meta.read_text()).get("weights")
        if isinstance(weights, dict) and weights:
            return {str(k): float(v) for k, v in weights.items()}
    return default_event_weights()


def default_event_weights() -> dict[str, float]:
    from features.config import FeatureConfig

    return dict(FeatureConfig().weight_map)


def read_event_weights(meta: dict[str, Any]) -> dict[str, float]:
    """A bundle's event weights (bundle.json), else the feature build's defaults."""
    weights = meta.get("event_weights")
    if isinstance(weights, dict) and weights:
        return {str(k): float(v) for k, v in weights.items()}
    return default_event_weights()


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    """bundle.json of a bundle directory."""
    return json.loads((Path(path) / "bundle.json").read_text())


def _read(p: Path) -> pd.DataFrame | None:
    return pd.read_parquet(p) if p.exists() else None
