"""Small throw-away workspaces for the notebooks (and anyone trying shoprec out): a synthetic shop
generated into a temporary directory, its features built, optionally a few models trained and
tracked in that workspace's own MLflow store and a champion promoted.

A notebook never writes into a user's workspace: `notebook_workspace` hands back the workspace
named by `SHOPREC_NOTEBOOK_DATA` only to be read, and a fresh temporary one otherwise;
`scratch_copy` copies a workspace's validated tables and features into a temporary one for
notebooks that write (tuning).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from features.workspace import Workspace

log = logging.getLogger(__name__)

ENV = "SHOPREC_NOTEBOOK_DATA"
# Small enough that every notebook runs in well under a minute on one core, big enough that the
# models differ: 400 customers, 200 items, 90 days, about 11k events.
SHOP = {"customers": 400, "items": 200, "days": 90, "seed": 7}
# SASRec small enough for a notebook (seconds per epoch on one thread); the full model is the default.
TINY_SASREC = {"dim": "16", "n_layers": "1", "n_heads": "1", "max_len": "20", "epochs": "4", "threads": "1",
               "progress": "false"}  # fmt: skip


def demo_workspace(
    root: str | Path | None = None,
    *,
    models: Sequence[str] = (),
    params: dict[str, dict[str, Any]] | None = None,
    promote: bool = False,
    **shop: int,
) -> Workspace:
    """Generate the synthetic shop (SHOP, overridden by `shop`) into `root` (default: a new
    temporary directory), build its features, train and register `models` (with `params[name]`
    overrides) and, with `promote`, make the best one champion. MLflow runs go to the
    workspace's own SQLite store: this process's MLFLOW_TRACKING_URI is pointed there, so a
    team's tracking server never receives a demo run."""
    with _no_widget_warnings():  # tqdm.auto and rich ask for ipywidgets inside a notebook
        from features.build import FeatureConfig, build_features
        from features.synthetic import generate

    base = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="shoprec-demo-")) / "shop"
    ws = Workspace.at(base)
    if ws.raw("events") is not None:
        raise FileExistsError(f"{ws.root} already holds a shop: a demo workspace is always a new directory")
    generate(ws.root, **{**SHOP, **shop}, progress=False)
    with _no_widget_warnings():
        build_features(ws, FeatureConfig())
    use_own_store(ws)
    params = params or {}
    for name in models:
        train_quietly(ws, name, params.get(name, TINY_SASREC if name == "sasrec" else {}))
    if promote and models:
        from training.promote import promote as promote_champion

        promote_champion(ws)
    return ws


def train_quietly(ws: Workspace, model: str, params: dict[str, Any] | None = None) -> Any:
    """`train` with the default TrainConfig, registered, plots and card included."""
    from training.train import TrainConfig, train

    return train(ws, TrainConfig(model=model, params=dict(params or {})))


def use_own_store(ws: Workspace) -> None:
    """Point MLflow (this process) at the workspace's own SQLite store."""
    os.environ["MLFLOW_TRACKING_URI"] = ws.mlflow_uri


def notebook_workspace(
    *, models: Sequence[str] = (), promote: bool = False, **shop: int
) -> tuple[Workspace, bool]:
    """(workspace, is_demo): the user's workspace from SHOPREC_NOTEBOOK_DATA, to be read only (its
    features must be built: a notebook never builds into it), else `demo_workspace(...)`."""
    given = os.environ.get(ENV)
    if not given:
        return demo_workspace(models=models, promote=promote, **shop), True
    ws = Workspace.at(given)
    if not (ws.features_dir / "summary.json").exists():
        raise FileNotFoundError(
            f"{ENV}={given} has no built features: run `shoprec features build --data {given}` first "
            "(a notebook never writes into your workspace)"
        )
    return ws, False


def scratch_copy(ws: Workspace) -> Workspace:
    """A temporary workspace holding a copy of `ws`'s validated tables and features (no MLflow
    store, no Optuna study), for work that writes."""
    dst = Workspace.at(Path(tempfile.mkdtemp(prefix="shoprec-scratch-")) / "shop")
    dst.root.mkdir(parents=True)
    for d in (ws.validated_dir, ws.features_dir):
        shutil.copytree(d, dst.root / d.name)
    use_own_store(dst)
    return dst


@contextlib.contextmanager
def _no_widget_warnings():
    """Progress bars degrade to plain output in a notebook without ipywidgets; say nothing about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(IProgress|ipywidgets).*")
        yield
