"""`shoprec train|tune|promote`: thin commands over training's stage functions.

Each command parses its flags, calls one stage function, and prints one JSON line last (stdout);
progress, log lines and a short table for a person (training/report.py) go to stderr. Heavy
imports (MLflow, Optuna, torch) happen inside the commands so `shoprec --help` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

DataOpt = Annotated[
    Path, typer.Option("--data", help="Workspace directory (features built with `shoprec features build`).")
]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged, not the stream of the first
    command that set logging up (in one process several commands run, each with its own stderr:
    tests, notebooks)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


def _setup_logging() -> None:
    """Log lines to stderr, so stdout keeps only the JSON result line; no exit-time noise."""
    from features.console import quiet_exit

    quiet_exit()
    root = logging.getLogger()
    if not any(getattr(h, "_shoprec", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._shoprec = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for name in ("training", "features", "serving"):
        logging.getLogger(name).setLevel(logging.INFO)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _ws(data: Path):
    from features.workspace import Workspace

    if not data.exists():
        raise _fail(f"workspace {data} does not exist")
    return Workspace.at(data)


def train_cmd(
    data: DataOpt,
    model: Annotated[
        str, typer.Option(help="Model name: popular, als, bpr, itemknn, ease, sasrec, bought-together, ...")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one config value of the model, key=value (repeatable)."),
    ] = None,
    split: Annotated[str, typer.Option(help="Evaluation split: loo, time or random.")] = "loo",
    params_from_study: Annotated[
        str | None, typer.Option(help="Start from the best params of this Optuna study (then --set on top).")
    ] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL for --params-from-study.")] = None,
    refit: Annotated[
        bool, typer.Option(help="Refit on all data before registering (metrics stay from the split).")
    ] = True,
    register: Annotated[bool, typer.Option(help="Register a version of the model `shoprec`.")] = True,
    exclude_seen: Annotated[
        str, typer.Option(help="Past items in evaluation: learned, always or never.")
    ] = "learned",
) -> None:
    """Fit one model, evaluate it (full ranking), log it to MLflow and register a version.

    Shows the headline metrics (overall and per customer segment) and how the model stands against
    the champion on stderr; prints one JSON line last on stdout: {"run_id", "model", "version",
    "metrics"} (every metric). The MLflow run holds the metrics, plots and the model card.
    """
    _setup_logging()
    from training.train import TrainConfig, parse_sets, train
    from training.tune import best_params

    ws = _ws(data)
    try:
        params: dict = {}
        if params_from_study:
            study_model, params = best_params(ws, params_from_study, storage)
            if study_model and study_model != model:
                raise ValueError(f"study {params_from_study!r} tuned {study_model!r}, not {model!r}")
            logging.getLogger("training").info("params from study %s: %s", params_from_study, params)
        params.update(parse_sets(set_ or []))
        config = TrainConfig(
            model=model, params=params, split=split, refit=refit, register=register, exclude_seen=exclude_seen
        )
        result = train(ws, config)
    except (ValueError, LookupError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    from features.console import show
    from training.report import train_report

    show(*train_report(result))
    typer.echo(json.dumps(result.to_json(), default=float))


def tune_cmd(
    data: DataOpt,
    model: Annotated[str, typer.Option(help="Model to tune.")],
    trials: Annotated[int, typer.Option(min=1, help="Trials to run in this process.")] = 20,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL (default: SQLite optuna.db in the workspace; "
            "postgresql://... to share the study between workers)."
        ),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default shoprec-<model>-<split>).")] = None,
    split: Annotated[str, typer.Option(help="Split whose validation part is the objective.")] = "loo",
    metric: Annotated[str, typer.Option(help="Objective on the validation part, maximised.")] = "ndcg@10",
    seed: Annotated[
        int | None, typer.Option(help="Sampler seed (leave unset when several workers share a study).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after this many seconds.")
    ] = None,
    exclude_seen: Annotated[
        str, typer.Option(help="Past items in the validation ranking: learned, always or never.")
    ] = "learned",
) -> None:
    """Optuna study over the model's search space; every trial is an MLflow run.

    Shows the best trial's parameters and what to run next on stderr; prints one JSON line last on
    stdout: {"study", "best_value", "best_params", "n_trials", ...}.
    """
    _setup_logging()
    from training.tune import TuneConfig, tune

    ws = _ws(data)
    try:
        config = TuneConfig(
            model=model,
            trials=trials,
            study=study,
            storage=storage,
            split=split,
            metric=metric,
            seed=seed,
            timeout_s=timeout,
            exclude_seen=exclude_seen,
        )
        result = tune(ws, config)
    except (ValueError, LookupError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    from features.console import show
    from training.report import tune_report

    show(*tune_report(result, str(data)))
    typer.echo(json.dumps(result.to_json(), default=str))


def promote_cmd(
    data: DataOpt,
    metric: Annotated[str, typer.Option(help="Metric to compare on (higher is better).")] = "ndcg@10",
    split: Annotated[str, typer.Option(help="Split the comparison is made on.")] = "loo",
    min_delta: Annotated[float, typer.Option(help="Margin a challenger must beat the champion by.")] = 0.0,
    max_score_ms: Annotated[
        float,
        typer.Option(
            min=0,
            help="Serving budget: a version that takes longer (median, one customer, measured by "
            "`shoprec train`) takes neither alias, and a champion over it gives way. 0: no budget.",
        ),
    ] = 10.0,
) -> None:
    """Move the alias `champion` to the best version, only if it beats the current champion on the
    same split and metric; `challenger` marks the runner-up. Shows the versions that competed and
    the decision on stderr; prints the decision as one JSON line last on stdout.

    Ties: a version must score strictly above the champion (by more than --min-delta) to take it;
    an equal score keeps the champion. Among versions with equal scores the simpler, cheaper model
    is preferred (popular < itemknn < ease < als < bpr < bought-together < repeat-blend < sasrec),
    then the earlier-registered version.

    Serving cost: `shoprec train` times the model it bundles scoring one customer at a time, as a
    served request does; a version whose median is over --max-score-ms does not compete (default
    10 ms, about the most a score may take for the service's 25 ms p99 under some load; one worker
    at ~200 requests a second has 5 ms a request for everything)."""
    _setup_logging()
    from training.promote import PromoteConfig, PromotionError, promote

    ws = _ws(data)
    try:
        budget = max_score_ms if max_score_ms > 0 else None
        decision = promote(
            ws, PromoteConfig(metric=metric, split=split, min_delta=min_delta, max_score_ms=budget)
        )
    except (PromotionError, ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    from features.console import show
    from training.report import promote_report

    show(*promote_report(decision))
    typer.echo(json.dumps(decision.to_json()))


def segments_cmd(
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Output file, .csv or .parquet.")],
    segment: Annotated[
        str | None,
        typer.Option(help="Keep only this segment: new, active, vip, at_risk or lapsed (default: all)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Segment thresholds from a TOML or JSON file (features.lifecycle.SegmentConfig)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override one threshold, key=value (repeatable), e.g. at_risk_p_alive=0.4."
        ),
    ] = None,
) -> None:
    """One row per customer: user_id, segment, recency_days, frequency, monetary, p_alive,
    expected_purchases_90d, clv_90d (BG/NBD + Gamma-Gamma fitted on the workspace's purchases).

    Segments, first rule that matches (C = the shop's purchase cycle): new (first seen within 4 C),
    lapsed (silent > 4 C or p_alive < 0.2), at_risk (silent > 2 C or p_alive < 0.5), vip (top
    frequency and spend quintiles), active. Thresholds: --config FILE and --set key=value.
    Prints one JSON line last: counts per segment, the fitted parameters, warnings."""
    _setup_logging()
    from features.lifecycle import SEGMENTS, SegmentConfig
    from training.segments import customer_segments, write_segments
    from training.train import parse_sets

    ws = _ws(data)
    try:
        if segment is not None and segment not in SEGMENTS:
            raise ValueError(f"unknown segment {segment!r}; choose one of {', '.join(SEGMENTS)}")
        rules = SegmentConfig.from_file(config) if config is not None else SegmentConfig()
        if set_:
            rules = SegmentConfig.from_dict({**rules.to_dict(), **parse_sets(set_)})
        result = customer_segments(ws, rules)
        frame = result.frame if segment is None else result.frame[result.frame["segment"] == segment]
        path = write_segments(frame, out)
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    for note in result.warnings:
        logging.getLogger("training").warning(note)
    typer.echo(json.dumps({"out": str(path), "rows": len(frame), **result.summary()}, default=float))


def register(app: typer.Typer) -> None:
    """Add training's commands to the root app."""
    app.command("train")(train_cmd)
    app.command("tune")(tune_cmd)
    app.command("promote")(promote_cmd)
    app.command("segments")(segments_cmd)
