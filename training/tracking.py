"""MLflow tracking and the model registry: where runs go, what they carry, and how a registered
serving bundle is fetched back (in any process, by alias).

Where: `MLFLOW_TRACKING_URI` when set (e.g. a PostgreSQL-backed `mlflow server`), else SQLite
`ws.mlflow_uri` with artifacts under `ws.mlflow_artifacts`. Nothing is configured at import time:
every entry point calls `configure(ws)` (or passes a URI) per call.

Metric names: shoprec says `ndcg@10`; MLflow refuses `@` in names, so runs store `ndcg_at_10`
(`to_mlflow_key` / `from_mlflow_key` translate both ways, losslessly).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mlflow costs ~3 s to import; keep it out of `shoprec --help`
    from mlflow import MlflowClient

    from features.workspace import Workspace
    from training.base import Recommender

REGISTERED_MODEL = "shoprec"
EXPERIMENT = "shoprec"
TUNE_EXPERIMENT = "shoprec-tune"
PROMOTE_EXPERIMENT = "shoprec-promote"
CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"

log = logging.getLogger(__name__)


def to_mlflow_key(name: str) -> str:
    """`ndcg@10/new` -> `ndcg_at_10/new` (MLflow allows only [/\\w.\\- :] in metric names)."""
    return name.replace("@", "_at_")


def from_mlflow_key(key: str) -> str:
    """Inverse of `to_mlflow_key`."""
    return key.replace("_at_", "@")


def tracking_uri(ws: Workspace | None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the workspace's SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if ws is None:
        raise ValueError("no MLFLOW_TRACKING_URI set and no workspace given: cannot locate the MLflow store")
    return ws.mlflow_uri


def quiet_mlflow() -> None:
    """Silence MLflow's start-up chatter (alembic migrations, 'creating tables', progress bars,
    git-not-found warnings) that reads like an error to a user; real errors still raise."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
    warnings.filterwarnings("ignore", message=r".*pkg_resources.*")


def configure(ws: Workspace | None) -> MlflowClient:
    """Point MLflow (tracking and registry) at the store for `ws` and return a client.

    With the default SQLite store the workspace directory is created and the `shoprec`
    experiments get their artifact root under `ws.mlflow_artifacts` (not ./mlruns of the cwd)."""
    quiet_mlflow()
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(ws)
    if ws is not None and uri == ws.mlflow_uri:
        ws.root.mkdir(parents=True, exist_ok=True)
        relocate_store(ws)
    # MLflow exports both URIs as environment variables (for subprocesses); left there, the first
    # workspace of a process would capture every later one through `tracking_uri`. Restored.
    saved = {var: os.environ.get(var) for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def relocate_store(ws: Workspace) -> dict[str, int]:
    """Make the workspace's SQLite store point at the workspace's own artifacts; returns the rows
    changed per table ({} when nothing needed changing).

    MLflow records absolute artifact locations (experiments' `artifact_location`, runs'
    `artifact_uri`), so a workspace copied or moved to another directory would read and write its
    artifacts in the old one. Every location under an old `.../mlartifacts` directory is rewritten
    to this workspace's `mlartifacts/`, and the `Default` experiment (which MLflow creates under the
    current directory's `./mlruns`) is moved inside the workspace too. Cheap when there is nothing
    to do (one query), idempotent, and safe when several processes run it at once (one SQLite
    transaction). A store whose `mlartifacts/` was not copied along is left alone, with a warning:
    its artifacts are only where the old locations say."""
    import sqlite3

    db = ws.mlflow_db
    if not db.exists():
        return {}
    new = ws.mlflow_artifacts.as_uri()
    con = sqlite3.connect(db, timeout=60)
    try:
        try:
            rows = con.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError:  # a store MLflow has not initialised yet
            return {}
        old = sorted({p for _, _, loc in rows if (p := _artifact_root(loc)) is not None and p != new})
        default = [
            (eid, loc)
            for eid, name, loc in rows
            if name == "Default" and loc and not _under(_as_uri(loc), new)
        ]
        if not old and not default:
            return {}
        if not old and not ws.mlflow_artifacts.is_dir():
            # only MLflow's Default experiment to move (a first run that stopped before it logged an
            # artifact): nothing lies anywhere else, so the workspace's own directory can start now
            ws.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        if not ws.mlflow_artifacts.is_dir():
            log.warning(
                "%s records artifacts under %s but %s does not exist: was the workspace copied "
                "without mlartifacts/? Its artifacts are read from the old place.",
                db,
                ", ".join(old) or "another directory",
                ws.mlflow_artifacts,
            )
            return {}
        changed: dict[str, int] = {}
        with con:  # one transaction: all locations move, or none
            for prefix in old:
                for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                    cur = con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE substr({column}, 1, ?) = ?",
                        (new, len(prefix) + 1, len(prefix) + 1, prefix + "/"),
                    )
                    changed[table] = changed.get(table, 0) + cur.rowcount
            for eid, _ in default:
                con.execute(
                    "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                    (f"{new}/{eid}", eid),
                )
                changed["experiments"] = changed.get("experiments", 0) + 1
        if old:
            log.info("workspace moved: MLflow artifact locations %s -> %s", ", ".join(old), new)
        return changed
    finally:
        con.close()


def _as_uri(location: str) -> str:
    """A local artifact location as a file URI (MLflow stores both plain paths and file URIs)."""
    if location.startswith("file:"):
        return location
    return Path(location).as_uri() if location.startswith("/") else location


def _under(uri: str, prefix: str) -> bool:
    return uri == prefix or uri.startswith(prefix + "/")


def _artifact_root(location: str | None) -> str | None:
    """The `.../mlartifacts` file URI a workspace experiment's location lies under, else None."""
    if not location:
        return None
    uri = _as_uri(location)
    if not uri.startswith("file:"):
        return None  # an artifact server or object store: not the workspace's files
    marker = "/mlartifacts/"
    i = uri.rfind(marker)
    return uri[: i + len(marker) - 1] if i >= 0 else None


def experiment_id(client: MlflowClient, name: str, ws: Workspace | None) -> str:
    """The id of experiment `name`, created on first use (artifacts under the workspace when the
    store is the workspace's own SQLite, beside the database for another SQLite store; a server
    chooses its own artifact root)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (ws.mlflow_uri if ws is not None else "")
    if ws is not None and uri == ws.mlflow_uri:
        location = (ws.mlflow_artifacts / name).as_uri()
    elif uri.startswith("sqlite:///"):
        # another local SQLite store keeps its artifacts beside it, not in ./mlruns of the cwd
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another worker created it between our two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def ensure_registered_model(client: MlflowClient, name: str = REGISTERED_MODEL) -> None:
    """Create the registered model once; concurrent creators are fine."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="shoprec serving bundles; alias `champion` is what serving loads."
            )
        except MlflowException:
            client.get_registered_model(name)


def data_hash(ws: Workspace) -> str:
    """sha256 (first 16 hex) over the validated tables' bytes, in table-name order: two runs with
    the same hash learned from the same data snapshot. Raises when features were never built."""
    files = sorted(ws.validated_dir.glob("*.parquet")) if ws.validated_dir.exists() else []
    if not files:
        raise FileNotFoundError(
            f"no validated tables under {ws.validated_dir}: run `shoprec features build --data {ws.root}` first"
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def code_version() -> str | None:
    """The git commit of the shoprec source (with `-dirty` for uncommitted changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def load_bundle_dir(
    uri: str = DEFAULT_MODEL_URI, ws: Workspace | None = None, dst: str | Path | None = None
) -> Path:
    """Download the serving bundle behind `uri` (`models:/shoprec@champion`, `models:/shoprec/3`,
    `runs:/<id>/bundle`, or a local directory) and return the local bundle directory."""
    local = Path(uri).expanduser()
    if "://" not in uri and not uri.startswith(("models:", "runs:")) and local.is_dir():
        return local
    configure(ws)
    import mlflow

    if dst is None:
        dst = tempfile.mkdtemp(prefix="shoprec-bundle-")
    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as e:
        raise LookupError(
            f"cannot fetch {uri} from the MLflow store at {tracking_uri(ws)}: {e}. "
            "Train a model (`shoprec train`) and promote it (`shoprec promote`) first, or pass --model-uri."
        ) from e
    if not (path / "bundle.json").exists() and (path / "bundle" / "bundle.json").exists():
        path = path / "bundle"
    return path


def load_model(uri: str = DEFAULT_MODEL_URI, ws: Workspace | None = None) -> Recommender:
    """The main model of the bundle behind `uri`, ready to score (any process, no workspace)."""
    from training.base import Recommender

    return Recommender.load(load_bundle_dir(uri, ws) / "model")


def run_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    """A run's metrics in shoprec's naming (`ndcg@10`)."""
    return run_metrics_of(client.get_run(run_id))


def run_metrics_of(run: Any) -> dict[str, float]:
    """The metrics of a fetched MLflow run in shoprec's naming (`ndcg@10`)."""
    return {from_mlflow_key(k): float(v) for k, v in run.data.metrics.items()}


def log_metrics(metrics: dict[str, Any], prefix: str = "") -> None:
    """Log finite numeric metrics under MLflow-safe names (active run)."""
    import math

    import mlflow

    clean = {
        to_mlflow_key(prefix + k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }
    if clean:
        mlflow.log_metrics(clean)


def log_card(client: MlflowClient, run_id: str, card: str) -> None:
    """A run's model card as its MLflow description (the `mlflow.note.content` tag, shown on the
    run page) and as the `model_card.md` artifact. A tag holds at most 8000 characters: a longer
    card is cut there with a pointer to the artifact, which keeps it whole."""
    from training.card import CARD_ARTIFACT, NOTE_TAG

    limit = 8000
    note = card
    if len(note) > limit:
        tail = f"\n\n... (cut: the whole card is the run's `{CARD_ARTIFACT}` artifact)\n"
        note = note[: limit - len(tail)] + tail
    client.set_tag(run_id, NOTE_TAG, note)
    client.log_text(run_id, card, CARD_ARTIFACT)
