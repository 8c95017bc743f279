"""`shoprec tune`: an Optuna study per model over its search space, each trial an MLflow run.

- Objective: the validation part of the split (never the test part, which `train` and `promote`
  report), full ranking, default `ndcg@10`, maximised.
- Pruning: iterative models call `fit(..., callback=cb)` once per step (ALS iteration, SASRec
  epoch); the callback reports the validation metric (the model's own, or an evaluation every
  `eval_every` steps) and MedianPruner stops trials that trail the median of earlier trials.
- Storage: SQLite `ws.optuna_uri` by default; a PostgreSQL URL lets several workers (processes or
  machines) share one study; each trial records which worker ran it.
- Best params are kept with the study (`study.user_attrs["best_params"]`, and every trial's full
  model config in its user attrs) so `shoprec train --params-from-study NAME` reuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from training.train import StrictConfig

if TYPE_CHECKING:
    import optuna

    from features.workspace import Workspace
    from training.base import Recommender

from training.space import Param

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneConfig(StrictConfig):
    model: str
    trials: int = 20
    study: str | None = None  # default: shoprec-<model>-<split>
    storage: str | None = None  # default: ws.optuna_uri (SQLite); a PostgreSQL URL for several workers
    split: str = "loo"
    metric: str = "ndcg@10"  # on the split's validation part, maximised
    exclude_seen: str = "learned"
    seed: int | None = None  # sampler seed; None = different per worker (needed when sharing a study)
    eval_every: int = 2  # steps between validation evaluations inside an iterative fit (pruning)
    n_startup_trials: int = 3  # MedianPruner: never prune before this many trials completed
    n_warmup_steps: int = 2  # MedianPruner: never prune a trial before this step
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.exclude_seen not in ("learned", "always", "never"):
            raise ValueError(f"exclude_seen must be learned, always or never, got {self.exclude_seen!r}")

    @property
    def study_name(self) -> str:
        return self.study or f"shoprec-{self.model}-{self.split}"


@dataclass(frozen=True)
class TuneResult:
    study: str
    storage: str
    model: str
    metric: str
    best_value: float | None
    best_params: dict[str, Any]
    n_trials: int  # in the whole study (all workers)
    n_complete: int
    n_pruned: int
    # For the person reading the terminal (not in the JSON line): the best trial's number, the
    # study's best finished trials as (number, value), best first, and the trials this process ran.
    best_trial: int | None = None
    top: tuple[tuple[int, float], ...] = ()
    n_ran: int = 0

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("best_trial", "top", "n_ran"):
            out.pop(key)
        return out


def search_space(model: str) -> tuple[Param, ...]:
    """The dimensions searched for `model`: its class's `search_space`, filtered to its config's
    fields (a renamed field narrows the search instead of crashing every trial)."""
    from training.models import get_model_class

    klass = get_model_class(model)
    if not klass.search_space:
        raise ValueError(f"model {model!r} declares no search space (Recommender.search_space)")
    fields = {f.name for f in dataclasses.fields(klass.Config)}
    space = tuple(p for p in klass.search_space if p.name in fields)
    if not space:
        raise ValueError(
            f"none of the search dimensions for {model!r} ({', '.join(p.name for p in klass.search_space)}) "
            f"is a field of its config ({', '.join(sorted(fields))})"
        )
    return space


def storage_url(ws: Workspace, storage: str | None) -> str:
    return storage or os.environ.get("OPTUNA_STORAGE") or ws.optuna_uri


def open_storage(url: str, attempts: int = 6) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for `url`. Workers that start together on a fresh database race to
    create the schema (PostgreSQL then refuses the second CREATE TYPE): the loser waits and
    retries, by which time the schema exists."""
    import random
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=None)
        except (IntegrityError, ProgrammingError, OperationalError) as e:
            if attempt == attempts - 1:
                raise
            log.info("optuna storage not ready (%s), retrying", type(e).__name__)
            time.sleep(0.5 * (attempt + 1) + random.random())
    raise AssertionError("unreachable")


def worker_id() -> str:
    """host:pid, recorded on every trial (which worker of a shared study ran it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def tune(ws: Workspace, config: TuneConfig) -> TuneResult:
    """Run `config.trials` trials of `config.model` in the (possibly shared) study; returns the
    study's best so far (over every worker's trials)."""
    import mlflow
    import optuna

    from training import tracking
    from training.card import trial_card
    from training.data import load_split
    from training.train import TrainConfig, build_model, evaluate_model

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space(config.model)
    storage = storage_url(ws, config.storage)
    if storage.startswith("sqlite:///"):
        ws.root.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=config.study_name,
        storage=open_storage(storage),
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps
        ),
    )
    owner = study.user_attrs.get("model")
    if owner is None:
        study.set_user_attr("model", config.model)
        study.set_user_attr("metric", config.metric)
        study.set_user_attr("split", config.split)
    elif owner != config.model:
        raise ValueError(
            f"study {config.study_name!r} tunes {owner!r}, not {config.model!r}: pick another --study"
        )

    client = tracking.configure(ws)
    exp_id = tracking.experiment_id(client, tracking.TUNE_EXPERIMENT, ws)
    snapshot = tracking.data_hash(ws)
    code = tracking.code_version() or "unknown"
    split = load_split(ws, config.split)
    train_data = split.train  # the split's leak-free training part
    me = worker_id()
    k_metric = config.metric

    def objective(trial: optuna.Trial) -> float:
        params = {p.name: p.suggest(trial) for p in space}
        tc = TrainConfig(
            model=config.model,
            params=params,
            split=config.split,
            exclude_seen=config.exclude_seen,
            register=False,
            plots=False,
        )
        model = build_model(config.model, params)
        # A model that stops early scores itself on validation after every epoch; the same number
        # drives pruning (fit ignores the hook for other models).
        validation = (
            (lambda m: evaluate_model(m, split, tc, on="valid")[k_metric]) if model.early_stopping else None
        )
        trial.set_user_attr("config", _jsonable(model.config.to_dict()))
        trial.set_user_attr("worker", me)
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{config.study_name}-{trial.number}") as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.set_tags(
                {
                    "study": config.study_name,
                    "trial": str(trial.number),
                    "model": config.model,
                    "split": config.split,
                    "data_hash": snapshot,
                    "code_version": code,
                    "worker": me,
                }
            )
            mlflow.log_params({k: str(v) for k, v in model.config.to_dict().items()})
            callback = _pruning_callback(trial, model, split, tc, k_metric, config.eval_every)
            card = functools.partial(
                trial_card,
                study=config.study_name,
                trial=trial.number,
                model=config.model,
                split=config.split,
                metric=k_metric,
                params=model.config.to_dict(),
                best_before=_best_so_far(study),
                data_hash=snapshot,
            )
            try:
                model.fit(train_data, callback=callback, validation=validation)
            except optuna.TrialPruned as e:
                mlflow.set_tag("state", "pruned")
                tracking.log_card(client, run.info.run_id, card(metrics=None, state=f"pruned ({e})"))
                raise
            metrics = evaluate_model(model, split, tc, on="valid")
            if k_metric not in metrics:
                raise ValueError(f"metric {k_metric!r} not produced; available: {sorted(metrics)}")
            tracking.log_metrics(metrics, prefix="valid/")
            mlflow.set_tag("state", "complete")
            tracking.log_card(client, run.info.run_id, card(metrics=metrics, state="complete"))
            return float(metrics[k_metric])

    study.optimize(
        objective,
        n_trials=config.trials,
        timeout=config.timeout_s,
        show_progress_bar=True,
        catch=(FloatingPointError,),
    )
    return _result(study, storage, config, worker=me)


def _pruning_callback(
    trial: optuna.Trial, model: Recommender, split: Any, tc: Any, metric: str, eval_every: int
) -> Callable[[int, dict[str, float] | None], None]:
    """`callback(step, metrics)` for iterative fits: report the validation metric and prune.

    Uses the model's own `metrics[metric]` when it reports one; otherwise evaluates the partly
    trained model on the validation part every `eval_every` steps (skipped when the model cannot
    score mid-fit)."""
    import optuna

    from training.train import evaluate_model

    def callback(step: int, metrics: dict[str, float] | None = None) -> None:
        metrics = metrics or {}
        # the model's own validation score (SASRec's hook reports it as "valid")
        value = metrics.get(metric, metrics.get("valid"))
        if value is None and (step + 1) % max(eval_every, 1) == 0:
            try:
                value = evaluate_model(model, split, tc, on="valid").get(metric)
            except Exception as e:  # the model cannot score mid-fit: no intermediate value
                log.debug("no intermediate evaluation at step %d: %s", step, e)
                value = None
        if value is None:
            return
        trial.report(float(value), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"step {step}: {metric}={value:.4f} below the median of earlier trials")

    return callback


def _best_so_far(study: optuna.Study) -> tuple[int, float] | None:
    """(trial number, value) of the study's best finished trial so far, None before the first."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    return best.number, float(best.value)


def _result(study: optuna.Study, storage: str, config: TuneConfig, worker: str | None = None) -> TuneResult:
    import optuna

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    best_value, best_params, best_trial = None, {}, None
    if complete:
        best = study.best_trial
        best_value = float(best.value)
        best_params = dict(best.params)
        best_trial = best.number
        study.set_user_attr("best_params", best_params)
        study.set_user_attr("best_trial", best.number)
    top = sorted(((t.number, float(t.value)) for t in complete), key=lambda p: (-p[1], p[0]))[:5]
    return TuneResult(
        study=study.study_name,
        storage=_redact(storage),
        model=config.model,
        metric=config.metric,
        best_value=best_value,
        best_params=best_params,
        n_trials=len(trials),
        n_complete=len(complete),
        n_pruned=len(pruned),
        best_trial=best_trial,
        top=tuple(top),
        n_ran=sum(1 for t in trials if worker is not None and t.user_attrs.get("worker") == worker),
    )


def best_params(ws: Workspace, study: str, storage: str | None = None) -> tuple[str, dict[str, Any]]:
    """(model name, best params) of a finished study, for `shoprec train --params-from-study`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(ws, storage)
    try:
        s = optuna.load_study(study_name=study, storage=open_storage(url))
    except KeyError:
        raise LookupError(f"no study {study!r} in {_redact(url)}: run `shoprec tune` first") from None
    model = s.user_attrs.get("model")
    try:
        best = s.best_trial
    except ValueError:
        raise LookupError(f"study {study!r} has no completed trial yet") from None
    return model, dict(best.params)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _redact(url: str) -> str:
    """Hide a password in a storage URL before it is printed."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
