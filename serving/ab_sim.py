"""An A/B experiment with a planted effect, to check that `shoprec ab report` finds what is there and
nothing that is not.

The synthetic shop's customers visit the shop `visits` times. Each visit asks the service for a
block (the service assigns the variant, logs the impression and returns the recommendation id) and
the customer then behaves by a known plan (`Plan`):
- clicks one shown item with `p_click` (every variant alike), quoting the block's id;
- buys one shown item with `p_buy`, or `p_buy * (1 + uplift)` in the `treated` variant: the planted
  effect. A share `by_id` of these purchases quote the block's id (bought through the click); the
  rest come without it, right after the visit, so only the report's window attribution finds them;
- buys an item no block showed them with `p_other` (never attributed: noise the report must
  leave out).
Every decision is a draw of one seeded stream, five numbers per block in request order, so the
outcome does not depend on which items the models pick.

A customer's true conversion (at least one attributed purchase) is 1 - (1 - p)^visits, so the
planted relative uplift of conversion is known exactly (`Plan.true_uplift`).

Two ways to reach the engine, one interface (`answer`, `send`):
- `HttpShop`: a running `shoprec serve` over HTTP (`/recommend_batch`, or `/recommend` per visit
  with `per_request`; `POST /events` with the API key): the live service, end to end.
- `EngineShop`: the same engine, router and impression log in this process (serving.feed.Feed),
  events appended to the change log as `POST /events` does; for many seeded runs on a small machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from serving.ab import CONTROL


@dataclass(frozen=True)
class Plan:
    """How simulated customers answer a block."""

    p_buy: float = 0.10  # chance that a block leads to buying one of its items (untreated variants)
    uplift: float = 0.30  # the planted relative lift of p_buy in `treated` (0: an A/A test)
    treated: str = "champion"
    p_click: float = 0.25  # chance of a click on a shown item, in every variant
    by_id: float = 0.5  # share of the purchases of a shown item that quote the block's id
    p_other: float = 0.05  # per visit, a purchase of an item the block did not show
    visits: int = 2  # blocks per customer
    k: int = 8
    seed: int = 0

    def p(self, variant: str) -> float:
        return self.p_buy * (1 + self.uplift) if variant == self.treated else self.p_buy

    def true_conversion(self, variant: str) -> float:
        """P(at least one attributed purchase) for a customer of `variant`."""
        return 1 - (1 - self.p(variant)) ** self.visits

    def true_uplift(self, control: str = CONTROL) -> float:
        """The planted relative uplift of conversion, `treated` against control."""
        return self.true_conversion(self.treated) / self.true_conversion(control) - 1


Block = tuple[str, str, str, list[str]]  # user_id, variant, recommendation_id, item ids


class Shop(Protocol):
    def answer(self, user_ids: list[str], k: int) -> list[Block]: ...

    def send(self, events: list[dict[str, Any]]) -> None: ...


class HttpShop:
    """A running service: `url`, and the API key for `POST /events`."""

    def __init__(self, url: str, api_key: str, *, per_request: bool = False, chunk: int = 250) -> None:
        import httpx

        self.client = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {api_key}"})
        self.per_request = per_request
        self.chunk = chunk

    def answer(self, user_ids: list[str], k: int) -> list[Block]:
        out: list[Block] = []
        if self.per_request:
            for uid in user_ids:
                r = self._post("/recommend", {"user_id": uid, "k": k})
                out.append((uid, r["variant"], r["recommendation_id"], [i["item_id"] for i in r["items"]]))
            return out
        for start in range(0, len(user_ids), self.chunk):
            r = self._post("/recommend_batch", {"user_ids": user_ids[start : start + self.chunk], "k": k})
            out += [
                (b["user_id"], b["variant"], b["recommendation_id"], [i["item_id"] for i in b["items"]])
                for b in r["results"]
            ]
        return out

    def send(self, events: list[dict[str, Any]]) -> None:
        for start in range(0, len(events), 1000):
            self._post("/events", {"events": events[start : start + 1000]})

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        r = self.client.post(path, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def close(self) -> None:
        self.client.close()


class EngineShop:
    """The service's engine in this process (`feed`: a serving.feed.Feed over the shop's workspace,
    its champion and live state), with its own split, salt and log: impressions go to `run`'s
    impression log and events to `run`'s change log, so `shoprec ab report --data RUN` reads them as
    it reads a served workspace."""

    def __init__(self, feed: Any, run: Any, *, shares: dict[str, float], salt: str) -> None:
        from serving.ab import ImpressionLog
        from serving.router import Router

        self.feed = feed
        self.run = run
        self.impressions = ImpressionLog(run.serving_dir / "impressions.jsonl", salt=salt, flush_seconds=0)
        self.router = Router(lambda: self.feed.holder.models, shares, salt, self.impressions)

    def answer(self, user_ids: list[str], k: int) -> list[Block]:
        from serving.feed import feed_context

        return [
            (a.user_id, a.variant, a.recommendation_id, [r.item_id for r in a.items])
            for a in self.router.batch(user_ids, k, feed_context(channel="web"), endpoint="recommend")
        ]

    def send(self, events: list[dict[str, Any]]) -> None:
        from features import changelog

        now = pd.Timestamp.now(tz="UTC").floor("ms")
        changelog.append(self.run, "events", [{"timestamp": now, **e} for e in events])

    def close(self) -> None:
        self.impressions.close()


def simulate(shop: Shop, user_ids: Iterable[str], plan: Plan, catalog: pd.DataFrame) -> dict[str, int]:
    """Run `plan.visits` visits of every customer in `user_ids` against `shop`; returns counts of
    what the customers did (blocks, clicks, purchases of shown items, other purchases).
    catalog: item_id and price (the price each purchase carries)."""
    rng = np.random.default_rng(plan.seed)
    users = [str(u) for u in user_ids]
    items = catalog["item_id"].astype(str).to_numpy()
    price = dict(zip(items, catalog["price"].astype(float).fillna(0.0), strict=True))
    counts = {"blocks": 0, "clicks": 0, "bought_shown": 0, "bought_other": 0}
    seen: dict[str, set[str]] = {}  # items shown to each customer so far
    for _ in range(plan.visits):
        events: list[dict[str, Any]] = []
        for user, variant, rid, shown in shop.answer(users, plan.k):
            u = rng.random(5)  # click?, which, buy?, with the id?, buy something else?
            counts["blocks"] += 1
            seen.setdefault(user, set()).update(shown)
            if not shown:
                continue
            pick = shown[int(u[1] * len(shown))]
            if u[0] < plan.p_click:
                events.append(
                    {"user_id": user, "item_id": pick, "event_type": "click", "recommendation_id": rid}
                )
                counts["clicks"] += 1
            if u[2] < plan.p(variant):
                row = {
                    "user_id": user,
                    "item_id": pick,
                    "event_type": "purchase",
                    "price": price.get(pick, 0.0),
                }
                events.append({**row, "recommendation_id": rid} if u[3] < plan.by_id else row)
                counts["bought_shown"] += 1
            if u[4] < plan.p_other:
                other = items[int(u[1] * 7919) % len(items)]
                if other not in seen[user]:
                    events.append({"user_id": user, "item_id": other, "event_type": "purchase",
                                   "price": price.get(other, 0.0)})  # fmt: skip
                    counts["bought_other"] += 1
        if events:
            shop.send(events)
    return counts


def outcome(report: dict[str, Any], plan: Plan, control: str = CONTROL) -> dict[str, Any]:
    """What a run says about the plan: the planted uplift of conversion, the estimate, its interval,
    whether the interval holds the planted value, whether the report flags an effect (p < 0.05),
    and the sample-ratio check."""
    row = next(
        (u for u in report["uplift"] if u["variant"] == plan.treated and u["metric"] == "conversion"), None
    )
    if row is None:
        raise ValueError(f"the report has no conversion uplift of {plan.treated} against {control}")
    truth = plan.true_uplift(control)
    low, high = row["uplift_low"], row["uplift_high"]
    return {
        "planted": truth,
        "estimate": row["uplift"],
        "low": low,
        "high": high,
        "covered": low is not None and low <= truth <= high,
        "p_value": row["p_value"],
        "flagged": bool(row["significant"]),
        "srm_flagged": bool(report["srm"]["flagged"]),
        "users": {r["variant"]: r["users"] for r in report["variants"]},
    }


def run_in_process(
    feed: Any,
    run_dir: Path,
    plan: Plan,
    *,
    shares: dict[str, float],
    salt: str,
    users: list[str],
    catalog: pd.DataFrame,
) -> dict[str, Any]:
    """One seeded experiment on the engine in process (`feed`: serving.feed.Feed); the report read
    from `run_dir` (a workspace holding only the run's impression log and change log)."""
    from features.workspace import Workspace
    from serving.ab_report import ReportConfig, ab_report

    run = Workspace.at(run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    shop = EngineShop(feed, run, shares=shares, salt=salt)
    try:
        simulate(shop, users, plan, catalog)
    finally:
        shop.close()
    report = ab_report(run, ReportConfig(shares=shares, salt=salt), with_plot=False)
    return outcome(report, plan)
