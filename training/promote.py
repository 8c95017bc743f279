"""`shoprec promote`: move the registry alias `champion` to the best version of `shoprec`, only when
it beats the current champion on the same evaluation; `challenger` marks the runner-up (serving's
A/B test uses it).

"The same evaluation" means the same split, the same metric, the same re-buy exclusion rule and the
same data snapshot (the validated tables' hash). Versions trained on another snapshot are not
compared by their logged numbers: they are refitted with their own config on the current split's
training part and evaluated again, so a champion is never kept (or beaten) on stale numbers.

Ties: a version takes `champion` only with a score strictly above the champion's (plus
`min_delta`); an equal score keeps the champion. Among versions with equal scores, the simpler and
cheaper model is preferred (each model class's `cost`: popular < itemknn < ease < als < bpr <
bought-together < repeat-blend < sasrec; unknown models last), then the earlier-registered version: a tie must not
hand serving the most expensive model only because it was trained last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from training.card import Comparison, Rival
from training.train import StrictConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from features.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromoteConfig(StrictConfig):
    metric: str = "ndcg@10"  # higher is better
    split: str = "loo"
    exclude_seen: str = "learned"
    # A candidate must beat the champion by more than this (absolute) to take the alias: ties and
    # noise-level differences keep the serving model stable.
    min_delta: float = 0.0
    # Serving budget: a version whose median time to score one customer (`score_ms`, measured by
    # `shoprec train`, training.evaluate.score_latency) is above this many milliseconds takes neither
    # alias, and a champion above it gives `champion` up. 10 ms is about the most a model's score
    # may take for a request to keep the service's 25 ms p99 under some load; one worker at ~200
    # requests a second has 5 ms a request for everything (a shop there sets 5 or adds workers).
    # None: no budget. Versions trained before the measurement existed have no `score_ms` and are
    # not held to it.
    max_score_ms: float | None = 10.0

    def __post_init__(self) -> None:
        if self.max_score_ms is not None and self.max_score_ms <= 0:
            raise ValueError(f"max_score_ms must be > 0 or None, got {self.max_score_ms}")


@dataclass
class Scored:
    """One registered version and its score on the current evaluation."""

    version: str
    model: str
    run_id: str
    score: float | None
    fresh: bool  # score logged on the current snapshot/split, not re-evaluated
    metrics: dict[str, float] = field(default_factory=dict)  # every logged metric, when fresh


@dataclass(frozen=True)
class Decision:
    promoted: bool
    metric: str
    split: str
    champion: str | None  # the version holding `champion` after the decision
    previous_champion: str | None
    candidate: str | None  # the best version that competed
    candidate_model: str | None
    candidate_score: float | None
    champion_score: float | None  # the previous champion's score on the same evaluation
    challenger: str | None
    reason: str
    reevaluated: list[str] = field(default_factory=list)
    # Versions left out for their serving cost: version -> its median ms to score one customer.
    over_budget: dict[str, float] = field(default_factory=dict)
    max_score_ms: float | None = None
    # Every version that competed, with its score and alias after the decision (for the table and
    # the card; not part of the JSON line, which a scheduler parses).
    board: tuple[Rival, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("board")
        return out


def preference(s: Scored) -> tuple[float, int, int]:
    """Sort key, larger = preferred: the higher score, then the cheaper model (its class's `cost`),
    then the
    earlier-registered version. A version without a score sorts last."""
    score = float("-inf") if s.score is None else float(s.score)
    rank = _cost(s.model)
    return (score, -rank, -int(s.version))


class PromotionError(RuntimeError):
    """Nothing can be promoted (no registered versions, or none with the metric)."""


def scored_versions(
    client: MlflowClient, snapshot: str, split: str, exclude_seen: str, metric: str
) -> dict[str, Scored]:
    """Every registered `recommend` version of `shoprec`, with its logged `metric` when it was
    evaluated the same way (same data snapshot, split and re-buy rule), else score None."""
    from mlflow.exceptions import MlflowException

    from training import tracking

    key = tracking.to_mlflow_key(metric)
    try:
        versions = client.search_model_versions(f"name='{tracking.REGISTERED_MODEL}'")
    except MlflowException:
        versions = []
    scored: dict[str, Scored] = {}
    for mv in versions:
        run = client.get_run(mv.run_id)
        tags = run.data.tags
        if tags.get("task", "recommend") != "recommend":
            continue  # complements models answer another question
        fresh = (
            tags.get("data_hash") == snapshot
            and tags.get("split") == split
            and tags.get("exclude_seen", exclude_seen) == exclude_seen
            and key in run.data.metrics
            and same_customers(tags, run.data.metrics)
        )
        score = float(run.data.metrics[key]) if fresh else None
        metrics = tracking.run_metrics_of(run) if fresh else {}
        scored[str(mv.version)] = Scored(
            str(mv.version), tags.get("model", "?"), mv.run_id, score, fresh, metrics
        )
    return scored


def same_customers(tags: dict[str, str], metrics: dict[str, float]) -> bool:
    """Whether a run was evaluated on the customers an evaluation now takes: with today's cap on the
    held-out customers (`training.evaluate.EVAL_CUSTOMERS`), or before the cap existed on no more
    customers than it (then it evaluated every one of them, as now)."""
    from training.evaluate import EVAL_CUSTOMERS

    if "eval_customers" in tags:
        return tags["eval_customers"] == str(EVAL_CUSTOMERS)
    return metrics.get("n_users", 0.0) <= EVAL_CUSTOMERS


def champion_version(client: MlflowClient, alias: str = "champion") -> str | None:
    """The version the alias points at, or None."""
    from mlflow.exceptions import MlflowException

    from training import tracking

    try:
        return str(client.get_model_version_by_alias(tracking.REGISTERED_MODEL, alias).version)
    except MlflowException:
        return None


def comparison(
    client: MlflowClient, snapshot: str, split: str, exclude_seen: str, metric: str = "ndcg@10", top: int = 5
) -> Comparison:
    """What a new run on (snapshot, split, exclude_seen) is compared with: the current champion
    (its score only when evaluated the same way) and the `top` best other versions that were."""
    scored = scored_versions(client, snapshot, split, exclude_seen, metric)
    champ = champion_version(client)
    challenger = champion_version(client, "challenger")
    champion = None
    if champ is not None and champ in scored:
        s = scored[champ]
        champion = Rival(s.version, s.model, s.score, "champion", s.metrics)
    others = sorted(
        (s for s in scored.values() if s.score is not None and s.version != champ),
        key=preference,
        reverse=True,
    )
    rivals = tuple(
        Rival(s.version, s.model, s.score, "challenger" if s.version == challenger else "")
        for s in others[:top]
    )
    return Comparison(metric=metric, champion=champion, others=rivals)


def promote(ws: Workspace, config: PromoteConfig | None = None) -> Decision:
    """Decide and apply the `champion` / `challenger` aliases; log the decision as an MLflow run
    in the `shoprec-promote` experiment. Returns the decision (printed by the CLI)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from training import tracking
    from training.card import promote_card

    config = config or PromoteConfig()
    client = tracking.configure(ws)
    snapshot = tracking.data_hash(ws)

    scored = scored_versions(client, snapshot, config.split, config.exclude_seen, config.metric)
    if not scored:
        raise PromotionError(
            f"no registered version of {tracking.REGISTERED_MODEL!r} to promote: run `shoprec train` first"
        )
    previous = champion_version(client)
    if previous is not None and previous not in scored:
        previous = None  # the alias points at a complements version or a deleted one: treat as empty

    reevaluated: list[str] = []

    def score_of(v: str) -> float:
        s = scored[v]
        if s.score is None:
            s.score = _reevaluate(ws, client, s, config)
            reevaluated.append(v)
        return s.score

    over_budget = over_serving_budget(scored.values(), config.max_score_ms)
    eligible = [s for s in scored.values() if s.version not in over_budget]
    if not eligible:
        raise PromotionError(
            f"every registered version takes longer than --max-score-ms {config.max_score_ms:g} to score "
            f"one customer (medians {_ms_list(over_budget)}): train a cheaper model or raise the budget"
        )
    slow_champion = previous if previous in over_budget else None
    fresh = [s for s in eligible if s.fresh]
    # Nothing evaluated on this snapshot: the newest version competes after re-evaluation.
    newest = max(eligible, key=lambda s: int(s.version))
    candidate = max(fresh, key=preference) if fresh else newest
    cand_score = score_of(candidate.version)
    champ_score = score_of(previous) if previous is not None else None

    if slow_champion is not None:
        promoted, winner = True, candidate.version
        reason = (
            f"champion {previous} ({scored[previous].model}) takes {over_budget[previous]:.1f} ms to score "
            f"one customer, over the {config.max_score_ms:g} ms budget: version {candidate.version} "
            f"({candidate.model}) takes it"
        )
    elif previous is None:
        promoted, winner = True, candidate.version
        reason = f"no champion yet: version {candidate.version} ({candidate.model}) takes it"
    elif candidate.version == previous:
        promoted, winner = False, previous
        reason = f"version {previous} is the champion and still the best on {config.metric}"
    elif cand_score > champ_score + config.min_delta:
        promoted, winner = True, candidate.version
        reason = (
            f"version {candidate.version} ({candidate.model}) beats champion {previous} on "
            f"{config.metric}: {cand_score:.4f} > {champ_score:.4f}"
        )
    else:
        promoted, winner = False, previous
        reason = (
            f"version {candidate.version} ({candidate.model}) does not beat champion {previous} on "
            f"{config.metric}: {cand_score:.4f} <= {champ_score:.4f}"
        )

    if promoted:
        client.set_registered_model_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION, winner)
    # Runner-up among the versions scored on this evaluation (never the champion itself).
    others = [s for s in eligible if s.version != winner and s.score is not None]
    challenger = max(others, key=preference).version if others else None
    if challenger is not None:
        client.set_registered_model_alias(tracking.REGISTERED_MODEL, tracking.CHALLENGER, challenger)
    else:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model_alias(tracking.REGISTERED_MODEL, tracking.CHALLENGER)

    decision = Decision(
        promoted=promoted,
        metric=config.metric,
        split=config.split,
        champion=winner,
        previous_champion=previous,
        candidate=candidate.version,
        candidate_model=candidate.model,
        candidate_score=cand_score,
        champion_score=champ_score,
        challenger=challenger,
        reason=reason,
        reevaluated=reevaluated,
        over_budget=over_budget,
        max_score_ms=config.max_score_ms,
        board=tuple(
            Rival(
                s.version,
                s.model,
                s.score,
                "over budget" if s.version in over_budget else _role(s.version, winner, challenger),
            )
            for s in sorted(scored.values(), key=preference, reverse=True)
        ),
    )
    log.info("promotion: %s", reason)
    exp_id = tracking.experiment_id(client, tracking.PROMOTE_EXPERIMENT, ws)
    with mlflow.start_run(experiment_id=exp_id, run_name="promote") as run:
        mlflow.set_tags(
            {
                "decision": "promoted" if promoted else "kept",
                "champion": winner,
                "previous_champion": previous or "",
                "candidate": candidate.version,
                "challenger": challenger or "",
                "data_hash": snapshot,
                "split": config.split,
            }
        )
        mlflow.log_params(
            {
                "metric": config.metric,
                "split": config.split,
                "exclude_seen": config.exclude_seen,
                "min_delta": config.min_delta,
                "max_score_ms": config.max_score_ms,
            }
        )
        mlflow.log_metric("candidate_score", cand_score)
        if champ_score is not None:
            mlflow.log_metric("champion_score", champ_score)
        mlflow.log_text(json.dumps(decision.to_json(), indent=2), "decision.json")
        tracking.log_card(client, run.info.run_id, promote_card(decision.to_json(), decision.board))
    return decision


def over_serving_budget(versions: Any, max_score_ms: float | None) -> dict[str, float]:
    """The versions whose logged median `score_ms` is above `max_score_ms`: version -> that median.
    A version without the measurement (trained before it existed, or re-evaluated from another
    snapshot) is not held to the budget."""
    if max_score_ms is None:
        return {}
    return {
        s.version: s.metrics["score_ms"]
        for s in versions
        if s.metrics.get("score_ms") is not None and s.metrics["score_ms"] > max_score_ms
    }


def _ms_list(over: dict[str, float]) -> str:
    return ", ".join(f"v{v} {ms:.1f} ms" for v, ms in sorted(over.items(), key=lambda kv: int(kv[0])))


def _role(version: str, champion: str, challenger: str | None) -> str:
    return "champion" if version == champion else "challenger" if version == challenger else ""


def _reevaluate(ws: Workspace, client: MlflowClient, s: Scored, config: PromoteConfig) -> float:
    """Refit version `s` with its own saved config on the current split's training part and
    evaluate it the way fresh runs were evaluated; returns the metric."""
    from training import tracking
    from training.train import TrainConfig, fit_and_evaluate

    bundle = tracking.load_bundle_dir(f"models:/{tracking.REGISTERED_MODEL}/{s.version}", ws)
    meta = json.loads((bundle / "model" / "config.json").read_text())
    log.info(
        "re-evaluating version %s (%s) on the current %s split: its numbers come from another "
        "data snapshot or evaluation",
        s.version,
        meta["model"],
        config.split,
    )
    tc = TrainConfig(
        model=meta["model"],
        params=meta["config"],
        split=config.split,
        exclude_seen=config.exclude_seen,
        register=False,
        plots=False,
    )
    _, metrics, _, _ = fit_and_evaluate(ws, tc)
    if config.metric not in metrics:
        raise PromotionError(
            f"metric {config.metric!r} not produced by evaluation; available: {sorted(metrics)}"
        )
    return float(metrics[config.metric])


def _cost(model: str) -> int:
    """The model class's serving cost rank (Recommender.cost); unknown models last."""
    from training.models import get_model_class

    try:
        return int(get_model_class(model).cost)
    except (ValueError, ImportError):
        return 10**6
