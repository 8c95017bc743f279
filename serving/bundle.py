"""Read a serving bundle (docs/workspace.md "The serving bundle") into memory.

A bundle is what one registered model version carries, and only what was learned: the model, a
bought-together model fitted on the same data, the learned re-buy policy, the context's learned
category lifts and the event weights the model was trained with. The shop itself (catalogue, stock, customers, histories) is never in it:
serving reads that live (serving/state.py), so a retrain that ties, or no retrain at all, never
freezes yesterday's stock into today's answers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.base import Recommender

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    """A loaded serving bundle. `event_weights`: event type -> weight of the training data, which
    real-time events are weighted with too (an online view counts what a trained view counted)."""

    path: Path
    meta: dict[str, Any]
    model: Recommender
    complements: Recommender | None
    policy: Any  # training.policy.RebuyPolicy
    event_weights: dict[str, float] = field(default_factory=dict)
    context_lift: Any = None  # training.context.ContextLift; None for a bundle without one


def load_bundle(path: str | Path) -> Bundle:
    """Load the bundle directory at `path`. Raises FileNotFoundError naming what is missing."""
    from training.bundle import read_event_weights
    from training.context import ContextLift
    from training.policy import load_policy

    path = Path(path)
    if not (path / "model" / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a serving bundle: no model/config.json")
    meta_path = path / "bundle.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    model = Recommender.load(path / "model")
    complements = None
    if (path / "complements" / "config.json").exists():
        complements = Recommender.load(path / "complements")
    return Bundle(
        path=path,
        meta=meta,
        model=model,
        complements=complements,
        policy=load_policy(path),
        event_weights=read_event_weights(meta),
        context_lift=ContextLift.load(path),
    )
