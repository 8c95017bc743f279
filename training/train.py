"""`shoprec train`: fit one model on a split's training part, evaluate it with full ranking, refit
on all data for serving, and log it all as one MLflow run that registers a version of `shoprec`.

A run carries: params = the model's config; metrics = the evaluation (MLflow names: `ndcg_at_10`),
plus per-epoch `train_loss` / `valid_ndcg_at_10` steps for models that record them (SASRec); tags =
model name, split, data snapshot hash, code version, task, and the model card as the run's
description (`mlflow.note.content`); artifacts = the serving bundle (`bundle/`), plots (`plots/`)
and `model_card.md`. No customer id goes into params, tags, the card or logs.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

if TYPE_CHECKING:
    from features.workspace import Workspace
    from training.base import Recommender, TrainData
    from training.card import Comparison

log = logging.getLogger(__name__)
PLOT_CUSTOMERS = 20_000  # at most this many test customers in the popularity plot

EXCLUDE_SEEN = ("learned", "always", "never")
# Models that answer "what goes with this item", not "what for this user": they are evaluated on
# hidden basket items and never compete for the `champion` alias.
COMPLEMENT_MODELS = ("bought-together",)


class StrictConfig:
    """`from_dict` for the stage configs (TrainConfig, TuneConfig, PromoteConfig): a config file's
    unknown key is an error that names the known ones, never a silently ignored setting."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        from features.strict import strict_fields

        return cls(**strict_fields(cls, values))


@dataclass(frozen=True)
class TrainConfig(StrictConfig):
    """What `shoprec train` does; the model's own hyper-parameters live in its ModelConfig."""

    model: str
    params: dict[str, Any] = field(default_factory=dict)  # overrides of the model's config (--set)
    split: str = "loo"
    # Refit on every interaction before the bundle is written: serving should know the latest
    # purchases. Metrics always come from the split's fit; `refit=False` ships that fit instead.
    refit: bool = True
    register: bool = True  # create a version of the registered model `shoprec`
    ks: tuple[int, ...] = (1, 5, 10, 20, 50)  # list lengths evaluated (the Recall@K curve)
    exclude_seen: str = "learned"  # which past items may come back in evaluation
    plots: bool = True

    def __post_init__(self) -> None:
        if self.exclude_seen not in EXCLUDE_SEEN:
            raise ValueError(f"exclude_seen must be one of {EXCLUDE_SEEN}, got {self.exclude_seen!r}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive list lengths, got {self.ks!r}")


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model: str
    version: str | None  # registered version of `shoprec`, None when not registered
    metrics: dict[str, float]
    # For the person reading the terminal (not in the JSON line a scheduler parses): the split,
    # what the run was compared with, the seconds fit + evaluation took, the run's model card.
    split: str = "loo"
    comparison: Comparison | None = None
    fit_seconds: float | None = None
    card: str = ""
    # How the model was fitted when not as configured (EASE on the top items of a big catalogue, ...)
    warnings: tuple[str, ...] = ()
    # The served model's time to score one customer (training.evaluate.score_latency): score_ms
    # (median), score_ms_p99; `shoprec promote` holds score_ms to its serving budget. In the run, the
    # terminal's text and the card; not in the JSON line (the contract's keys).
    latency: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"run_id": self.run_id, "model": self.model, "version": self.version, "metrics": self.metrics}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """`["factors=64", "alpha=2"]` -> {"factors": "64", "alpha": "2"} (typed later by the model's
    config, which rejects unknown keys)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def build_model(name: str, params: dict[str, Any]) -> Recommender:
    """An unfitted model `name` with its config's defaults overridden by `params` (strict keys)."""
    from training.models import MODEL_NAMES, get_model_class

    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    klass = get_model_class(name)
    return klass(klass.Config().with_overrides(dict(params)))


def evaluate_model(model: Recommender, split: Any, config: TrainConfig, on: str = "test") -> dict[str, float]:
    """Full-ranking evaluation of `model` on the split's `on` part (basket hiding for complements)."""
    from training import evaluate as ev

    if model.name in COMPLEMENT_MODELS:
        try:
            return dict(ev.evaluate_baskets(model, split, on=on, ks=config.ks))
        except ValueError as e:
            # A split without held-out baskets of 2+ items (single-item orders) cannot score
            # complements; the model is still useful to serving, so it is logged unevaluated.
            log.warning("%s not evaluated: %s", model.name, e)
            return {}
    return dict(
        ev.evaluate(
            model, split, on=on, ks=config.ks, exclude_seen=config.exclude_seen, max_users=ev.EVAL_CUSTOMERS
        )
    )


def fit_and_evaluate(
    ws: Workspace, config: TrainConfig, *, callback: Any = None
) -> tuple[Recommender, dict[str, float], TrainData, Any]:
    """Fit `config.model` on the split's training part and evaluate it on the split's test part.

    Returns (fitted model, metrics, the training TrainData, the Split)."""
    from training.data import load_split

    split = load_split(ws, config.split)
    train_data = split.train  # the split's leak-free training part
    model = build_model(config.model, config.params)
    log.info(
        "fitting %s on the %s split's training part (%d users x %d items)",
        config.model,
        config.split,
        train_data.n_users,
        train_data.n_items,
    )
    validation = _validation_hook(model, split, config)
    if validation is not None:
        log.info("%s stops early on validation NDCG@10 (patience from its config)", config.model)
    model.fit(train_data, callback=callback, validation=validation)
    log.info("evaluating %s on the %s split (full ranking over the catalogue)", config.model, config.split)
    metrics = evaluate_model(model, split, config)
    return model, metrics, train_data, split


def _validation_hook(model: Recommender, split: Any, config: TrainConfig) -> Any:
    """For a model class that stops early (`Recommender.early_stopping`), a hook that scores
    NDCG@10 on the split's validation part; None when the class does not take one, the model has
    one already, or the split has no validation rows."""
    if not model.early_stopping or getattr(model, "validation", None) is not None:
        return None
    if len(getattr(split, "valid", ())) == 0:
        return None
    from training import evaluate as ev

    def hook(m: Recommender) -> float:
        return ev.evaluate(m, split, on="valid", ks=(10,), exclude_seen=config.exclude_seen)["ndcg@10"]

    return hook


def chosen_epochs(model: Recommender) -> int | None:
    """Epochs validation chose for an early-stopped fit: the 1-based epoch of the best "valid"
    score in the model's history; None when the fit had no validation."""
    curve = [h["valid"] for h in getattr(model, "history", []) if "valid" in h]
    return int(np.argmax(curve)) + 1 if curve else None


def refit_params(model: Recommender, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters of the refit on all data: those of `params`, and for an early-stopped fit the
    epochs validation chose with early stopping off (all data leaves nothing to validate on)."""
    epochs = chosen_epochs(model)
    if epochs is None:
        return dict(params)
    return {**params, "epochs": epochs, "patience": 0}


def train(ws: Workspace, config: TrainConfig) -> TrainResult:
    """Fit, evaluate, refit on all data, write the bundle and plots, log one MLflow run and
    register a version of `shoprec`. See the module docstring for what the run carries."""
    import time

    import mlflow

    from training import evaluate as ev
    from training import tracking
    from training.bundle import write_bundle
    from training.data import load_train_data

    client = tracking.configure(ws)
    snapshot = tracking.data_hash(ws)
    started = time.perf_counter()
    model, metrics, train_data, split = fit_and_evaluate(ws, config)
    fit_seconds = time.perf_counter() - started
    # plots now, the bundle later; removed when the run is logged (or by its finaliser on an error)
    tmp = tempfile.TemporaryDirectory(prefix="shoprec-train-")
    # The plots read the split; drawn now, its arrays are freed before the refit loads all data
    # (on a million-customer shop they are gigabytes that the refit's peak would otherwise carry).
    plots_dir = Path(tmp.name) / "plots"
    extra = _plots(model, metrics, train_data, split, plots_dir, config) if config.plots else {}
    split_meta = getattr(split, "meta", {}) or {}
    del train_data, split

    full = load_train_data(ws)
    if config.refit:
        log.info(
            "refitting %s on all data (%d users) for serving; metrics above are from the %s split",
            config.model,
            full.n_users,
            config.split,
        )
        params = refit_params(model, config.params)
        if params != config.params:
            log.info("refit for the %s epochs validation chose", params["epochs"])
        serving_model = build_model(config.model, params).fit(full)
    else:
        log.info(
            "refit skipped: the bundle ships the model fitted on the %s split's training part", config.split
        )
        serving_model = model

    fit_warnings = tuple(dict.fromkeys([*model.fit_warnings, *serving_model.fit_warnings]))
    # what a served request costs: the model that goes into the bundle, one customer at a time
    latency = ev.score_latency(serving_model, full)
    task = "complements" if config.model in COMPLEMENT_MODELS else "recommend"
    tags = {
        "model": config.model,
        "split": config.split,
        "data_hash": snapshot,
        "code_version": tracking.code_version() or "unknown",
        "task": task,
        "refit": str(config.refit).lower(),
        "exclude_seen": config.exclude_seen,
        # at most this many held-out customers evaluated (a seeded sample above it): promote compares
        # versions evaluated on the same customers only
        "eval_customers": str(ev.EVAL_CUSTOMERS),
    }
    compared = _comparison(client, snapshot, config, task)
    exp_id = tracking.experiment_id(client, tracking.EXPERIMENT, ws)
    plot_files: list[str] = []
    with (
        tmp,
        mlflow.start_run(experiment_id=exp_id, run_name=f"{config.model}-{config.split}") as run,
    ):
        run_id = run.info.run_id
        mlflow.set_tags(tags)
        if fit_warnings:
            mlflow.set_tag("fit_warnings", _param(" | ".join(fit_warnings)))
        mlflow.log_params({k: _param(v) for k, v in model.config.to_dict().items()})
        tracking.log_metrics(metrics)
        tracking.log_metrics(latency)
        mlflow.log_metric("fit_seconds", fit_seconds)
        _log_history(model)
        if (epochs := chosen_epochs(model)) is not None:
            mlflow.log_metric("chosen_epochs", epochs)
            mlflow.set_tag("early_stopping", "valid ndcg@10")
        if config.plots:
            tracking.log_metrics(extra)
            mlflow.log_artifacts(str(plots_dir), "plots")
            plot_files = sorted(f"plots/{p.name}" for p in plots_dir.glob("*.png"))
        bundle_dir = write_bundle(
            serving_model, ws, Path(tmp.name) / "bundle", data=full, metrics=metrics, data_hash=snapshot
        )
        mlflow.log_artifacts(str(bundle_dir), "bundle")

    version = None
    if config.register:
        tracking.ensure_registered_model(client)
        mv = client.create_model_version(
            tracking.REGISTERED_MODEL,
            source=f"runs:/{run_id}/bundle",
            run_id=run_id,
            tags=tags,
            description=f"{config.model} on the {config.split} split",
        )
        version = str(mv.version)
        log.info("registered %s version %s (run %s)", tracking.REGISTERED_MODEL, version, run_id)
    # The card is written last: it names the registered version.
    card = _card(
        config,
        model,
        metrics,
        full,
        split_meta,
        tags,
        run_id,
        version,
        fit_seconds,
        compared,
        plot_files,
        latency,
    )
    tracking.log_card(client, run_id, card)
    return TrainResult(
        run_id=run_id,
        model=config.model,
        version=version,
        metrics=metrics,
        split=config.split,
        comparison=compared,
        fit_seconds=fit_seconds,
        card=card,
        warnings=fit_warnings,
        latency=latency,
    )


def _card(
    config: TrainConfig,
    model: Recommender,
    metrics: dict[str, float],
    full: TrainData,
    split_meta: dict[str, Any],
    tags: dict[str, str],
    run_id: str,
    version: str | None,
    fit_seconds: float,
    compared: Comparison | None,
    plot_files: list[str],
    latency: dict[str, float] | None = None,
) -> str:
    """The run's model card (training/card.py) from what `train` knows once the run is logged."""
    from training.card import RunFacts, train_card

    return train_card(
        RunFacts(
            model=config.model,
            split=config.split,
            metrics=metrics,
            params=model.config.to_dict(),
            data_hash=tags["data_hash"],
            n_users=full.n_users,
            n_items=full.n_items,
            n_interactions=int(full.user_items.nnz),
            split_meta=split_meta,
            exclude_seen=config.exclude_seen,
            refit=config.refit,
            task=tags["task"],
            run_id=run_id,
            version=version,
            code_version=tags["code_version"],
            fit_seconds=fit_seconds,
            chosen_epochs=chosen_epochs(model),
            comparison=compared,
            plots=tuple(plot_files),
            latency=latency or {},
        )
    )


def _comparison(client: Any, snapshot: str, config: TrainConfig, task: str) -> Comparison | None:
    """The champion and best other versions evaluated like this run (None for complements models,
    which never compete for `champion`)."""
    if task != "recommend":
        return None
    from training.promote import comparison

    return comparison(client, snapshot, config.split, config.exclude_seen)


def _log_history(model: Recommender) -> None:
    """Per-epoch metrics a model recorded during its fit (SASRec's `history`: training loss and
    validation NDCG@10) as MLflow step metrics, so the run page draws the learning curve."""
    import math

    import mlflow

    for step, h in enumerate(getattr(model, "history", None) or []):
        values = {"train_loss": h.get("train_loss"), "valid_ndcg_at_10": h.get("valid")}
        clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        if clean:
            mlflow.log_metrics(clean, step=int(h.get("epoch", step)))


def _param(value: Any) -> Any:
    """MLflow params are strings of at most 6000 characters; long lists are cut with a marker."""
    text = str(value)
    return text if len(text) <= 500 else text[:480] + "...(cut)"


def _plots(
    model: Recommender,
    metrics: dict[str, float],
    train_data: TrainData,
    split: Any,
    out: Path,
    config: TrainConfig,
) -> dict[str, float]:
    """The run's plots into `out`: the Recall@K curve, the per-segment bars, the learning curve
    (models that record per-epoch history) and the popularity plot; returns the popularity medians."""
    from training import evaluate as ev
    from training import plots
    from training.base import History

    out.mkdir(parents=True, exist_ok=True)
    plots.recall_curve(
        metrics, out / "recall_at_k.png", title=f"{config.model}: ranking quality on {config.split}"
    )
    plots.segment_bars(metrics, out / "segments.png", title=f"{config.model}: NDCG@10 per customer segment")
    plots.learning_curve(
        getattr(model, "history", None) or [],
        out / "learning_curve.png",
        title=f"{config.model}: learning curve",
    )
    if config.model in COMPLEMENT_MODELS:
        return {}
    test = getattr(split, "test", None)
    if test is None or len(test) == 0:
        return {}
    users = np.unique(np.asarray(test["user_idx"], dtype=np.int64))
    # a histogram of popularity needs no more customers than this (a seeded sample on a big shop:
    # next-basket took ~15 minutes for the 100,000 of the 1M-customer shop's evaluation)
    users = ev.evaluated_users(users[users < train_data.n_users], min(ev.EVAL_CUSTOMERS, PLOT_CUSTOMERS))
    test = test[np.isin(np.asarray(test["user_idx"], dtype=np.int64), users)]
    if users.size == 0:
        return {}
    history = History.of(train_data, users)
    ids, _ = model.recommend(users, history, k=10, exclude=history.user_items)
    popularity = np.asarray((train_data.user_items > 0).sum(axis=0)).ravel()
    return plots.popularity_plot(
        ids,
        np.asarray(test["item_idx"]),
        popularity,
        out / "popularity.png",
        title=f"{config.model}: popularity of top-10 vs bought",
    )
