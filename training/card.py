"""Model cards: the markdown a person reads as an MLflow run's description (the run's
`mlflow.note.content` tag, shown on the run page) and as its `model_card.md` artifact.

A training run's card says what data it learned from (the snapshot hash and its size), how it was
split and evaluated, its metrics overall and per customer segment, its configuration, and what it
was compared with (the champion and the other versions evaluated the same way). Tuning trials and
promotions get shorter cards. Cards hold aggregates only: never a customer id (contract, Privacy).
Pure functions of plain values, so tests and notebooks render them without MLflow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.plots import segment_label, segment_metrics

NOTE_TAG = "mlflow.note.content"  # MLflow shows this tag as the run's description
CARD_ARTIFACT = "model_card.md"

SPLITS = {
    "loo": "leave-last-out per customer: each customer's last purchase is the test target and the one "
    "before it the validation target; the model learns from everything before",
    "time": "a global cut-off date: the model learns from everything before it, the period after it is "
    "held out (validation, then test)",
    "random": "per customer 80/10/10 at random (RecBole's default protocol): time says nothing here",
}
EXCLUDE = {
    "learned": "past purchases come back only where the learned re-buy policy allows it",
    "always": "nothing the customer interacted with before is ranked",
    "never": "past items are ranked like any other",
}
HEADLINE = ("ndcg@10", "recall@10", "recall@20", "map@10", "coverage@10", "novelty@10")
BASKET_HEADLINE = ("basket_hit@10", "basket_ndcg@10", "basket_hit@20")


@dataclass(frozen=True)
class Rival:
    """Another registered version scored on the same evaluation (same data snapshot, split and
    re-buy rule); `score` None = evaluated differently, so its number is not comparable."""

    version: str
    model: str
    score: float | None
    role: str = ""  # "champion", "challenger" or ""
    metrics: dict[str, float] = field(default_factory=dict, compare=False)  # its run's, when comparable


@dataclass(frozen=True)
class Comparison:
    """What a run was compared with on `metric`: the champion and the best other versions."""

    metric: str
    champion: Rival | None = None
    others: tuple[Rival, ...] = ()  # best first, the champion not among them

    @property
    def best_other(self) -> Rival | None:
        return self.others[0] if self.others else None

    def verdict(self, score: float | None) -> str:
        """One sentence: how `score` stands against the champion on the same evaluation."""
        m = self.metric
        if score is None:
            return f"not evaluated on {m}: never competes for `champion`"
        champ = self.champion
        if champ is None:
            best = self.best_other
            if best is None or best.score is None:
                return "no champion yet: `shoprec promote` makes the best version champion"
            rank = "the best so far" if score > best.score else f"behind v{best.version} ({best.model})"
            return (
                f"no champion yet; {rank} on {m}: {score:.4f} vs {best.score:.4f} "
                "(`shoprec promote` makes the best version champion)"
            )
        if champ.score is None:
            return (
                f"champion v{champ.version} ({champ.model}) was evaluated on another data snapshot or split: "
                "`shoprec promote` re-evaluates it before deciding"
            )
        diff = score - champ.score
        if diff > 0:
            return (
                f"beats champion v{champ.version} ({champ.model}) on {m}: {score:.4f} > {champ.score:.4f} "
                "(`shoprec promote` would make it champion)"
            )
        return (
            f"does not beat champion v{champ.version} ({champ.model}) on {m}: {score:.4f} <= "
            f"{champ.score:.4f} (the champion stays)"
        )


@dataclass(frozen=True)
class RunFacts:
    """Everything a training run's card needs, as plain values."""

    model: str
    split: str
    metrics: dict[str, float]
    params: dict[str, Any]
    data_hash: str
    n_users: int
    n_items: int
    n_interactions: int
    split_meta: dict[str, Any] = field(default_factory=dict)
    exclude_seen: str = "learned"
    refit: bool = True
    task: str = "recommend"
    run_id: str = ""
    version: str | None = None
    code_version: str = ""
    fit_seconds: float | None = None
    chosen_epochs: int | None = None
    latency: dict[str, float] = field(default_factory=dict)  # training.evaluate.score_latency
    comparison: Comparison | None = None
    plots: tuple[str, ...] = ()


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    return f"{v:.4f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_num(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return out


def headline(metrics: dict[str, float], task: str = "recommend") -> list[tuple[str, float]]:
    """The few metrics a person looks at first, in order, that the run has."""
    keys = BASKET_HEADLINE if task == "complements" else HEADLINE
    return [(k, float(metrics[k])) for k in keys if k in metrics]


def _ks(metrics: dict[str, float]) -> list[int]:
    return sorted({int(k.split("@")[1]) for k in metrics if k.startswith("recall@") and "/" not in k})


def train_card(f: RunFacts) -> str:
    """The markdown card of one training run."""
    title = f"# {f.model}" + (f" · registered version {f.version}" if f.version else "")
    lines = [title, ""]
    meta = [f"run `{f.run_id}`"] if f.run_id else []
    if f.code_version:
        meta.append(f"code `{f.code_version}`")
    if f.fit_seconds is not None:
        meta.append(f"fitted and evaluated in {f.fit_seconds:.1f} s")
    if meta:
        lines += [" · ".join(meta), ""]

    lines += ["## Data", ""]
    density = f.n_interactions / max(f.n_users * f.n_items, 1)
    lines.append(
        f"- snapshot `{f.data_hash}` (sha256 of the validated tables: two runs with the same hash learned "
        "from the same data)"
    )
    lines.append(
        f"- {f.n_users:,} customers × {f.n_items:,} items, {f.n_interactions:,} customer–item "
        f"interactions (density {density:.2%})"
    )
    counts = f.split_meta.get("counts", {})
    if counts.get("train_events"):
        lines.append(f"- training part of the split: {counts['train_events']:,} events")
    lines.append(
        "- served model: refitted on all data with the same configuration"
        if f.refit
        else "- served model: the one fitted on the split's training part (no refit)"
    )
    if f.latency:
        lines.append(
            f"- serving cost: {f.latency['score_ms']:.2f} ms to score one customer (median of the served "
            f"model's calls one customer at a time; p99 {f.latency['score_ms_p99']:.2f} ms); `shoprec "
            "promote` holds the median to its budget (`--max-score-ms`)"
        )
    lines += ["", "## Split and evaluation", ""]
    lines.append(f"- `{f.split}`: {SPLITS.get(f.split, 'a split written by `shoprec features build`')}")
    if counts:
        lines.append(
            f"- held out: {counts.get('test_rows', 0):,} test rows of {counts.get('test_users', 0):,} customers, "
            f"{counts.get('valid_rows', 0):,} validation rows of {counts.get('valid_users', 0):,}"
        )
    if f.task == "complements":
        lines.append(
            "- complements: one item of each held-out basket is hidden and asked for from the basket's "
            "other items"
        )
    else:
        lines.append(
            f"- full ranking over all {f.n_items:,} items (no sampled negatives); past items: "
            f"`{f.exclude_seen}` ({EXCLUDE.get(f.exclude_seen, '')})"
        )
    if f.chosen_epochs is not None:
        lines.append(f"- early stopping on validation NDCG@10 kept epoch {f.chosen_epochs}")

    lines += ["", "## Metrics (test part)", ""]
    ks = _ks(f.metrics)
    if ks:
        cols = [
            c for c in ("recall", "ndcg", "map", "hit", "coverage", "novelty") if f"{c}@{ks[0]}" in f.metrics
        ]
        lines += _table(["K", *cols], ([k, *[f.metrics.get(f"{c}@{k}", "") for c in cols]] for k in ks))
    elif f.metrics:
        lines += _table(["metric", "value"], sorted((k, v) for k, v in f.metrics.items() if "/" not in k))
    else:
        lines.append("not evaluated (the split held nothing this model can be scored on)")
    seg = segment_table(f.metrics)
    if seg:
        lines += ["", "## Metrics per customer segment", ""]
        lines += _table(["segment", "customers", "ndcg@10", "recall@10", "hit@10"], seg)
        lines += [
            "",
            "Cold start / returning: fewer / at least 5 items in training. Lifecycle segments are "
            "learned per split from its training part (new, active, vip, at_risk, lapsed).",
        ]

    lines += ["", "## Configuration", ""]
    lines += _table(["parameter", "value"], ([k, f"`{v}`"] for k, v in sorted(f.params.items())))

    lines += ["", "## Compared with", ""]
    lines += comparison_lines(f.comparison, dict(headline(f.metrics, f.task)))
    if f.plots:
        lines += ["", "## Plots", ""]
        lines += [f"- `{p}`" for p in f.plots]
    return "\n".join(lines) + "\n"


def segment_table(metrics: dict[str, float]) -> list[list[Any]]:
    """Rows (segment, customers, ndcg@10, recall@10, hit@10) from evaluation's per-segment metrics."""
    ndcg = segment_metrics(metrics, "ndcg@10")
    rows = []
    for seg, (value, n) in ndcg.items():
        rows.append(
            [
                segment_label(seg),
                n,
                value,
                metrics.get(f"recall@10/{seg}", ""),
                metrics.get(f"hit@10/{seg}", ""),
            ]
        )
    return rows


def comparison_lines(c: Comparison | None, mine: dict[str, float]) -> list[str]:
    """The card's "Compared with" section: a verdict against the champion and a small leaderboard."""
    if c is None:
        return ["- nothing: this run does not compete for `champion`"]
    score = mine.get(c.metric)
    lines = [f"- {c.verdict(score)}"]
    board = [r for r in ([c.champion] if c.champion else []) + list(c.others) if r.score is not None]
    if board:
        lines += ["", f"Other versions evaluated the same way, by {c.metric}:", ""]
        rows = [
            [f"v{r.version}", r.model, r.role or "", r.score] for r in sorted(board, key=lambda r: -r.score)
        ]
        lines += _table(["version", "model", "alias", c.metric], rows)
    else:
        lines.append("- no other version was evaluated on this data snapshot and split")
    return lines


def trial_card(
    *,
    study: str,
    trial: int,
    model: str,
    split: str,
    metric: str,
    params: dict[str, Any],
    metrics: dict[str, float] | None,
    best_before: tuple[int, float] | None,
    data_hash: str,
    state: str,
) -> str:
    """The card of one tuning trial: its validation score against the study's best before it."""
    lines = [f"# {model} · trial {trial} of study `{study}`", ""]
    lines += [
        f"- data snapshot `{data_hash}`, split `{split}`; the objective is {metric} on the split's "
        "validation part (the test part is never used for tuning)",
        f"- state: {state}",
    ]
    value = (metrics or {}).get(metric)
    if value is not None:
        lines.append(f"- validation {metric}: {value:.4f}")
    if best_before is None:
        lines.append("- compared with: nothing, the study's first finished trial")
    elif value is not None:
        t, v = best_before
        word = "new best" if value > v else "below the best"
        lines.append(f"- compared with the study's best before it (trial {t}, {v:.4f}): {word}")
    lines += ["", "## Parameters", ""]
    lines += _table(["parameter", "value"], ([k, f"`{v}`"] for k, v in sorted(params.items())))
    if metrics:
        seg = segment_table(metrics)
        if seg:
            lines += ["", "## Validation metrics per customer segment", ""]
            lines += _table(["segment", "customers", "ndcg@10", "recall@10", "hit@10"], seg)
    return "\n".join(lines) + "\n"


def promote_card(decision: dict[str, Any], board: Sequence[Rival]) -> str:
    """The card of one promotion: the decision, why, and the versions it weighed."""
    d = decision
    verb = "promoted" if d["promoted"] else "kept"
    lines = [f"# champion {verb}: version {d['champion']}", "", f"- {d['reason']}"]
    lines.append(f"- compared on {d['metric']} over the `{d['split']}` split's test part")
    if d.get("challenger"):
        lines.append(f"- challenger (the runner-up, for A/B tests): version {d['challenger']}")
    if d.get("reevaluated"):
        lines.append(
            "- re-evaluated on the current data (their numbers came from another snapshot or split): "
            + ", ".join(f"v{v}" for v in d["reevaluated"])
        )
    scored = [r for r in board if r.score is not None]
    if scored:
        lines += ["", f"## Versions by {d['metric']}", ""]
        rows = [[f"v{r.version}", r.model, r.role, r.score] for r in sorted(scored, key=lambda r: -r.score)]
        lines += _table(["version", "model", "alias", d["metric"]], rows)
    return "\n".join(lines) + "\n"
