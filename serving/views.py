"""What the inspection pages show (`/ui`, serving/ui.py), as plain data: no HTML, no HTTP.

- `customer_view`: a customer's profile, segment and consent, their history as a timeline, and the
  block per channel exactly as `/recommend` answers it (the same A/B variant, engine and rules), with
  the items the rules removed and the rule for each (serving.explain, as `"explain": true`).
- `item_view`: an item's catalogue row, stock per size, bought-together and similar items, as
  `/bought_together` and `/similar_items` answer them.
- `registry_view`: the champion and challenger of the MLflow registry with their offline metrics
  overall and per segment (`<metric>/<segment>` metrics of training.evaluate).
- `ab_view`: the A/B report of `shoprec ab report` when the workspace holds one (`AB_REPORT`).

Each reads one shop-state snapshot and the models snapshot it is given, like a request does. Nothing
here records an impression: looking at a customer's block is not showing it to them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Where the A/B report lives in a workspace: the JSON object `shoprec ab report` prints last, and
# its plot beside it (a `plot` key in the JSON may name another file in the same folder).
AB_REPORT = Path("reports") / "ab_report.json"
AB_PLOT = Path("reports") / "ab_report.png"
RANKED_BELOW = "ranked below the block"  # serving.explain's rule for an item no rule removed
TIMELINE_MAX = 200  # newest events shown on a customer's page
CHANNELS: tuple[str, ...] = ("web", "email")
PROFILE_COLUMNS: tuple[str, ...] = (
    "n_events", "n_purchases", "frequency", "monetary", "recency_days", "first_ts", "last_ts",
    "r_score", "f_score", "m_score",
)  # fmt: skip
DETAIL_COLUMNS: tuple[str, ...] = ("birth_year", "gender", "city", "signup_date")


@dataclass(frozen=True)
class Shown:
    """One item of a block, with what a marketer needs to recognise it."""

    item_id: str
    title: str
    category: str
    price: float | None
    score: float
    reason: str


@dataclass(frozen=True)
class RemovedItem:
    item_id: str
    title: str
    category: str
    rule: str


@dataclass(frozen=True)
class Block:
    channel: str
    variant: str
    model_version: str
    items: list[Shown]
    removed: list[RemovedItem]  # best first, as serving.explain names them

    @property
    def kept_out(self) -> list[RemovedItem]:
        """The removed items a rule kept out (stock, size, gender, re-buy, cart, diversity, consent)."""
        return [r for r in self.removed if not r.rule.startswith(RANKED_BELOW)]

    @property
    def ranked_below(self) -> list[RemovedItem]:
        """The model's top items that no rule removed but that boosts and context ranked lower."""
        return [r for r in self.removed if r.rule.startswith(RANKED_BELOW)]


@dataclass(frozen=True)
class TimelineEvent:
    timestamp: datetime
    event_type: str
    item_id: str
    title: str
    quantity: int | None = None
    price: float | None = None
    size: str | None = None
    order_id: str | None = None
    live: bool = False  # told to the service since the last feature build (online store)


@dataclass(frozen=True)
class CustomerView:
    user_id: str
    consent: bool | None  # None: the shop keeps no customers table and never heard of them
    consent_email: bool | None
    segment: str | None
    gender_affinity: str | None
    details: dict[str, Any]  # the customers table's row (birth_year, gender, city, signup_date)
    profile: dict[str, Any]  # features' profile (purchases, frequency, monetary, recency, ...)
    sizes: dict[str, str]  # learned size per garment category
    timeline: list[TimelineEvent]  # newest first
    older_events: int  # events left out of the timeline
    blocks: list[Block]


@dataclass(frozen=True)
class ItemView:
    item_id: str
    details: dict[str, Any]
    active: bool
    stock: dict[str, int]  # size ('' unsized) -> quantity; empty: the stock table says nothing
    bought_together: list[Shown]
    similar: list[Shown]
    model_version: str


@dataclass(frozen=True)
class Version:
    version: str
    model: str
    aliases: list[str]
    run_id: str
    created: datetime | None
    split: str | None
    data_hash: str | None
    metrics: dict[str, float]

    def table(self, names: Iterable[str]) -> MetricsTable:
        """The metrics `names` overall and per group the evaluation logged (training.evaluate): by
        history (`new`: few training items, `returning`) and by profile segment (`segment_<name>`),
        plus how many customers each column holds."""
        slices: list[str] = []
        for key in self.metrics:
            base, _, part = key.partition("/")
            if part and base in names and part not in slices:
                slices.append(part)
        history = [s for s in ("new", "returning") if s in slices]
        segments = sorted(s for s in slices if s.startswith("segment_"))
        groups = [("", 1)] + [
            (g, len(c)) for g, c in (("by history", history), ("by segment", segments)) if c
        ]
        parts = ["", *history, *segments]
        labels = ["all", *history, *(s.removeprefix("segment_") for s in segments)]
        rows = []
        for name in [n for n in names if n in self.metrics] + ["n_users"]:
            keys = [f"{name}/{p}" if p else name for p in parts]
            if any(k in self.metrics for k in keys):
                label = "customers evaluated" if name == "n_users" else name
                rows.append((label, [(k, self.metrics.get(k)) for k in keys]))
        return MetricsTable(groups, labels, rows)


@dataclass(frozen=True)
class MetricsTable:
    groups: list[tuple[str, int]]  # header groups over the value columns: (label, columns spanned)
    columns: list[str]  # one label per value column
    rows: list[tuple[str, list[tuple[str, float | None]]]]  # (metric, [(metric key, value)])


@dataclass(frozen=True)
class RegistryView:
    source: str  # the registry's URI, or why there is none
    served: dict[str, str | None]  # what this service answers with now: champion/challenger version
    champion: Version | None
    challenger: Version | None
    versions: list[Version] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class AbView:
    path: Path | None  # the report's file (None: no workspace)
    report: dict[str, Any] | None  # None: no report yet
    plot_png_base64: str | None
    command: str  # how to make one
    error: str | None = None


# -- customers ------------------------------------------------------------------------------------
def customer_view(
    router: Any,
    models: Any,
    ws: Any,
    user_id: str,
    contexts: Mapping[str, Any],
    *,
    k: int = 10,
    now: float | None = None,
) -> CustomerView | None:
    """The customer's page, or None when the service knows nothing of them (never seen, or erased).

    router: serving.router.Router; models: serving.loader.Models; ws: the workspace (None: serving a
    bundle without one, so no timeline); contexts: channel -> serving.pipeline.Context, built the way
    the service builds a request's (so the blocks equal `/recommend`'s for that context)."""
    from serving.explain import removed_items

    engine = models.champion
    state = engine.state
    if state.is_forgotten(user_id):
        return None
    customer = state.customer(user_id)
    live = engine.store.recent(user_id, TIMELINE_MAX)
    profile = _profile_row(ws, user_id)
    if customer is None and not live and profile is None:
        return None
    cat = state.current.catalog
    timeline, older = _timeline(ws, user_id, live, cat)
    blocks = []
    for channel, cx in contexts.items():
        variant, version, recs = router.choose(
            models, user_id, k, cx, lambda e, cx=cx: e.recommend(user_id, k, cx, now=now)
        )
        chosen, _ = router.engine(models, variant)
        removed = removed_items(chosen, user_id, k, cx, recs, now=now)
        blocks.append(
            Block(
                channel,
                variant,
                version,
                [_shown(cat, r.item_id, r.score, r.reason) for r in recs],
                [RemovedItem(r.item_id, *_title_category(cat, r.item_id), r.rule) for r in removed],
            )
        )
    details = _details_row(state.customer_details, user_id)
    known_table = state.has_customers_table or customer is not None
    sizes = (
        dict(state.histories.sizes.get(customer.row, {}))
        if customer is not None and customer.row >= 0
        else {}
    )
    return CustomerView(
        user_id=user_id,
        consent=customer.consent if customer is not None else (None if not known_table else False),
        consent_email=customer.consent_email if customer is not None else None,
        segment=customer.segment if customer is not None else None,
        gender_affinity=customer.gender_affinity if customer is not None else None,
        details=details,
        profile=_profile(profile),
        sizes=sizes,
        timeline=timeline,
        older_events=older,
        blocks=blocks,
    )


def _profile_row(ws: Any, user_id: str) -> dict[str, Any] | None:
    if ws is None or not ws.feature("profiles").exists():
        return None
    frame = pd.read_parquet(ws.feature("profiles"), filters=[("user_id", "==", user_id)])
    return frame.iloc[0].to_dict() if len(frame) else None


def _profile(row: dict[str, Any] | None) -> dict[str, Any]:
    """The profile's columns a person reads; the first and last event as dates, not epoch seconds."""
    out: dict[str, Any] = {}
    for c in PROFILE_COLUMNS:
        value = _plain(row.get(c)) if row is not None else None
        if value is None:
            continue
        if c in ("first_ts", "last_ts"):
            out[c.replace("_ts", " event")] = datetime.fromtimestamp(float(value), tz=UTC)
        else:
            out[c] = value
    return out


def _details_row(details: pd.DataFrame | None, user_id: str) -> dict[str, Any]:
    if details is None or "user_id" not in details.columns:
        return {}
    rows = details[details["user_id"].astype(str) == user_id]
    if rows.empty:
        return {}
    row = rows.iloc[-1]
    return {c: _plain(row[c]) for c in DETAIL_COLUMNS if c in rows.columns and _plain(row[c]) is not None}


def _timeline(ws: Any, user_id: str, live: list[Any], cat: Any) -> tuple[list[TimelineEvent], int]:
    """The customer's events, newest first: the validated events table (what the last feature build
    folded in) and, after its newest event, what the service was told since (the online store)."""
    out: list[TimelineEvent] = []
    newest = -math.inf
    total = 0
    path = ws.validated("events") if ws is not None else None
    if path is not None and path.exists():
        ev = pd.read_parquet(path, filters=[("user_id", "==", user_id)])
        total = len(ev)
        if total:
            ev = ev.assign(_ts=pd.to_datetime(ev["timestamp"], utc=True))
            newest = float(ev["_ts"].max().timestamp())
            ev = ev.sort_values("_ts", ascending=False, kind="stable").head(TIMELINE_MAX)
            for row in ev.to_dict("records"):
                iid = str(row["item_id"])
                out.append(
                    TimelineEvent(
                        row["_ts"].to_pydatetime(), str(row["event_type"]), iid, _title_category(cat, iid)[0],
                        _plain(row.get("quantity")), _plain(row.get("price")), _plain(row.get("size")),
                        _plain(row.get("order_id")),
                    )
                )  # fmt: skip
    for e in live:
        if e.timestamp > newest:
            out.append(
                TimelineEvent(
                    datetime.fromtimestamp(e.timestamp, tz=UTC), e.event_type, e.item_id,
                    _title_category(cat, e.item_id)[0], size=e.size, live=True,
                )
            )  # fmt: skip
            total += 1
    out.sort(key=lambda t: t.timestamp, reverse=True)
    return out[:TIMELINE_MAX], max(0, total - TIMELINE_MAX)


# -- items ----------------------------------------------------------------------------------------
def item_view(models: Any, item_id: str, context: Any, *, k: int = 10) -> ItemView | None:
    """The item's page, or None when the catalogue does not list it. Bought-together and similar
    items are the champion's, as the anonymous `/bought_together` and `/similar_items` answer."""
    engine = models.champion
    state = engine.state
    cat = state.current.catalog
    i = cat.idx(item_id)
    if i is None:
        return None
    items = state.items
    row = items.iloc[i]
    details = {
        c: _plain(row[c])
        for c in ("title", "category", "brand", "price", "gender", "created_at", "n_users", "popularity")
        if c in items.columns and _plain(row[c]) is not None
    }
    active = bool(cat.active[i]) if cat.active is not None else True
    together = engine.bought_together([item_id], k, None, context)
    similar = engine.similar_items(item_id, k, None, context)
    return ItemView(
        item_id=item_id,
        details=details,
        active=active,
        stock=state.stock_of(item_id),
        bought_together=[_shown(cat, r.item_id, r.score, r.reason) for r in together],
        similar=[_shown(cat, r.item_id, r.score, r.reason) for r in similar],
        model_version=str(models.champion_version),
    )


# -- the registry ---------------------------------------------------------------------------------
HEADLINE = ("ndcg@10", "recall@10", "map@10", "hit@10", "coverage@10", "novelty@10")


def registry_view(registry_uri: str | None, model_name: str, models: Any) -> RegistryView:
    """Champion and challenger of `model_name` in the registry at `registry_uri` (None: the service
    serves a local bundle, which has no registry), with their runs' metrics; every version's
    headline metrics for comparison."""
    served = {
        "champion": str(models.champion_version) if models is not None else None,
        "challenger": str(models.challenger_version)
        if models is not None and models.challenger_version
        else None,
    }
    if registry_uri is None:
        return RegistryView("a local bundle (SHOPREC_BUNDLE): no registry", served, None, None)
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from training.tracking import from_mlflow_key

        client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
        try:
            found = client.search_model_versions(f"name='{model_name}'")
        except MlflowException:
            found = []
        # search_model_versions leaves `aliases` empty on some stores: ask for each alias itself.
        alias_of: dict[str, list[str]] = {}
        for alias in ("champion", "challenger"):
            with contextlib.suppress(MlflowException):
                version = str(client.get_model_version_by_alias(model_name, alias).version)
                alias_of.setdefault(version, []).append(alias)
        versions = []
        for mv in sorted(found, key=lambda m: int(m.version)):
            run = client.get_run(mv.run_id)
            tags = run.data.tags
            versions.append(
                Version(
                    version=str(mv.version),
                    model=tags.get("model", "?"),
                    aliases=sorted(
                        set(getattr(mv, "aliases", None) or []) | set(alias_of.get(str(mv.version), []))
                    ),
                    run_id=mv.run_id,
                    created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
                    if mv.creation_timestamp
                    else None,
                    split=tags.get("split"),
                    data_hash=tags.get("data_hash"),
                    metrics={from_mlflow_key(k): float(v) for k, v in run.data.metrics.items()},
                )
            )
    except Exception as e:  # the page says what is wrong with the registry; it never fails
        return RegistryView(registry_uri, served, None, None, error=f"{type(e).__name__}: {e}")
    by_alias = {a: v for v in versions for a in v.aliases}
    return RegistryView(
        _redact_uri(registry_uri), served, by_alias.get("champion"), by_alias.get("challenger"), versions
    )


def _redact_uri(uri: str) -> str:
    """A tracking URI without the password a PostgreSQL URI may carry."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return uri
    creds, _, host = rest.partition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


# -- the A/B report -------------------------------------------------------------------------------
def ab_view(ws: Any) -> AbView:
    """The workspace's A/B report (`AB_REPORT`) and its plot, or how to make one."""
    if ws is None:
        return AbView(
            None, None, None, "shoprec ab report --data DIR", "the service runs without a workspace"
        )
    path = ws.root / AB_REPORT
    command = f"shoprec ab report --data {ws.root}"
    if not path.exists():
        return AbView(path, None, None, command)
    try:
        report = json.loads(path.read_text())
        if not isinstance(report, dict):
            raise ValueError(f"expected a JSON object, got a {type(report).__name__}")
    except (OSError, ValueError) as e:
        return AbView(path, None, None, command, error=f"{path} cannot be read: {e}")
    plot = ws.root / AB_PLOT
    named = report.get("plot")
    if isinstance(named, str) and named:
        candidate = path.parent / Path(named).name  # only a file beside the report
        plot = candidate if candidate.suffix.lower() == ".png" else plot
    png = base64.b64encode(plot.read_bytes()).decode() if plot.exists() else None
    return AbView(path, report, png, command)


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Any]]


def report_tables(report: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Table]]:
    """Split a report object into its scalar facts and its tables, whatever the report's exact
    columns, so the page shows what `shoprec ab report` wrote: a list of row objects is a table
    (e.g. one row per variant), and so is an object of objects (its keys become the first column);
    another object's entries are facts named `key.entry`."""
    facts: dict[str, Any] = {}
    tables: dict[str, Table] = {}
    for key, value in report.items():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            tables[key] = _table(value)
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            tables[key] = _table([{"": name, **v} for name, v in value.items()])
        elif isinstance(value, dict):
            for sub, v in value.items():
                facts[f"{key}.{sub}"] = v
        elif key != "plot":
            facts[key] = value
    return facts, tables


def _table(rows: list[Mapping[str, Any]]) -> Table:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return Table(columns, [[r.get(c) for c in columns] for r in rows])


# -- helpers --------------------------------------------------------------------------------------
def _title_category(cat: Any, item_id: str) -> tuple[str, str]:
    i = cat.idx(item_id)
    if i is None:
        return item_id, ""
    return str(cat.titles[i]), str(cat.categories[i])


def _shown(cat: Any, item_id: str, score: float, reason: str) -> Shown:
    title, category = _title_category(cat, item_id)
    i = cat.idx(item_id)
    price = float(cat.price[i]) if i is not None and np.isfinite(cat.price[i]) else None
    score = float(score)
    return Shown(item_id, title, category, price, score if math.isfinite(score) else 0.0, reason)


def _plain(value: Any) -> Any:
    """A table cell as a plain Python value; None for missing (NaN, NaT, NA)."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        return value
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """fn() and the milliseconds it took (shown in the pages' footers)."""
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000
