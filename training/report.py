"""Short tables for a person reading `shoprec train`, `tune` and `promote` in a terminal: the
headline metrics, the decision and why. The full metrics, plots and model card are in MLflow; the
JSON line a scheduler parses is printed last on stdout by the commands, unchanged.

Each function returns (heading, rich table, lines) and touches no store, so tests read exactly
what a person sees (`features.console.show` prints them on stderr).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from training.card import headline
from training.plots import segment_label, segment_metrics

if TYPE_CHECKING:
    from rich.table import Table

    from training.promote import Decision
    from training.train import TrainResult
    from training.tune import TuneResult


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def train_report(r: TrainResult) -> tuple[str, Table, list[str]]:
    """Headline test metrics overall and per customer segment; then the registration and how the
    run stands against the champion."""
    from rich.table import Table

    n = int(r.metrics.get("n_users", r.metrics.get("n_baskets", 0)))
    what = "baskets" if "n_baskets" in r.metrics else "customers"
    table = Table()
    heldout = int(r.metrics.get("n_users_heldout", 0))  # a big shop's evaluation is a sample
    sample = f"a sample of {n:,} of {heldout:,} {what}" if heldout > n else f"{n:,} {what}"
    table.add_column(f"test part ({sample})" if n else "test part")
    table.add_column(r.model, justify="right")
    champ = r.comparison.champion if r.comparison else None
    show_champ = champ is not None and champ.score is not None
    if show_champ:
        table.add_column(f"champion v{champ.version} ({champ.model})", justify="right")
    task = "complements" if "n_baskets" in r.metrics else "recommend"
    for key, value in headline(r.metrics, task):
        row = [key, _f(value)]
        if show_champ:
            row.append(_f(champ.metrics.get(key)))
        table.add_row(*row)
    segs = segment_metrics(r.metrics, "ndcg@10")
    if segs:
        table.add_section()
    for seg, (value, count) in segs.items():
        row = [f"ndcg@10 · {segment_label(seg)} ({count:,})", _f(value)]
        if show_champ:
            row.append(_f(champ.metrics.get(f"ndcg@10/{seg}")))
        table.add_row(*row)
    if not r.metrics:
        table.add_row("not evaluated", "–", *([""] if show_champ else []))

    lines = []
    reg = f"registered shoprec version {r.version}" if r.version else "not registered (--no-register)"
    took = f" · fit + evaluation {r.fit_seconds:.1f} s" if r.fit_seconds is not None else ""
    lines.append(f"{reg} · MLflow run {r.run_id}{took}")
    if r.latency:
        lines.append(
            f"scores one customer in {r.latency['score_ms']:.2f} ms (median; p99 "
            f"{r.latency['score_ms_p99']:.2f} ms), as a served request asks it"
        )
    if r.comparison is not None:
        lines.append("decision: " + r.comparison.verdict(r.metrics.get(r.comparison.metric)))
    else:
        lines.append("decision: a complements model (bought together): serving uses it beside the champion")
    lines.append("every metric, the plots and the model card: in the MLflow run (`make mlflow-ui`)")
    return f"shoprec train: {r.model} on the {r.split} split", table, lines


def promote_report(d: Decision) -> tuple[str, Table, list[str]]:
    """The versions that competed, best first, with their score and alias; then the decision."""
    from rich.table import Table

    table = Table()
    table.add_column("version", justify="right")
    table.add_column("model")
    table.add_column(d.metric, justify="right")
    table.add_column("alias")
    shown = 0
    for r in d.board:
        if r.score is None:
            continue
        style = "bold green" if r.role == "champion" else None
        role = r.role + (" (new)" if r.role == "champion" and d.promoted else "")
        table.add_row(f"v{r.version}", r.model, _f(r.score), role, style=style)
        shown += 1
        if shown == 8:
            break
    skipped = sum(1 for r in d.board if r.score is None)
    lines = [("[bold green]PROMOTED[/]: " if d.promoted else "[bold]KEPT[/]: ") + d.reason]
    if d.challenger:
        lines.append(f"challenger (runner-up, for A/B tests): version {d.challenger}")
    if d.over_budget:
        lines.append(
            f"over the serving budget of {d.max_score_ms:g} ms to score one customer, not competing: "
            + ", ".join(
                f"v{v} {ms:.1f} ms" for v, ms in sorted(d.over_budget.items(), key=lambda kv: int(kv[0]))
            )
        )
    if d.reevaluated:
        lines.append("re-evaluated on the current data: " + ", ".join(f"v{v}" for v in d.reevaluated))
    if skipped:
        lines.append(
            f"{skipped} older version(s) evaluated on another data snapshot or split did not compete "
            "(their numbers are not comparable)"
        )
    return f"shoprec promote: {d.metric} on the {d.split} split", table, lines


def tune_report(r: TuneResult, data: str = "DIR") -> tuple[str, Table, list[str]]:
    """The best trial's parameters; then the study's counts, its top trials and what to run next."""
    from rich.table import Table

    table = Table()
    table.add_column("best trial" + (f" #{r.best_trial}" if r.best_trial is not None else ""))
    table.add_column("value", justify="right")
    table.add_row(f"{r.metric} (validation)", _f(r.best_value), style="bold")
    for k, v in r.best_params.items():
        table.add_row(k, _fmt_param(v))
    lines = [
        f"study {r.study} ({r.storage}): {r.n_ran} trials run here, {r.n_trials} in the study "
        f"({r.n_complete} complete, {r.n_pruned} pruned, {r.n_trials - r.n_complete - r.n_pruned} failed or running)"
    ]
    if r.top:
        lines.append("best trials: " + " · ".join(f"#{n} {v:.4f}" for n, v in r.top))
    if r.best_value is None:
        lines.append("decision: no trial finished yet; run more trials")
    else:
        lines.append(
            f"next: shoprec train --data {data} --model {r.model} --params-from-study {r.study} "
            "(registers a version; `shoprec promote` decides)"
        )
    lines.append(
        "every trial is an MLflow run (experiment shoprec-tune); `make optuna-dashboard` shows the study"
    )
    return f"shoprec tune: {r.model}", table, lines


def _fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
