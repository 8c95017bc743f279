"""The feature build's own small config: event weights, time decay, split and rule thresholds.

Every field has a default that works on the synthetic shop and on the real data sets; the CLI
overrides the three a data scientist changes most (`--half-life-days`, `--weight TYPE=W`,
`--cutoff`). Unknown keys are an error (`FeatureConfig.from_dict`), never a silent default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from features.errors import BuildError

# Contract defaults (CONTRACT.md): a purchase says most, a cart add more than a view; removing from
# the cart is kept as an event but carries no signal; any other event type weighs 0 unless configured.
DEFAULT_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("view", 1.0),
    ("add_to_cart", 3.0),
    ("remove_from_cart", 0.0),
    ("purchase", 5.0),
)


@dataclass(frozen=True)
class FeatureConfig:
    """How events become features. Frozen: a build's config is logged beside what it made."""

    # (event_type, weight) pairs; types not listed weigh 0. A tuple, not a dict, so the config is immutable.
    weights: tuple[tuple[str, float], ...] = DEFAULT_WEIGHTS
    # Interactions decay as 0.5 ** (age_days / half_life_days): a 90-day-old view counts half.
    half_life_days: float = 90.0
    # `time` split cut-off as an ISO date/time (UTC); None = the `time_quantile` of all event times.
    cutoff: str | None = None
    time_quantile: float = 0.9
    # `random` split: per-user shares of target interactions (RecBole's default 80/10/10) and its seed.
    random_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    # A category is re-buyable when at least this share of its buyers bought the same item again
    # in a later basket, and at least `rebuy_min_repeat_buyers` did (one odd customer is not a pattern).
    # These are global, documented thresholds; the per-category rates are learned from the data.
    # 0.25: on the synthetic shop consumables sit near 0.9 while chance repeats of fashion or DIY
    # items reach 0.13 on a small catalogue; groceries (Instacart) re-buy far above a quarter.
    rebuy_min_rate: float = 0.25
    rebuy_min_repeat_buyers: int = 2
    # Gender affinity: the share of a customer's weighted women+men interactions on one side needed to
    # call it that side; otherwise "unisex". Fewer than `gender_min_events` gendered events -> null.
    gender_affinity_share: float = 0.7
    gender_min_events: int = 2
    # Item trend compares the last `trend_window_share` of the data's time span with the 3x longer
    # window before it.
    trend_window_share: float = 0.1
    # DuckDB resources: threads None = all cores; the memory limit makes DuckDB spill to disk instead of
    # growing past it (the 10M-event target is <= 4 GB peak for the whole process, 100M <= 12 GB).
    # "auto": 2 GB, growing with the events past ~30M (64 bytes an event, at most half the memory);
    # a size such as "4GB" is kept whatever the data.
    threads: int | None = None
    memory_limit: str = "auto"

    def __post_init__(self) -> None:
        if not (self.half_life_days > 0 and math.isfinite(self.half_life_days)):
            raise BuildError(f"half_life_days must be a positive number, got {self.half_life_days}")
        if not 0.0 < self.time_quantile < 1.0:
            raise BuildError(f"time_quantile must be in (0, 1), got {self.time_quantile}")
        if (
            len(self.random_ratios) != 3
            or any(r < 0 for r in self.random_ratios)
            or sum(self.random_ratios) <= 0
        ):
            raise BuildError(f"random_ratios must be three non-negative shares, got {self.random_ratios}")
        if not 0.0 <= self.rebuy_min_rate <= 1.0:
            raise BuildError(f"rebuy_min_rate must be in [0, 1], got {self.rebuy_min_rate}")
        if not 0.5 < self.gender_affinity_share <= 1.0:
            raise BuildError(f"gender_affinity_share must be in (0.5, 1], got {self.gender_affinity_share}")
        if not 0.0 < self.trend_window_share < 0.25:
            raise BuildError(f"trend_window_share must be in (0, 0.25), got {self.trend_window_share}")
        names = [t for t, _ in self.weights]
        if len(set(names)) != len(names):
            raise BuildError(f"event type weighted twice: {names}")
        if self.cutoff is not None:
            self.cutoff_ts()  # fail early on an unparsable date

    @property
    def weight_map(self) -> dict[str, float]:
        """event_type -> weight (types not listed weigh 0)."""
        return dict(self.weights)

    def cutoff_ts(self) -> int | None:
        """The configured `time` cut-off as epoch seconds (UTC), or None when not configured."""
        if self.cutoff is None:
            return None
        try:
            dt = datetime.fromisoformat(self.cutoff)
        except ValueError:
            raise BuildError(f"cutoff must be a date like 2024-05-31 (UTC), got {self.cutoff!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp())

    @classmethod
    def from_cli(cls, half_life_days: float, weights: list[str], cutoff: str | None) -> FeatureConfig:
        """Build from CLI flags. `weights` holds "TYPE=W" strings that override the defaults per type
        (e.g. ["view=0.5", "wishlist=2"]); a malformed one is a BuildError naming it."""
        merged = dict(DEFAULT_WEIGHTS)
        for spec in weights:
            event_type, sep, raw = spec.partition("=")
            event_type = event_type.strip().lower()
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not sep or not event_type or not math.isfinite(value):
                raise BuildError(f"--weight must look like TYPE=NUMBER (e.g. purchase=5), got {spec!r}")
            merged[event_type] = value
        return cls(weights=tuple(merged.items()), half_life_days=half_life_days, cutoff=cutoff)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureConfig:
        """Build from a plain dict (e.g. a saved config); unknown keys are a BuildError."""
        from features.strict import strict_fields

        try:
            strict_fields(cls, {k: v for k, v in values.items() if k not in ("weights", "random_ratios")})
        except ValueError as e:
            raise BuildError(str(e)) from None
        values = dict(values)
        if "weights" in values and isinstance(values["weights"], dict):
            values["weights"] = tuple((str(k).lower(), float(v)) for k, v in values["weights"].items())
        if "weights" in values:
            values["weights"] = tuple((str(k), float(v)) for k, v in values["weights"])
        if "random_ratios" in values:
            values["random_ratios"] = tuple(float(r) for r in values["random_ratios"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["weights"] = self.weight_map
        return d
