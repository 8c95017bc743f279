"""The A/B step every channel shares: which variant a customer is in, which engine answers, and the
impression every answered block leaves.

The web shop's `/recommend`, the e-mail renderer's `/recommend_batch` and the batch feed
`shoprec recommend` all answer through `Router`, so a customer is in the same variant on every
channel, the control group gets the same non-personal block everywhere, and every block carries
`variant`, `model_version` and a `recommendation_id` that clicks and purchases can quote.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from serving.ab import CONTROL, assign

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """One answered block."""

    user_id: str | None
    items: list[Any]  # serving.ranking.Rec
    variant: str
    model_version: str
    recommendation_id: str


class Router:
    """Routes a request to the engine of the customer's variant and records the impression.

    models(): the current `serving.loader.Models` snapshot (read once per call). shares: variant ->
    share (serving.ab.parse_shares). impressions: a `serving.ab.ImpressionLog` (or anything with
    `log(**fields)`), None for none."""

    def __init__(
        self,
        models: Callable[[], Any],
        shares: Mapping[str, float],
        salt: str,
        impressions: Any = None,
    ) -> None:
        self.models = models
        self.shares = dict(shares)
        self.salt = salt
        self.impressions = impressions

    def variant(self, models: Any, user_id: str | None) -> str:
        """The customer's variant: a deterministic hash with the configured shares. Anonymous
        requests, and a challenger share without a challenger model, go to the champion."""
        if user_id is None:
            return "champion"
        if len(self.shares) == 1:
            variant = next(iter(self.shares))
        else:
            variant = assign(user_id, self.shares, self.salt)
        if variant == "challenger" and models.challenger is None:
            return "champion"
        return variant

    @staticmethod
    def engine(models: Any, variant: str) -> tuple[Any, str]:
        if variant == "challenger" and models.challenger is not None:
            return models.challenger, str(models.challenger_version)
        return models.champion, str(models.champion_version)

    def block(
        self,
        endpoint: str,
        user_id: str | None,
        k: int,
        context: Any,
        personal: Callable[[Any], list[Any]],
        *,
        models: Any = None,
    ) -> Answer:
        """A personal block: `personal(engine)` answers for the customer's variant; the control
        variant gets the popular block for the same context."""
        models = models or self.models()
        return self.record(endpoint, user_id, *self.choose(models, user_id, k, context, personal))

    def choose(
        self, models: Any, user_id: str | None, k: int, context: Any, personal: Callable[[Any], list[Any]]
    ) -> tuple[str, str, list[Any]]:
        """(variant, model version, block) of `block`, recording nothing: the inspection pages show
        the block a customer gets without it counting as shown to them."""
        variant = self.variant(models, user_id)
        engine, version = self.engine(models, variant)
        recs = engine.popular(k, context=context) if variant == CONTROL else personal(engine)
        return variant, version, recs

    def batch(
        self, user_ids: list[str], k: int, context: Any, *, endpoint: str = "recommend_batch"
    ) -> list[Answer]:
        """One block per customer, in request order (duplicates answered once, shown twice), each
        customer routed to their variant's engine in one batch per variant."""
        models = self.models()
        groups: dict[str, list[str]] = {}
        for uid in dict.fromkeys(user_ids):
            groups.setdefault(self.variant(models, uid), []).append(uid)
        by_user: dict[str, tuple[str, str, list[Any]]] = {}
        for variant, uids in groups.items():
            engine, version = self.engine(models, variant)
            if variant == CONTROL:
                shared = engine.popular(k, context=context)
                for uid in uids:
                    by_user[uid] = (variant, version, list(shared))
            else:
                for uid, recs in engine.recommend_batch(uids, k, context).items():
                    by_user[uid] = (variant, version, recs)
        return [self.record(endpoint, uid, *by_user[uid]) for uid in user_ids]

    def record(
        self, endpoint: str, user_id: str | None, variant: str, version: str, recs: list[Any]
    ) -> Answer:
        """The answer with a new recommendation id, written to the impression log."""
        rid = uuid.uuid4().hex
        if self.impressions is not None:
            try:
                self.impressions.log(
                    recommendation_id=rid,
                    endpoint=endpoint,
                    user_id=user_id,
                    variant=variant,
                    model_version=version,
                    items=[r.item_id for r in recs],
                )
            except Exception:  # attribution is best effort; the customer still gets the block
                log.warning("impression log write failed", exc_info=True)
        return Answer(user_id, recs, variant, version, rid)
