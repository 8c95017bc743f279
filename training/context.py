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
        from scipy.stats import binom

        cfg = config or ContextConfig()
        fields = [f for f in FIELDS if f in events.columns]
        if not fields or events.empty:
            return cls([], 0, cfg)
        cats = categories[["item_id", "category"]].dropna().astype(str)
        cats = cats.assign(category=cats["category"].str.strip("/"))
        ev = events[["item_id", *(["session_id"] if "session_id" in events.columns else []), *fields]]
        ev = ev.assign(item_id=ev["item_id"].astype(str)).merge(cats, on="item_id", how="inner")
        ev = ev[ev["category"] != ""]
        tested = 0
        candidates: list[tuple[str, str, str, int, int, float]] = []
        for f in fields:
            sub = ev[ev[f].notna() & (ev[f].astype(str) != "")]
            if sub.empty:
                continue
            sub = sub.assign(**{f: sub[f].astype(str).str.strip()})
            if "session_id" in sub.columns:
                has = sub["session_id"].notna()
                unit = sub[has].drop_duplicates(["session_id", "category", f])
                sub = pd.concat([unit, sub[~has]], ignore_index=True)
            n_total = len(sub)
            share = sub.groupby("category").size() / n_total
            n_value = sub.groupby(f).size()
            if len(n_value) < 2:
                continue  # one value only: nothing to compare it with
            table = sub.groupby([f, "category"]).size()
            for (value, category), n in table.items():
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
    `before` only, when given: a benchmark's training part)."""
    import pyarrow.parquet as pq

    path = ws.validated("events")
    if not path.exists():
        return ContextLift([], 0, config or ContextConfig())
    names = set(pq.read_schema(path).names)
    cols = [c for c in ("item_id", "session_id", "timestamp", *FIELDS) if c in names]
    if not set(FIELDS) & names:
        return ContextLift([], 0, config or ContextConfig())
    events = pd.read_parquet(path, columns=cols)
    if before is not None and "timestamp" in events.columns:
        ts = pd.to_datetime(events["timestamp"], utc=True).astype("int64") / 1e9
        events = events[ts.to_numpy() < before]
    catalog = ws.validated("catalog")
    if not catalog.exists():
        return ContextLift([], 0, config or ContextConfig())
    return ContextLift.fit(events, pd.read_parquet(catalog, columns=["item_id", "category"]), config)


def strength(lift: float) -> float:
    """A lift as a boost in [0, 1]: log2, so a doubling is a full step and 1.2 about a quarter."""
    return float(min(max(math.log2(lift), 0.0), 1.0)) if lift > 0 else 0.0
