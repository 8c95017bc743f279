"""`shoprec campaign NAME`: triggered e-mail feeds through the one engine and its rules.

A campaign is a trigger (serving/triggers.py: who is in today, and why) and a block per customer
from the engine the customer's A/B variant is served by (serving/router.py), exactly as the web
shop and `shoprec recommend` answer:

    abandoned-cart  price doubt: cheaper alternatives of the same category (`Engine.similar_items`
                    with `cheaper`); product doubt: the category's most popular (`Engine.popular`)
    reactivation    lapsed and at-risk customers (training.segments): their personal block
                    (`Engine.recommend`)
    replenishment   the re-buyable items due (training.policy.RebuyPolicy), then the personal block
    post-purchase   what goes with a durable bought N days ago (`Engine.bought_together`), never
                    another item of the durable's category

Every row is held to `Engine.allowed` for that customer at `now` (stock in their size, gender,
purchases against the re-buy policy, durables, the cart) and to the frequency cap (no item mailed
to the same customer within `cap_days`, from the impression log; the feed writes its own blocks
there, so the next run's cap sees them). Only customers with `consent_email` are mailed (and not
erased); the triggers that read a customer's own behaviour (abandoned-cart, replenishment,
post-purchase) also need `consent_personalisation`, while a reactivation mail to a customer without
it carries the non-personal block. The control variant of the A/B split gets the popular block, as
on every channel.

Output: the columns of `shoprec recommend` plus `campaign`, `trigger` (why this customer is in it)
and `vip` (the lifecycle VIP rule, for a VIP template).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from serving import reasons as R
from serving import triggers as T
from serving.feed import OUTPUT_COLUMNS

if TYPE_CHECKING:
    from features.workspace import Workspace
    from serving.pipeline import Context

log = logging.getLogger(__name__)

CAMPAIGNS: dict[str, str] = {
    "abandoned-cart": "a cart left without a purchase for `hours`: cheaper alternatives in its category "
    "for price doubt, the category's most popular for product doubt",
    "reactivation": "lapsed and at-risk customers (shoprec segments): their personal block",
    "replenishment": "re-buyable items due within `due_days` (the learned re-buy windows), then the personal block",
    "post-purchase": "what goes with a durable bought `after_days` ago, never another of its category",
}
COLUMNS: tuple[str, ...] = (*OUTPUT_COLUMNS, "campaign", "trigger", "vip")
# Impressions that count as mailed for the frequency cap: the campaign feeds and `shoprec recommend`.
MAILED_ENDPOINTS: tuple[str, ...] = ("campaign/", "feed")
# Campaigns whose trigger reads the customer's own behaviour: they need consent_personalisation too.
PERSONAL_TRIGGERS: frozenset[str] = frozenset({"abandoned-cart", "replenishment", "post-purchase"})


@dataclass(frozen=True)
class CampaignConfig:
    """Thresholds of the campaigns (`--set key=value` or a TOML/JSON file); unknown keys are an error."""

    # abandoned-cart
    hours: float = 24.0  # a cart is abandoned once this long without a purchase ...
    max_cart_age_hours: float = 72.0  # ... and not mailed once older than this (the moment has passed)
    spend_ratio: float = 1.0  # price doubt: the item costs more than this x the customer's median paid price
    repeat_views: int = 3  # ... or they viewed/carted it this often in `doubt_days` and it costs more
    doubt_days: float = 30.0  # than its category's median price
    # reactivation
    segments: str = "lapsed,at_risk"  # comma-separated lifecycle segments (features.lifecycle)
    cycle_days: float = 0.0  # the segments' purchase cycle C in days (0 = learned, as `shoprec segments`)
    # replenishment
    due_days: float = 7.0  # due within the coming N days ...
    overdue_days: float = 7.0  # ... or due at most this many days ago
    due_fraction: float = 1.0  # due after this fraction of the learned re-buy interval (1 = the median)
    # post-purchase
    after_days: float = 14.0  # a durable bought this many days ago ...
    after_window_days: float = 1.0  # ... give or take this window (a daily run mails each durable once)
    # every campaign
    cap_days: float = 7.0  # an item mailed to a customer is not mailed again for N days (0: no cap)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CampaignConfig:
        from features.strict import strict_fields

        return cls(**strict_fields(cls, values))

    @classmethod
    def from_file(cls, path: str | Path) -> CampaignConfig:
        """A TOML (`.toml`) or JSON file of key = value pairs."""
        import json
        import tomllib

        text = Path(path).read_text()
        values = tomllib.loads(text) if Path(path).suffix == ".toml" else json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a table of key = value pairs")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def segment_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.segments.split(",") if s.strip())

    def __post_init__(self) -> None:
        from features.lifecycle import SEGMENTS

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int | float) and not isinstance(v, bool) and not (np.isfinite(v) and v >= 0):
                raise ValueError(f"campaign config {f.name} must be a number >= 0, got {v!r}")
        unknown = [s for s in self.segment_list if s not in SEGMENTS]
        if unknown or not self.segment_list:
            raise ValueError(
                f"campaign config segments: choose from {', '.join(SEGMENTS)}, got {self.segments!r}"
            )
        if self.max_cart_age_hours < self.hours:
            raise ValueError("campaign config max_cart_age_hours must be at least hours")
        if self.after_window_days <= 0:
            raise ValueError("campaign config after_window_days must be > 0")


@dataclass
class CampaignResult:
    """The feed (`frame`, COLUMNS) and its funnel: how many customers each step kept."""

    name: str
    frame: pd.DataFrame
    funnel: dict[str, int]
    capped_items: int
    now: float
    notes: list[str] = field(default_factory=list)


# -- the blocks ------------------------------------------------------------------------------------


def items_frame(cat: Any) -> pd.DataFrame:
    """The live catalogue (serving.filters.Catalog) as the triggers read it: title, category, price
    per item id."""
    return pd.DataFrame(
        {"title": cat.titles, "category": cat.categories, "price": cat.price},
        index=pd.Index(cat.item_ids.astype(str), name="item_id"),
    )


def _under(cat: Any, category: str) -> Callable[[int], bool]:
    """Whether item i lies under `category` (the path or below it)."""
    prefix = category + "/"
    cats = cat.categories
    return lambda i: cats[i] == category or str(cats[i]).startswith(prefix)


def _candidates(
    name: str, engine: Any, trigger: T.Trigger, k: int, context: Context, now: float
) -> tuple[list[Any], Callable[[int], bool] | None, Callable[[Any], str] | None]:
    """(the engine's answer for this customer, most relevant first; a campaign rule on item indices
    or None; a rewrite of each item's reason or None) for a personal-variant customer."""
    cat = engine.state.current.catalog
    uid = trigger.user_id
    if name == "abandoned-cart":
        anchor = trigger.items[0]
        i = cat.idx(anchor)
        category = str(cat.categories[i]) if i is not None else ""
        cart = dataclasses.replace(context, cart=tuple(trigger.items))
        if trigger.kind == T.PRICE_DOUBT and i is not None:
            recs = engine.similar_items(anchor, k, uid, dataclasses.replace(cart, cheaper=True))
            same = (lambda j: cat.categories[j] == category) if category else None
            return recs, same, lambda r: f"price doubt: {r.reason}"
        # The category's own popularity order: no cart in the context (its complements would be
        # boosted); the carted items are left out by the campaign's rule instead.
        recs = engine.popular(k, category=category or None, context=context)
        carted = {cat.idx(x) for x in trigger.items}
        text = f"product doubt: most popular in {R.label(category)}"
        return recs, (lambda j: j not in carted), (lambda _: text)
    if name == "post-purchase":
        durable = trigger.items[0]
        i = cat.idx(durable)
        recs = engine.bought_together([durable], k, uid, context)
        if i is None:
            return recs, None, None
        other = _under(cat, str(cat.categories[i]))
        return recs, (lambda j: not other(j)), None
    if name == "replenishment":
        return _due_first(trigger, engine.recommend(uid, k, context, now=now)), None, None
    return engine.recommend(uid, k, context, now=now), None, None


def _due_first(trigger: T.Trigger, recs: list[Any]) -> list[Any]:
    """Replenishment: the trigger's due items first (soonest due first, the block's top score, reason
    "running out: buy it again"), then the rest of the engine's block."""
    from serving.ranking import Rec

    top = max((r.score for r in recs), default=1.0)
    due = [Rec(iid, float(top), "running out: buy it again") for iid in trigger.items]
    return due + [r for r in recs if r.item_id not in set(trigger.items)]


def campaign_block(
    name: str,
    engine: Any,
    trigger: T.Trigger,
    k: int,
    context: Context,
    now: float,
    capped: set[str],
    *,
    control: bool = False,
) -> tuple[list[Any], int]:
    """The customer's block of at most k items: the engine's answer for the campaign (the popular
    block for the control variant), held to `engine.allowed` at `now`, the campaign's own rule and
    the frequency cap (`capped` item ids). Returns (recs, items the cap held back)."""
    from serving.pipeline import MAX_K
    from serving.ranking import Rec

    allowed = engine.allowed(trigger.user_id, context, now=now)
    index = engine.state.current.catalog.index
    # First exactly k (with nothing held back the block is the engine's own answer, to the new
    # item's place at its end), then deeper answers when rules, cap or campaign held items back.
    attempts = sorted({k, min(MAX_K, 4 * k + len(capped) + 10), MAX_K})
    for attempt in attempts:
        if control:
            recs, rule, rewrite = engine.popular(attempt, context=context), None, None
        else:
            recs, rule, rewrite = _candidates(name, engine, trigger, attempt, context, now)
        out: list[Any] = []
        held = 0
        seen: set[str] = set()
        for r in recs:
            i = index.get(r.item_id)
            if i is None or not allowed[i] or r.item_id in seen or (rule is not None and not rule(i)):
                continue
            if r.item_id in capped:
                held += 1
                continue
            seen.add(r.item_id)
            out.append(Rec(r.item_id, r.score, rewrite(r) if rewrite else r.reason))
            if len(out) == k:
                return out, held
        if len(recs) < attempt or attempt == MAX_K:
            break  # the engine had no more to give
    return out, held


# -- the frequency cap -----------------------------------------------------------------------------


def mailed_items(impressions: pd.DataFrame, since: float) -> dict[str, set[str]]:
    """Hashed customer -> item ids mailed to them since `since` (epoch s): impressions of the
    campaign feeds and of `shoprec recommend` (MAILED_ENDPOINTS) in the log (serving.ab)."""
    if impressions.empty or "endpoint" not in impressions.columns:
        return {}
    ep = impressions["endpoint"].fillna("").astype(str)
    mailed = ep.map(lambda e: any(e.startswith(p) if p.endswith("/") else e == p for p in MAILED_ENDPOINTS))
    rows = impressions[mailed & (impressions["ts"].astype(float) >= since) & impressions["user"].notna()]
    out: dict[str, set[str]] = {}
    for user, items in zip(rows["user"], rows["items"], strict=True):
        out.setdefault(str(user), set()).update(str(i) for i in (items or []))
    return out


# -- one campaign ----------------------------------------------------------------------------------


def select(
    name: str,
    events: pd.DataFrame,
    items: pd.DataFrame,
    policy: Any,
    now: float,
    config: CampaignConfig,
    segments: pd.DataFrame | None = None,
) -> list[T.Trigger]:
    """The customers the campaign's trigger selects at `now`, each with why."""
    if name == "abandoned-cart":
        return T.abandoned_carts(events, items, now, config)
    if name == "reactivation":
        if segments is None:
            raise ValueError("reactivation needs the segment list (training.segments)")
        return T.lapsed_customers(segments, config.segment_list)
    if name == "replenishment":
        return T.due_purchases(T.last_purchases(events, now), items, policy, now, config)
    if name == "post-purchase":
        return T.recent_durables(events, items, policy, now, config)
    raise ValueError(f"unknown campaign {name!r}; choose one of {', '.join(CAMPAIGNS)}")


def build_campaign(
    name: str,
    triggers: list[T.Trigger],
    router: Any,
    models: Any,
    *,
    k: int,
    now: float,
    config: CampaignConfig,
    impressions: pd.DataFrame,
    salt: str,
    vip: set[str] | None = None,
    sent_at: float | None = None,
    progress: bool = False,
) -> CampaignResult:
    """The feed of `triggers` (select()): consent, the engine's blocks, the frequency cap, and one
    impression per mailed block in the router's impression log (endpoint `campaign/<name>`).

    router: serving.router.Router (variant, engine, impression log); models: its Models snapshot.
    impressions: the log read before this run (serving.ab.read_impressions), for the cap; salt:
    the log's user-hash salt. sent_at: the wall-clock time the mail goes out (the cap's clock)."""
    from tqdm.auto import tqdm

    from features.consent import consent_given
    from serving.ab import CONTROL, hash_user
    from serving.feed import feed_context

    sent_at = time.time() if sent_at is None else sent_at
    capped_by_user = (
        mailed_items(impressions, sent_at - config.cap_days * T.DAY) if config.cap_days > 0 else {}
    )
    context = feed_context("learned")
    state = models.champion.state
    funnel = {"selected": len(triggers), "erased": 0, "no_consent_email": 0, "no_consent_personalisation": 0,
              "nothing_left": 0, "mailed": 0}  # fmt: skip
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    held_total = 0
    vip = vip or set()
    for tr in tqdm(triggers, desc=f"campaign {name}", unit="customer", disable=not progress):
        uid = tr.user_id
        if state.is_forgotten(uid):
            funnel["erased"] += 1
            continue
        c = state.customer(uid)
        has_table = state.has_customers_table
        email = c.consent_email if c is not None else consent_given(None, has_customers_table=has_table)
        if not email:
            funnel["no_consent_email"] += 1
            continue
        personal = c.consent if c is not None else consent_given(None, has_customers_table=has_table)
        if name in PERSONAL_TRIGGERS and not personal:
            funnel["no_consent_personalisation"] += 1
            continue
        variant = router.variant(models, uid)
        engine, version = router.engine(models, variant)
        capped = capped_by_user.get(hash_user(uid, salt), set())
        recs, held = campaign_block(name, engine, tr, k, context, now, capped, control=variant == CONTROL)
        if not recs and name == "abandoned-cart" and tr.kind == T.PRICE_DOUBT:
            # nothing cheaper of its category may be shown: the category's most popular instead
            tr = dataclasses.replace(
                tr, kind=T.PRODUCT_DOUBT, text=f"{tr.text}; nothing cheaper in its category to show"
            )
            recs, held2 = campaign_block(name, engine, tr, k, context, now, capped)
            held += held2
        held_total += held
        if not recs or (
            name == "replenishment" and variant != CONTROL and not set(tr.items) & {r.item_id for r in recs}
        ):
            # nothing to mail (a reminder without a due item that may be shown is no reminder)
            funnel["nothing_left"] += 1
            continue
        answer = router.record(f"campaign/{name}", uid, variant, version, recs)
        funnel["mailed"] += 1
        for rank, r in enumerate(recs, 1):
            for col, v in zip(
                COLUMNS,
                (uid, rank, r.item_id, r.score, r.reason, variant, version, answer.recommendation_id,
                 name, tr.text, uid in vip),
                strict=True,
            ):  # fmt: skip
                cols[col].append(v)
    frame = pd.DataFrame(cols, columns=list(COLUMNS)).astype(
        {"rank": "int64", "score": "float64", "vip": bool}
    )
    return CampaignResult(name, frame, funnel, held_total, now)


# -- the workspace -----------------------------------------------------------------------------------


def load_events(ws: Workspace) -> pd.DataFrame:
    """The workspace's events as the triggers read them (user_id, item_id, event_type, ts in epoch
    s, price): the validated table and what the service was told since the last feature build (the
    change log past the folded position), erased customers left out."""
    import pyarrow.parquet as pq

    from features import changelog
    from features.privacy import ForgetList
    from serving.sync import _folded_positions

    want = ["user_id", "item_id", "event_type", "timestamp", "price"]
    path = ws.validated("events")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `shoprec features build --data {ws.root}` first")
    have = set(pq.read_schema(path).names)
    frames = [pd.read_parquet(path, columns=[c for c in want if c in have])]
    pos = _folded_positions(ws).get("events", 0)
    if changelog.log_path(ws, "events").exists():
        rows, _ = changelog.read(ws, "events", since=pos)
        if rows.num_rows:
            frames.append(rows.to_pandas()[[c for c in want if c in rows.column_names]])
    ev = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if "price" not in ev.columns:
        ev["price"] = np.nan
    ts = pd.to_datetime(ev["timestamp"], utc=True)
    ev = ev.assign(ts=(ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).drop(columns="timestamp")
    ev["user_id"] = ev["user_id"].astype(str)
    ev["item_id"] = ev["item_id"].astype(str)
    forgotten = ForgetList(ws)
    gone = [u for u in ev["user_id"].unique() if u in forgotten] if forgotten.hashes() else []
    return ev[~ev["user_id"].isin(gone)] if gone else ev


def vip_customers(ws: Workspace, config: Any = None) -> set[str]:
    """Customers the lifecycle VIP rule marks (features.lifecycle.vip_rule on the profiles' RFM
    scores, whatever their segment today)."""
    from features.lifecycle import SegmentConfig, vip_rule

    prof = pd.read_parquet(ws.feature("profiles"), columns=["user_id", "f_score", "m_score", "monetary"])
    has_money = bool((prof["monetary"].fillna(0) > 0).any())
    mask = vip_rule(prof, config=config or SegmentConfig(), has_money=has_money)
    return set(prof.loc[mask.to_numpy(), "user_id"].astype(str))


def run_campaign(
    ws: Workspace,
    name: str,
    out: str | Path,
    *,
    k: int = 10,
    config: CampaignConfig | None = None,
    now: float | None = None,
    model_uri: str | None = None,
    progress: bool = True,
) -> tuple[CampaignResult, dict[str, Any]]:
    """Select, build and write the campaign `name` of the workspace (the champion, or `model_uri`,
    over the live shop state, through serving.feed.Feed's router). `now` defaults to the workspace's
    newest event (a shop's data stop at its last event; on a live shop that is a moment ago).
    Returns the result and the summary for the JSON line."""
    from serving.ab import read_impressions
    from serving.feed import Feed, write_output

    if name not in CAMPAIGNS:
        raise ValueError(f"unknown campaign {name!r}; choose one of {', '.join(CAMPAIGNS)}")
    if Path(str(out)).suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"--out must end in .csv or .parquet, got {Path(out).name!r}")
    config = config or CampaignConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    events = load_events(ws)
    when = float(events["ts"].max()) if now is None and len(events) else float(now or time.time())
    timings["load"] = time.perf_counter() - t0
    segments = None
    notes: list[str] = []
    from features.lifecycle import SegmentConfig

    seg_config = SegmentConfig(cycle_days=config.cycle_days)
    if name == "reactivation":
        from training.segments import customer_segments

        t = time.perf_counter()
        seg = customer_segments(ws, seg_config)
        segments, notes = seg.frame, list(seg.warnings)
        timings["segments"] = time.perf_counter() - t
    t = time.perf_counter()
    feed = Feed(ws, model_uri=model_uri)
    timings["engine"] = time.perf_counter() - t
    try:
        models = feed.holder.models
        champion = models.champion
        items = items_frame(champion.state.current.catalog)
        t = time.perf_counter()
        triggers = select(name, events, items, champion.policy, when, config, segments)
        timings["trigger"] = time.perf_counter() - t
        if name == "post-purchase" and not _knows_durables(champion.policy, items):
            notes.append("the re-buy policy knows no durable category: post-purchase selects nobody")
        t = time.perf_counter()
        result = build_campaign(
            name, triggers, feed.router, models, k=k, now=when, config=config,
            impressions=read_impressions(feed.impressions.path), salt=feed.impressions.salt,
            vip=vip_customers(ws, seg_config), progress=progress,
        )  # fmt: skip
        timings["feed"] = time.perf_counter() - t
    finally:
        feed.close()
    result.notes = notes
    path = write_output(result.frame, out)
    timings["total"] = time.perf_counter() - t0
    firsts = result.frame.drop_duplicates("user_id")
    summary: dict[str, Any] = {
        "campaign": name,
        "out": str(path),
        "now": pd.Timestamp(round(when), unit="s", tz="UTC").isoformat(),
        "model": champion.model.name if model_uri is None else model_uri,
        "model_version": models.champion_version,
        "customers": len(firsts),
        "rows": len(result.frame),
        "vip": int(firsts["vip"].sum()),
        "funnel": result.funnel,
        "capped_items": result.capped_items,
        "variants": firsts["variant"].value_counts().to_dict(),
        "config": config.to_dict(),
        "timings": {k_: round(v, 3) for k_, v in timings.items()},
        "notes": notes,
    }
    return result, summary


def _knows_durables(policy: Any, items: pd.DataFrame) -> bool:
    """Whether the policy calls any category of the catalogue durable."""
    cats = np.asarray(sorted(set(items["category"].fillna("").astype(str).str.strip("/"))), dtype=object)
    if not len(cats):
        return False
    until = np.asarray(policy.durable_until(np.full(len(cats), "", object), cats, np.zeros(len(cats))))
    return bool(np.isfinite(until).any() and (until > 0).any())


def report(result: CampaignResult, summary: dict[str, Any]) -> tuple[str, Any, list[str]]:
    """The funnel for a person (features.console.show): (heading, table, lines)."""
    from rich.table import Table

    table = Table()
    table.add_column("customers")
    table.add_column("count", justify="right")
    labels = {
        "selected": "selected by the trigger",
        "erased": "erased (shoprec forget): left out",
        "no_consent_email": "without consent_email: left out",
        "no_consent_personalisation": "without consent_personalisation: left out",
        "nothing_left": "nothing left to mail (rules, frequency cap)",
        "mailed": "in the feed",
    }
    for key, label in labels.items():
        table.add_row(label, f"{result.funnel.get(key, 0):,}")
    lines = [
        f"{summary['rows']:,} rows · {summary['vip']:,} VIP customers · variants {summary['variants']} · "
        f"{result.capped_items:,} items held back by the frequency cap ({summary['config']['cap_days']:g} days)",
        f"as of {summary['now']} · took {summary['timings']['total']:.1f} s",
    ]
    if len(result.frame):
        first = result.frame.iloc[0]
        lines.insert(0, f"e.g. {first['user_id']}: {first['trigger']}")
    lines += [f"note: {n}" for n in summary["notes"]]
    return f"shoprec campaign {result.name}", table, lines
