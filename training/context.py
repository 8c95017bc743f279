"""The visit's context (device, city, weather) as a learned per-category lift.

`ContextLift.fit(events, categories)` counts, for each context field and value (`weather=rain`),
how much more often each leaf category occurs in visits with that value than in all visits with the
field known: lift = P(category | value) / P(category). The unit is a visit's category: one per
(session, category) where events carry `session_id` (a session of five jacket views is one jacket
visit, not five), else one per event. A lift is kept only where it is learned to matter: at least
`min_count` visits, a lift of at least `min_lift`, and significant under a one-sided binomial test
against the category's overall share at `alpha` Bonferroni-corrected for every (value, category)
pair tested, so a shop without context effects learns nothing and serving changes nothing.

Serving (serving/context.py) boosts the categories of the request's context by the learned lift;
the bundle carries it as `context_lift.json` (training/bundle.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

FIELDS: tuple[str, ...] = ("device", "city", "weather")
FILE = "context_lift.json"


@dataclass(frozen=True)
class ContextConfig:
    alpha: float = 0.01  # family-wise error rate over all (value, category) pairs tested
    min_lift: float = 1.2  # smaller lifts are not worth reordering a block for
    min_count: int = 20  # visits of the value in the category


@dataclass(frozen=True)
class Lift:
    field: str
    value: str
    category: str
    lift: float
    count: int  # visits of the value in the category
    p_value: float


@dataclass
class ContextLift:
    """The learned lifts; `rules[(field, value)]` -> [(category, lift)], strongest first."""

    lifts: list[Lift] = field(default_factory=list)
    tested: int = 0
    config: ContextConfig = field(default_factory=ContextConfig)

    @property
    def rules(self) -> dict[tuple[str, str], list[tuple[str, float]]]:
        out: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for x in sorted(self.lifts, key=lambda x: -x.lift):
            out.setdefault((x.field, x.value), []).append((x.category, x.lift))
        return out

    def __bool__(self) -> bool:
        return bool(self.lifts)

    @classmethod
    def fit(
        cls, events: pd.DataFrame, categories: pd.DataFrame, config: ContextConfig | None = None
    ) -> ContextLift:
        """events: item_id, optional session_id and the context columns; categories: item_id,
        category. Events without any context column give an empty (harmless) result."""
        import duckdb

        con = duckdb.connect()
        try:
            con.register("ev_frame", events)
            con.register("cat_frame", categories[["item_id", "category"]])
            return cls.from_counts(_counts(con, "ev_frame", "cat_frame", list(events.columns)), config)
        finally:
            con.close()

    @classmethod
    def from_counts(cls, counts: dict[str, pd.DataFrame], config: ContextConfig | None = None) -> ContextLift:
        """The lifts from visit counts per field: frames of (value, category, n)."""
        from scipy.stats import binom

        cfg = config or ContextConfig()
        tested = 0
        candidates: list[tuple[str, str, str, int, int, float]] = []
        for f, table in counts.items():
            if table.empty or table["value"].nunique() < 2:
                continue  # one value only: nothing to compare it with
            n_total = int(table["n"].sum())
            share = table.groupby("category")["n"].sum() / n_total
            n_value = table.groupby("value")["n"].sum()
            for value, category, n in zip(table["value"], table["category"], table["n"], strict=True):
                tested += 1
                candidates.append(
                    (f, str(value), str(category), int(n), int(n_value[value]), float(share[category]))
                )
        lifts: list[Lift] = []
        for f, value, category, n, n_v, p in candidates:
            lift = (n / n_v) / p if p > 0 else 0.0
            if n < cfg.min_count or lift < cfg.min_lift:
                continue
            p_value = float(binom.sf(n - 1, n_v, p))
            if p_value * max(tested, 1) < cfg.alpha:
                lifts.append(Lift(f, value, category, round(float(lift), 4), n, p_value))
        return cls(lifts, tested, cfg)

    def save(self, bundle: str | Path) -> Path:
        path = Path(bundle) / FILE
        path.write_text(
            json.dumps(
                {
                    "config": asdict(self.config),
                    "tested": self.tested,
                    "lifts": [asdict(x) for x in self.lifts],
                },
                indent=2,
            )
        )
        return path

    @classmethod
    def load(cls, bundle: str | Path) -> ContextLift | None:
        """The bundle's learned lifts; None for a bundle without the file (older bundles)."""
        path = Path(bundle) / FILE
        if not path.exists():
            return None
        d: dict[str, Any] = json.loads(path.read_text())
        return cls(
            [Lift(**x) for x in d.get("lifts", [])],
            int(d.get("tested", 0)),
            ContextConfig(**d.get("config", {})),
        )


def fit_from_workspace(
    ws: Any, before: float | None = None, config: ContextConfig | None = None
) -> ContextLift:
    """Learn the lifts from a workspace's validated events and catalogue (events before epoch
    `before` only, when given: a benchmark's training part), counted by DuckDB over the Parquet
    files (no frame of every event in memory)."""
    import duckdb
    import pyarrow.parquet as pq

    events, catalog = ws.validated("events"), ws.validated("catalog")
    if not events.exists() or not catalog.exists():
        return ContextLift([], 0, config or ContextConfig())
    names = pq.read_schema(events).names
    con = duckdb.connect()
    try:
        where = f" WHERE epoch(timestamp) < {float(before)!r}" if before is not None else ""
        con.execute(f"CREATE VIEW ev AS SELECT * FROM read_parquet({_lit(str(events))}){where}")
        con.execute(f"CREATE VIEW cat AS SELECT item_id, category FROM read_parquet({_lit(str(catalog))})")
        return ContextLift.from_counts(_counts(con, "ev", "cat", names), config)
    finally:
        con.close()


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _counts(con: Any, events: str, catalog: str, columns: list[str]) -> dict[str, pd.DataFrame]:
    """Per context field present in `columns`: visits (value, category, n), a visit being one
    (session, category, value) where the event has a session, else one event."""
    out: dict[str, pd.DataFrame] = {}
    session = "CAST(e.session_id AS VARCHAR)" if "session_id" in columns else "CAST(NULL AS VARCHAR)"
    for f in (f for f in FIELDS if f in columns):
        value = f"trim(CAST(e.{f} AS VARCHAR))"
        if f != "city":
            value = f"lower({value})"
        out[f] = con.execute(
            f"""
            WITH v AS (
                SELECT {session} AS s, trim(CAST(c.category AS VARCHAR), '/') AS category, {value} AS value
                FROM {events} e JOIN {catalog} c ON CAST(e.item_id AS VARCHAR) = CAST(c.item_id AS VARCHAR)
                WHERE e.{f} IS NOT NULL AND {value} <> ''
                  AND c.category IS NOT NULL AND trim(CAST(c.category AS VARCHAR), '/') <> ''
            ),
            u AS (
                SELECT DISTINCT s, category, value FROM v WHERE s IS NOT NULL
                UNION ALL SELECT s, category, value FROM v WHERE s IS NULL
            )
            SELECT value, category, count(*) AS n FROM u GROUP BY value, category ORDER BY value, category
            """
        ).df()
    return out


def strength(lift: float) -> float:
    """A lift as a boost in [0, 1]: log2, so a doubling is a full step and 1.2 about a quarter."""
    return float(min(max(math.log2(lift), 0.0), 1.0)) if lift > 0 else 0.0
