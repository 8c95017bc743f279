"""The serving engine: one model × the live shop state × the rules, for every channel.

`Engine(bundle, state)` answers the calls the HTTP service, the e-mail feed (`shoprec recommend`)
and the campaign feeds make, with the same rules everywhere:

- `recommend`: one customer's block. Personal scores from the model (serving/scoring.py), hard
  rules as boolean masks over the current catalogue and stock (serving/rules.py: stock in size,
  gender, purchases against the learned re-buy policy, durables, the cart and the current item),
  page context and real-time events as boosts, at most N per brand / leaf category, a reason per
  item (serving/reasons.py), and a place for an item new in the customer's categories. Unknown
  customer -> popular for the context and segment; no consent -> exactly `popular(k, context=...)`.
- `bought_together` (one item or a whole cart), `similar_items` (with cheaper alternatives),
  `popular` (per segment / category), `recommend_batch` (many customers, the e-mail feed).
- `record_events` / `forget` write to the online store (serving/store.py).

The model comes from the bundle (serving/bundle.py: only what was learned); the shop comes from
`serving.state.ShopState`, which `POST /catalog`, `/stock` and `/customers` change while serving.
Every call reads one state snapshot and uses it to the end. Nothing here uses pandas per request.
Every call returns at most k `Rec`s, and exactly k whenever k eligible items exist.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving import filters as F
from serving import reasons as R
from serving.bundle import Bundle, load_bundle
from serving.context import ContextBoost
from serving.fill import Fill
from serving.neighbours import ItemMap, Neighbours, content_neighbours
from serving.ranking import (
    Boost,
    NeedsAllScores,
    Ranker,
    Rec,
    Support,
    candidate_reach,
    in_sorted,
    keys_of,
    norm,
    sorted_unique,
    squash,
)
from serving.rules import Purchased, PurchaseRules, context_key, context_mask, kept_out
from serving.scoring import ModelScorer
from serving.state import Customer, ShopState, Snapshot
from serving.store import Event, InMemoryStore, OnlineStore, parse_event

log = logging.getLogger(__name__)

MAX_K = 1000

__all__ = ["Context", "Engine", "EngineConfig", "Rec", "Support"]


@dataclass(frozen=True)
class Context:
    """Where the block is shown. `cart` holds item ids; `size`/`gender` are explicit preferences
    (they win over learned ones); `max_price`/`cheaper` ask for cheaper alternatives; `device`,
    `city` and `weather` describe the visit."""

    channel: str = "web"
    page_category: str | None = None
    current_item: str | None = None
    cart: tuple[str, ...] = ()
    size: str | None = None
    gender: str | None = None
    max_price: float | None = None
    cheaper: bool = False
    device: str | None = None
    city: str | None = None
    weather: str | None = None
    # Which of a customer's past items may come back: "learned" (the re-buy policy, every
    # channel's default), "always" keeps out everything they interacted with, "never" nothing.
    exclude_seen: str = "learned"


@dataclass(frozen=True)
class EngineConfig:
    """Tuning knobs of the pipeline; defaults work for a web shop. Unknown keys are an error."""

    max_per_brand: int = 3  # diversity: at most this many items of one brand per block
    max_per_category: int = 3  # ... and of one leaf category
    overfetch: int = 4  # candidates ranked before diversity = k * overfetch (grown when short)
    recent_events: int = 50  # newest online-store events read per request
    session_views: int = 5  # distinct recent views whose neighbours are boosted
    session_boost: float = 0.5  # boost (in normalised score units, top candidate = 1) for those
    complement_boost: float = 0.5  # boost for complements of the cart / recent purchases
    # Extra boost for the complements of a durable just bought (a laptop: its bag and mouse), x their
    # normalised complement score: the other laptops are out, the accessories come in. 3: the model's
    # own scores rarely point to them (on the synthetic shop they sit far below the block's
    # candidates), while a weak complement (score 1/50 of the best) gains a mere 0.06.
    durable_complement_boost: float = 3.0
    # ... for a durable bought this many days ago at most, from the online store or the history the
    # model was built from (a laptop bought the day before a rebuild still wants its bag)
    durable_complement_days: float = 30.0
    rebuy_boost: float = 0.3  # boost for purchased items whose re-buy window has passed
    neighbours: int = 30  # neighbours fetched per item for boosts and bought-together
    cache_items: int = 50_000  # per-item neighbour lists kept in memory
    warm_items: int = 2048  # neighbour lists of the most popular items computed at load, in batches
    # Catalogues at least this large score a factor model's personal block longest item factors
    # first and stop once nothing unscored can reach the candidates (serving/mips.py: exact, not
    # approximate); smaller ones score every item, which costs no more there.
    prune_min_items: int = 20_000
    prune_block: int = 2048  # items scored before the first check (then doubling blocks)
    # New items (no interactions yet, added within `new_item_days`) get this many places of a
    # personal block when one lies in a category of the customer's recent history.
    new_item_slots: int = 1
    new_item_days: float = 30.0
    # The visit's context (device, city, weather): items of the categories it was learned to lift
    # (serving/context.py) get up to this boost (a doubling of the category's share = the full boost).
    context_boost: float = 0.3

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EngineConfig:
        from features.strict import strict_fields

        return cls(**strict_fields(cls, values))

    def __post_init__(self) -> None:
        for name in ("max_per_brand", "max_per_category", "overfetch", "neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1")


class Engine:
    """Answers recommendation calls from one loaded model bundle over the live shop state."""

    def __init__(
        self,
        bundle: Bundle,
        state: ShopState | None = None,
        *,
        store: OnlineStore | None = None,
        model_version: str = "local",
        config: EngineConfig | None = None,
    ) -> None:
        self.bundle = bundle
        self.model = bundle.model
        self.complements_model = bundle.complements
        self.state = state if state is not None else ShopState.from_model_items(bundle.model.items)
        self.store: OnlineStore = store if store is not None else InMemoryStore()
        self.model_version = model_version
        self.config = cfg = config or EngineConfig()
        self.weights = dict(bundle.event_weights)

        # Every item a model knows has a place in the state (inactive when the catalogue no longer
        # lists it), so the model's scores always map onto state items.
        for m in (self.model, self.complements_model):
            if m is not None:
                self.state.ensure_items(m.items["item_id"].astype(str).tolist())
        index = self.state.current.catalog.index
        self.items = ItemMap(_model_item_ids(self.model), index)
        self.scorer = ModelScorer(
            self.model, self.items, prune_min_items=cfg.prune_min_items, prune_block=cfg.prune_block
        )
        self.similar = Neighbours(self.model, self.items, cfg.neighbours, cfg.cache_items)
        self.complements = (
            Neighbours(
                self.complements_model,
                ItemMap(_model_item_ids(self.complements_model), index),
                cfg.neighbours,
                cfg.cache_items,
            )
            if self.complements_model is not None
            else None
        )
        self.policy = bundle.policy
        self.context_lift = ContextBoost(getattr(bundle, "context_lift", None))
        h = self.state.histories
        row_user = np.full(h.user_items.shape[0], "", dtype=object)
        for uid, c in self.state.customers.items():
            if 0 <= c.row < len(row_user):
                row_user[c.row] = uid
        self.purchases = PurchaseRules(self.policy, h, row_user)
        self._warm(self.state.current)
        # Keep the structure caches of every new snapshot warm in the state's own thread, not in
        # the first request after a catalogue change. A weak reference: a swapped-out engine is
        # freed when its last request ends, and then stops listening.
        ref, state = weakref.ref(self), self.state

        def on_change(kind: str, snap: Snapshot) -> None:
            engine = ref()
            if engine is None:
                state.unsubscribe(on_change)
            elif kind == "catalog":
                engine._warm_structure(snap)

        self._listener = on_change
        self.state.subscribe(on_change)

    @classmethod
    def from_bundle(
        cls,
        path: Path,
        state: ShopState | None = None,
        *,
        store: OnlineStore | None = None,
        model_version: str = "local",
        config: EngineConfig | None = None,
    ) -> Engine:
        """Load the bundle directory at `path` (docs/workspace.md) over `state`."""
        return cls(load_bundle(path), state, store=store, model_version=model_version, config=config)

    def close(self) -> None:
        """Stop following the shop state (a swapped-out engine)."""
        self.state.unsubscribe(self._listener)

    # -- per snapshot -------------------------------------------------------------------------------
    def _structure(self, snap: Snapshot) -> dict[str, Any]:
        """What depends on the catalogue's items, categories and popularity (kept across stock
        changes): the squashed popularity and the bought-together fill."""
        st = snap.structure
        if "fill" not in st:
            pop = squash(snap.popularity)
            pop.setflags(write=False)
            st.setdefault("pop_squashed", pop)
            st.setdefault("fill", Fill(snap.catalog, st["pop_squashed"], self.config))
        return st

    def _ranker(self, snap: Snapshot) -> Ranker:
        return Ranker(snap.catalog, self._structure(snap)["pop_squashed"], self.config)

    def _warm_structure(self, snap: Snapshot) -> None:
        st = self._structure(snap)
        if snap.n >= self.config.prune_min_items:
            st["fill"].warm()

    def _warm(self, snap: Snapshot) -> None:
        """Neighbour and complement lists of the most popular items at load, in batches (requests
        mostly touch popular items, so cold-cache lookups leave the request path)."""
        self._warm_structure(snap)
        n = min(self.config.warm_items, snap.n)
        if n <= 0:
            return
        hot = np.argsort(-snap.popularity, kind="stable")[:n]
        hot = hot[snap.interacted[hot]]
        self.similar.warm(hot)
        if self.complements is not None:
            self.complements.warm(hot, lambda p: (p[0][p[1] > 0], p[1][p[1] > 0]))

    # -- public API --------------------------------------------------------------------------------
    def recommend(
        self, user_id: str | None, k: int, context: Context = Context(), *, now: float | None = None
    ) -> list[Rec]:
        """The customer's block of k items for `context`. `now` (epoch s) is the time the re-buy
        windows are measured against (default: the wall clock)."""
        k = _check_k(k)
        snap = self.state.current
        return self._recommend(snap, user_id, k, context, time.time() if now is None else float(now), None)

    def recommend_batch(
        self, user_ids: list[str], k: int, context: Context = Context(), *, now: float | None = None
    ) -> dict[str, list[Rec]]:
        """One block per user (the e-mail feed); duplicates answered once. Exactly the blocks of
        `recommend` per user, from one state snapshot; with a length-pruned factor model
        (serving/mips.py) the users' scores of the longest item factors come from one matrix product
        per 256 users instead of one matrix-vector product each."""
        k = _check_k(k)
        now = time.time() if now is None else float(now)
        snap = self.state.current
        uids = list(dict.fromkeys(user_ids))
        out: dict[str, list[Rec]] = {}
        for start in range(0, len(uids), 256):
            chunk = uids[start : start + 256]
            ahead = self._ahead_scores(chunk)
            for uid in chunk:
                out[uid] = self._recommend(snap, uid, k, context, now, ahead.get(uid))
        return out

    def bought_together(
        self, item_ids: list[str], k: int, user_id: str | None = None, context: Context = Context()
    ) -> list[Rec]:
        """Complements of one item or of a whole cart (never the items themselves). Unknown ids
        are skipped; with none known, popular for the context."""
        k = _check_k(k)
        snap = self.state.current
        cat = snap.catalog
        src = [i for i in dict.fromkeys(cat.idx(x) for x in item_ids) if i is not None]
        if not src:
            return self.popular(k, context=context)
        customer = self._customer(user_id)
        personal = customer is not None and customer.consent
        # Complement scores summed over the sources, on the touched items only (a few dozen per
        # source): the catalogue-wide arrays cost more than the rest of a pruned request.
        found = [(s, *self._complements_of(snap, s)) for s in src]
        found = [f for f in found if len(f[1])]
        touched = sorted_unique(np.concatenate([f[1] for f in found])) if found else np.zeros(0, np.int64)
        agg = np.zeros(len(touched))
        best = np.zeros(len(touched))
        source = np.full(len(touched), -1, dtype=np.int64)
        for s, ids, sc in found:
            at = np.searchsorted(touched, ids)
            scaled = sc / (sc.max() if sc.max() > 0 else 1.0)
            agg[at] += scaled
            better = scaled > best[at]
            best[at[better]] = scaled[better]
            source[at[better]] = s
        allowed = self._context_mask(snap, context, customer if personal else None)
        allowed[src] = False
        allowed[_known(cat, context.cart)] = False
        if personal:  # without consent: the shared block, whatever they bought
            allowed[self._kept_out_now(snap, customer, str(user_id), personal, context)] = False
        keep = (agg > 0) & allowed[touched]
        primary = touched[keep]
        titles = cat.titles
        source_of = dict(zip(touched.tolist(), source.tolist(), strict=True))

        def reason(i: int) -> str:
            s = source_of.get(i, -1)
            return R.bought_together_with(titles[s]) if s >= 0 else R.popular_in(cat.categories[i])

        # Complements first; popular items of the sources' categories fill a short block.
        fill = self._structure(snap)["fill"]
        if cat.n >= self.config.prune_min_items:
            try:
                return fill.rank(agg[keep], allowed, k, primary, fill.parent_keys(src), reason)
            except NeedsAllScores:
                pass
        base = np.zeros(cat.n)
        base[touched] = agg
        return self._ranker(snap).rank(
            base, allowed, k, primary=primary, fill=fill.vector(src), reason=reason
        )

    def similar_items(
        self, item_id: str, k: int, user_id: str | None = None, context: Context = Context()
    ) -> list[Rec]:
        """Items like `item_id` (the model's similarity; for a new item without interactions, the
        catalogue: category, brand, price). `context.cheaper` or `context.max_price` keeps only items
        cheaper than the reference. Unknown item -> popular for the context."""
        k = _check_k(k)
        snap = self.state.current
        cat = snap.catalog
        i = cat.idx(item_id)
        if i is None:
            return self.popular(k, context=context)
        customer = self._customer(user_id)
        personal = customer is not None and customer.consent
        allowed = self._context_mask(snap, context, customer if personal else None)
        allowed[i] = False
        allowed[_known(cat, context.cart)] = False
        if personal:  # without consent: the shared block, whatever they bought
            allowed[self._kept_out_now(snap, customer, str(user_id), personal, context)] = False
        ref = cat.price[i]
        cheaper = context.cheaper or context.max_price is not None
        if cheaper:
            # Only items strictly cheaper than the reference (when its price is known), within budget.
            below = float(ref) if np.isfinite(ref) else None
            allowed &= F.price_mask(cat, below=below, max_price=context.max_price)
        ids, sc = self._neighbours(snap, i)
        primary = ids if snap.interacted[i] else np.zeros(0, np.int64)
        base = np.zeros(cat.n)
        base[ids] = sc
        title = cat.titles[i]
        text = f"a cheaper alternative to {title}" if cheaper else f"similar to {title}"
        primary = primary[allowed[primary]]
        ranker = self._ranker(snap)
        if len(primary) >= k:
            recs = ranker.rank(base, allowed, k, primary=primary, reason=lambda _: text)
            if len(recs) == k and recs[-1].score >= 2.0:  # the model's neighbours filled the block
                return recs
        # Short of neighbours (new item, strict price filter): fill by catalogue similarity.
        fill = F.content_neighbours(cat, i)
        return ranker.rank(base, allowed, k, primary=primary, fill=fill, reason=lambda _: text)

    def popular(
        self, k: int, segment: str | None = None, category: str | None = None, context: Context = Context()
    ) -> list[Rec]:
        """The non-personal answer: popular items (in `segment`, under `category`) for the context,
        using only what the request itself says (size, gender, cart, page)."""
        k = _check_k(k)
        return self._popular_block(self.state.current, k, segment, category, context, None, [])

    def allowed(
        self, user_id: str | None, context: Context = Context(), *, now: float | None = None
    ) -> np.ndarray:
        """What the rules let into a block for this customer now: a fresh (n,) bool array over the
        current catalogue's item indices (`state.current.catalog.index`). Stock (in the customer's
        size where they consent, else the request's), gender, the cart and the page's item; for a
        consenting customer also their purchases under the re-buy policy at `now` (history and the
        online store's newest purchases) and the durables' categories, `exclude_seen` as in the
        personal block (a customer without consent gets the shared block's rules only). The campaign feeds (serving/campaigns.py) hold every row they mail to it."""
        from serving.rules import durable_block

        snap = self.state.current
        cat = snap.catalog
        now = time.time() if now is None else float(now)
        customer = self._customer(user_id)
        personal = customer is not None and customer.consent
        allowed = self._context_mask(snap, context, customer if personal else None)
        allowed[_known(cat, context.cart)] = False
        cur = cat.idx(context.current_item)
        if cur is not None:
            allowed[cur] = False
        if not personal or context.exclude_seen == "never":  # without consent: the request's rules only
            return allowed
        events = self.store.recent(str(user_id), self.config.recent_events)
        fresh = [e for e in events if e.item_id in cat.index]
        bought = self.purchases.split(
            snap, customer.row, str(user_id),
            [(cat.index[e.item_id], e.timestamp) for e in fresh if e.event_type == "purchase"], now,
        )  # fmt: skip
        allowed[bought.keep_out] = False
        allowed[durable_block(cat, bought.durable)] = False
        if context.exclude_seen == "always":
            allowed[self._history_row(customer, fresh, cat).indices.astype(np.int64)] = False
        return allowed

    def rerank(
        self,
        user_id: str | None,
        item_ids: list[str],
        context: Context = Context(),
        *,
        now: float | None = None,
    ) -> list[Rec]:
        """The given items (a search result, a category lister) in the customer's order, every one
        kept: serving/rerank.py."""
        from serving.rerank import rerank

        return rerank(self, user_id, item_ids, context, now=now)

    def record_events(self, events: list[dict]) -> int:
        """Validate and store real-time events; returns how many were stored. Events of customers
        without consent for personalisation are not stored. Raises ValueError naming the bad event."""
        parsed: list[Event] = []
        for n, raw in enumerate(events):
            try:
                parsed.append(parse_event(raw))
            except ValueError as e:
                raise ValueError(f"event {n}: {e}") from None
        self.state.observe([e for e in parsed if not self._is_forgotten(e.user_id)])
        keep = [
            e for e in parsed if self.state.may_personalise(e.user_id) and not self._is_forgotten(e.user_id)
        ]
        return self.store.add(keep) if keep else 0

    def forget(self, user_id: str) -> None:
        """Erase the customer from the online store, the shop state and the served model's user
        rows, in this process (serving.service also erases the workspace and the bundles)."""
        uid = str(user_id)
        self.state.forget(uid)
        self.scorer.forget(uid)
        if not self.store.forget(uid):
            log.warning("forget: the online store was unreachable; the erasure must be retried")

    def health(self) -> dict:
        """Readiness detail: store state, catalogue and user counts, model and version."""
        snap = self.state.current
        return {
            "store": self.store.health(),
            "items": snap.n,
            "active_items": int(snap.catalog.active.sum()) if snap.catalog.active is not None else snap.n,
            "users": len(self.state.customers),
            "state_version": snap.version,
            "model": getattr(self.model, "name", type(self.model).__name__),
            "model_version": self.model_version,
            "complements": self.complements is not None,
            "rebuy_policy": self.policy is not None,
        }

    # -- the customer -------------------------------------------------------------------------------
    def _customer(self, user_id: str | None) -> Customer | None:
        """The customer as the rules see them now: None when unknown or erased. A customer the
        model knows but the state does not is a customer without a history row (no consent when
        the shop keeps a customers table: features.consent)."""
        if user_id is None:
            return None
        uid = str(user_id)
        if self._is_forgotten(uid):
            return None
        c = self.state.customers.get(uid)
        if c is None and self.scorer.user_index(uid) >= 0:
            given = not self.state.has_customers_table
            c = Customer(-1, given, given)
        return c

    def _is_forgotten(self, user_id: str) -> bool:
        if self.state.is_forgotten(user_id):
            return True
        check = getattr(self.store, "is_forgotten", None)
        return bool(check(user_id)) if check is not None else False

    # -- blocks ------------------------------------------------------------------------------------
    def _recommend(
        self,
        snap: Snapshot,
        user_id: str | None,
        k: int,
        context: Context,
        now: float,
        ahead: np.ndarray | None,
    ) -> list[Rec]:
        """`recommend`; `ahead`: approximate scores of the longest item factors (_ahead_scores)."""
        customer = self._customer(user_id)
        if customer is not None and not customer.consent:
            # The one non-personal block for the context, the same for every customer without
            # consent: filtering it by their purchases would be using their data to tailor it.
            return self._popular_block(snap, k, None, None, context, None, [])
        events = self.store.recent(user_id, self.config.recent_events) if user_id else []
        midx = self.scorer.user_index(str(user_id)) if customer is not None else -1
        if customer is None or midx < 0:
            # Cold start: popular for the context and segment, still reacting to this session.
            segment = customer.segment if customer is not None and customer.segment else "new"
            exclude = None
            if customer is not None:
                bought = self._bought(snap, customer, str(user_id), events, now, context)
                exclude = kept_out(snap.catalog, bought)
            return self._popular_block(snap, k, segment, None, context, customer, events, exclude=exclude)
        return self._personal_block(snap, k, context, str(user_id), customer, midx, events, now, ahead)

    def _kept_out_now(
        self, snap: Snapshot, customer: Customer, user_id: str, personal: bool, context: Context
    ) -> np.ndarray:
        """Item indices the customer's purchases keep out of any block now (the online store holds
        events of consenting customers only)."""
        events = self.store.recent(user_id, self.config.recent_events) if personal else []
        return kept_out(snap.catalog, self._bought(snap, customer, user_id, events, time.time(), context))

    def _bought(
        self,
        snap: Snapshot,
        customer: Customer,
        user_id: str,
        events: list[Event],
        now: float,
        context: Context,
    ) -> Purchased:
        """The customer's purchases under the re-buy policy now (history and the online store's
        newest purchases), with the context's `exclude_seen` applied."""
        cat = snap.catalog
        fresh = [e for e in events if e.item_id in cat.index]
        bought = self.purchases.split(
            snap, customer.row, user_id,
            [(cat.index[e.item_id], e.timestamp) for e in fresh if e.event_type == "purchase"], now,
        )  # fmt: skip
        if context.exclude_seen == "never":
            return bought._replace(keep_out=bought.keep_out[:0], durable=[], durable_items=())
        if context.exclude_seen == "always":
            seen = self._history_row(customer, fresh, cat).indices.astype(np.int64)
            keep_out = sorted_unique(np.concatenate([bought.keep_out, seen]))
            return bought._replace(keep_out=keep_out, due=bought.due[:0])
        return bought

    def _personal_block(
        self,
        snap: Snapshot,
        k: int,
        context: Context,
        user_id: str,
        customer: Customer,
        midx: int,
        events: list[Event],
        now: float,
        ahead: np.ndarray | None = None,
    ) -> list[Rec]:
        cat, cfg = snap.catalog, self.config
        fresh = [e for e in events if e.item_id in cat.index]
        factors = self.scorer.has_factors(midx)
        seq = self._sequence(customer, fresh, cat)
        scores: np.ndarray | None = None
        if not factors:
            scores = self.scorer.model_scores(
                midx,
                self._history_row(customer, fresh, cat),
                seq,
                cat.n,
                self._sequence_ts(customer, fresh),
                now,
            )
        allowed = self._context_mask(snap, context, customer)
        bought = self._bought(snap, customer, user_id, events, now, context)
        allowed[kept_out(cat, bought)] = False
        cur = cat.idx(context.current_item)
        cart = _known(cat, context.cart)
        allowed[cart] = False
        if cur is not None:
            allowed[cur] = False
        exposed = allowed.copy() if cfg.new_item_slots > 0 else None
        self.scorer.restrict(allowed)

        boost = Boost()
        reasons: dict[int, str] = {}
        # Complements of the cart, the current item and fresh purchases: "bought together with".
        anchors = (
            list(cart)
            + ([cur] if cur is not None else [])
            + [cat.index[e.item_id] for e in fresh if e.event_type == "purchase"]
        )
        comp_of_current = self._add_complement_boost(snap, anchors, boost, reasons)
        if bought.durable_items and cfg.durable_complement_boost:
            since = now - cfg.durable_complement_days * 86_400.0
            recent = [i for i, t in sorted(bought.durable_items, key=lambda it: -it[1]) if t >= since]
            self._add_complement_boost(snap, recent, boost, reasons, cfg.durable_complement_boost)
        self._add_session_boost(snap, fresh, boost, reasons)
        self._add_context_boost(snap, context, boost, reasons)
        due = bought.due[allowed[bought.due]] if len(bought.due) else bought.due
        if len(due):
            boost.add(due, cfg.rebuy_boost)
            for i in due.tolist():
                reasons[i] = R.BUY_AGAIN
        tier = (
            F.page_tier(
                cat, page_category=context.page_category, current_item=cur, complements=comp_of_current
            )
            if context.page_category or cur is not None
            else None  # page_tier would be all zeros
        )
        tail = list(dict.fromkeys(seq[-3:][::-1].tolist()))
        history_reason = R.history_reasons(cat, tail)

        def reason(i: int) -> str:
            return reasons.get(i) or history_reason(i)

        boosted = keys_of(reasons)
        boosted = boosted[allowed[boosted]] if len(boosted) else boosted
        ranker = self._ranker(snap)
        recs: list[Rec] | None = None
        if factors and self.scorer.by_length is not None:
            try:
                if tier is None:
                    recs = self.scorer.pruned_rank(ranker, midx, allowed, k, boost, boosted, reason, ahead)
                else:
                    pages = F.page_prefixes(cat, context.page_category, cur)
                    recs = self.scorer.pruned_page_rank(
                        ranker, self._structure(snap), midx, allowed, k, boost, boosted, reason, tier, pages,
                        comp_of_current,
                    )  # fmt: skip
            except NeedsAllScores:
                pass  # the block needs deeper candidates than the scans made certain
        if recs is None:
            if scores is None:
                scores = self.scorer.factor_scores(midx, cat.n)
            recs = ranker.rank(scores, allowed, k, boost=boost, boosted=boosted, tier=tier, reason=reason)
        if exposed is not None:
            recs = self._expose_new(snap, recs, exposed, seq, context, k)
        return recs

    def _expose_new(
        self, snap: Snapshot, recs: list[Rec], allowed: np.ndarray, seq: np.ndarray, context: Context, k: int
    ) -> list[Rec]:
        """Give up to `new_item_slots` places of the block (its last ones) to items new in the
        customer's categories: no interactions yet, added within `new_item_days`, allowed by every
        rule, under the leaf category of a recent history item or the page's category. The models
        cannot score an item nobody has bought, so without this it would never be shown."""
        cat, cfg = snap.catalog, self.config
        new = self._new_items(snap)
        if not len(new) or not recs:
            return recs
        cats = [context.page_category.strip("/")] if context.page_category else []
        cats += [cat.categories[i] for i in seq[-10:][::-1].tolist()]  # the most recent first
        cats = [c for c in dict.fromkeys(cats) if c in cat.prefix_items]
        if not cats:
            return recs
        shown = {cat.index[r.item_id] for r in recs}
        picks: list[int] = []
        for c in cats:
            under = cat.prefix_items[c]
            cand = new[in_sorted(under, new)]
            cand = cand[allowed[cand]]
            picks += [i for i in cand.tolist() if i not in shown and i not in picks]
            if len(picks) >= cfg.new_item_slots:
                break
        picks = picks[: min(cfg.new_item_slots, k)]
        if not picks:
            return recs
        keep = recs[: len(recs) - max(0, len(recs) + len(picks) - k)]
        floor = keep[-1].score if keep else 0.0
        ids = cat.item_ids
        return keep + [Rec(str(ids[i]), float(floor), R.new_in(cat.categories[i])) for i in picks]

    def _new_items(self, snap: Snapshot) -> np.ndarray:
        """Items without interactions added within `new_item_days` (or with no date: added since
        the last feature build), newest first; computed once per snapshot."""
        st = snap.structure
        got = st.get("new_items")
        if got is None:
            horizon = time.time() - self.config.new_item_days * 86_400
            created = snap.created_ts
            recent = np.where(np.isnan(created), True, created >= horizon)
            cand = np.flatnonzero(~snap.interacted & recent)
            order = np.argsort(-np.nan_to_num(created[cand], nan=np.inf), kind="stable")
            got = st.setdefault("new_items", cand[order])
        return got

    def _popular_block(
        self,
        snap: Snapshot,
        k: int,
        segment: str | None,
        category: str | None,
        context: Context,
        customer: Customer | None,
        events: list[Event],
        *,
        exclude: np.ndarray | None = None,
    ) -> list[Rec]:
        """exclude: item indices this customer may not be shown (their purchases under the re-buy
        policy): the shared block less those, filled from the same popularity order."""
        plain = (
            not category
            and not context.cart
            and context.current_item is None
            and not context.page_category
            and not any(e.item_id in snap.catalog.index for e in events)
        )
        if not plain:
            return self._rank_popular(snap, k, segment, category, context, customer, events, exclude)
        lifted = self.context_lift.key(context)  # the context's learned lifts change the block
        key = (
            k,
            segment if segment and segment in snap.segment_pop else None,
            self._mask_key(context, customer)[0],
            (self.context_lift.token, lifted) if lifted else (),
        )
        hit = snap.popular_blocks.get(
            key, lambda: tuple(self._rank_popular(snap, k, segment, category, context, customer, events))
        )
        if exclude is not None and len(exclude):
            idx = snap.catalog.index
            if np.isin([idx[r.item_id] for r in hit], exclude).any():
                return self._rank_popular(snap, k, segment, category, context, customer, events, exclude)
        return list(hit)

    def _rank_popular(
        self,
        snap: Snapshot,
        k: int,
        segment: str | None,
        category: str | None,
        context: Context,
        customer: Customer | None,
        events: list[Event],
        exclude: np.ndarray | None = None,
    ) -> list[Rec]:
        """The popular block (`_popular_block`), ranked."""
        cat = snap.catalog
        base = snap.segment_pop.get(segment, snap.popularity) if segment else snap.popularity
        allowed = self._context_mask(snap, context, customer)
        if exclude is not None and len(exclude):
            allowed[exclude] = False
        if category:
            under = cat.prefix_items.get(category.strip("/"))
            if under is not None:  # only the items under it (without another n-sized mask)
                keep = allowed[under]
                allowed[:] = False
                allowed[under] = keep
        cur = cat.idx(context.current_item)
        cart = _known(cat, context.cart)
        allowed[cart] = False
        if cur is not None:
            allowed[cur] = False
        boost = Boost()
        reasons: dict[int, str] = {}
        fresh = [e for e in events if e.item_id in cat.index]
        if fresh:
            bought = [cat.index[e.item_id] for e in fresh if e.event_type == "purchase"]
            allowed[bought] = False
            self._add_complement_boost(snap, bought, boost, reasons)
            self._add_session_boost(snap, fresh, boost, reasons)
        anchors = list(cart) + ([cur] if cur is not None else [])
        comp = self._add_complement_boost(snap, anchors, boost, reasons)
        self._add_context_boost(snap, context, boost, reasons)
        tier = (
            F.page_tier(cat, page_category=context.page_category, current_item=cur, complements=comp)
            if context.page_category or cur is not None
            else None  # page_tier would be all zeros
        )

        def reason(i: int) -> str:
            return reasons.get(i) or R.popular_in(category or cat.categories[i])

        boosted = keys_of(reasons)
        ranker = self._ranker(snap)
        if tier is None and not category and cat.n >= self.config.prune_min_items:
            # Popularity is fixed: its most popular items (and the boosted ones) hold the top of
            # the block, unless the rules leave too few of them (then every item is ranked).
            key = segment if base is not snap.popularity else None
            order, rank = self._popularity_order(snap, key)
            m = candidate_reach(k, self.config.overfetch)
            if len(order) > m:
                # The boosted items outside the first m: by their place in the order.
                outside = boosted[rank[boosted] >= m] if len(boosted) else boosted
                support = Support(np.concatenate([order[:m], outside]), bound=float(base[order[m]]))
                try:
                    return ranker.rank(
                        base, allowed, k, boost=boost, boosted=boosted, reason=reason, support=support
                    )
                except NeedsAllScores:
                    pass
        return ranker.rank(base, allowed, k, boost=boost, boosted=boosted, tier=tier, reason=reason)

    def _popularity_order(self, snap: Snapshot, segment: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(items most popular first, each item's place in that order), overall or in `segment`,
        computed once per catalogue structure."""
        key = ("popularity_order", segment)
        got = snap.structure.get(key)
        if got is None:
            base = snap.segment_pop[segment] if segment is not None else snap.popularity
            order = np.argsort(-base, kind="stable")
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            for a in (order, rank):
                a.setflags(write=False)
            got = snap.structure.setdefault(key, (order, rank))
        return got

    # -- pieces ------------------------------------------------------------------------------------
    def _mask_key(self, context: Context, customer: Customer | None) -> tuple[tuple, Any, str | None]:
        sizes = self.state.histories.sizes.get(customer.row) if customer is not None else None
        affinity = customer.gender_affinity if customer is not None else None
        return context_key(context.size, sizes, context.gender, affinity)

    def _context_mask(self, snap: Snapshot, context: Context, customer: Customer | None) -> np.ndarray:
        """Stock (in the customer's size) and gender, from the request, else the learned profile
        (only for a consenting `customer`): a fresh (n,) bool array the caller may change."""
        key, sizes, gender = self._mask_key(context, customer)
        return context_mask(snap, key, sizes, gender)

    def _sequence(self, customer: Customer, fresh: list[Event], cat: F.Catalog) -> np.ndarray:
        """The customer's item sequence (state indices) with the online store's newest weighted
        events appended."""
        seq = self.state.histories.sequence(customer.row)
        items = [cat.index[e.item_id] for e in reversed(fresh) if self.weights.get(e.event_type)]
        return np.concatenate([seq, np.asarray(items, dtype=np.int64)]) if items else seq

    def _sequence_ts(self, customer: Customer, fresh: list[Event]) -> np.ndarray | None:
        """Epoch seconds of `_sequence`'s items, or None when the build recorded no times."""
        ts = self.state.histories.sequence_times(customer.row)
        if ts is None:
            return None
        new = [int(e.timestamp) for e in reversed(fresh) if self.weights.get(e.event_type)]
        return np.concatenate([ts, np.asarray(new, dtype=np.int64)]) if new else ts

    def _history_row(self, customer: Customer, fresh: list[Event], cat: F.Catalog) -> Any:
        """The customer's interaction row (1, n) in state indices, plus the online store's newest
        events weighted as training weighted them (the bundle's event weights)."""
        import scipy.sparse as sp

        ui = self.state.histories.user_items
        n = cat.n
        if 0 <= customer.row < ui.shape[0]:
            r = ui[customer.row].tocoo()
            cols, vals = r.col.astype(np.int64), r.data.astype(np.float32)
        else:
            cols, vals = np.zeros(0, np.int64), np.zeros(0, np.float32)
        add = [(cat.index[e.item_id], self.weights.get(e.event_type, 0.0)) for e in fresh]
        add = [(i, w) for i, w in add if w]
        if add:
            cols = np.concatenate([cols, np.asarray([i for i, _ in add], dtype=np.int64)])
            vals = np.concatenate([vals, np.asarray([w for _, w in add], dtype=np.float32)])
        return sp.csr_matrix((vals, (np.zeros(len(cols), dtype=np.int64), cols)), shape=(1, n))

    def _ahead_scores(self, user_ids: list[str]) -> dict[str, np.ndarray]:
        """Per user (known to a length-pruned factor model, with consent) the approximate scores of
        the longest item factors, from one matrix product for them all; empty for one user."""
        if self.scorer.by_length is None or len(user_ids) < 2:
            return {}
        found = []
        for uid in user_ids:
            c = self._customer(uid)
            midx = self.scorer.user_index(uid) if c is not None and c.consent else -1
            if midx >= 0:
                found.append((uid, midx))
        if len(found) < 2:
            return {}
        scores = self.scorer.ahead_scores(np.asarray([m for _, m in found], dtype=np.int64))
        return {uid: scores[j] for j, (uid, _) in enumerate(found)}

    def _neighbours(self, snap: Snapshot, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Top neighbours of item i, best first: the model's item similarity where it has one and
        the item has interactions, else catalogue similarity (category, brand, price)."""
        if snap.interacted[i]:
            got = self.similar.of(i)
            if got is not None and len(got[0]):
                return got
        return snap.structure.get(("content", i)) or snap.structure.setdefault(
            ("content", i), content_neighbours(snap.catalog, i, self.config.neighbours)
        )

    def _complements_of(self, snap: Snapshot, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Bought-together items of item i (best first, scores > 0); the main model's neighbours
        when there is no complements model."""
        if self.complements is None:
            ids, sc = self._neighbours(snap, i)
            return ids, np.maximum(sc - sc.min(), 1e-6) if len(sc) else sc
        got = self.complements.of(i)
        if got is None:
            return np.zeros(0, np.int64), np.zeros(0)
        ids, sc = got
        keep = sc > 0
        return (ids, sc) if keep.all() else (ids[keep], sc[keep])

    def _add_complement_boost(
        self,
        snap: Snapshot,
        anchors: list[int],
        boost: Boost,
        reasons: dict[int, str],
        weight: float | None = None,
    ) -> np.ndarray:
        """Boost complements of `anchors` by `weight` (default: complement_boost) x their
        normalised complement score (reason "bought together with <title>"); returns them."""
        found: list[np.ndarray] = []
        titles = snap.catalog.titles
        w = self.config.complement_boost if weight is None else weight
        for a in dict.fromkeys(anchors):
            ids, sc = self._complements_of(snap, a)
            if not len(ids):
                continue
            boost.add(ids, w * norm(sc))
            text = R.bought_together_with(titles[a])
            for i in ids.tolist():
                reasons.setdefault(i, text)
            found.append(ids)
        return sorted_unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def _add_context_boost(
        self, snap: Snapshot, context: Context, boost: Boost, reasons: dict[int, str]
    ) -> None:
        """Boost the categories the visit's context was learned to lift (serving/context.py)."""
        key = self.context_lift.key(context)
        if not key:
            return
        ids, vals, texts = self.context_lift.items(snap.catalog, snap.structure, key, snap.popularity)
        if len(ids):
            boost.add(ids, self.config.context_boost * vals)
            for i, text in zip(ids.tolist(), texts, strict=True):
                reasons.setdefault(i, text)

    def _add_session_boost(
        self, snap: Snapshot, fresh: list[Event], boost: Boost, reasons: dict[int, str]
    ) -> None:
        """Boost neighbours of the newest distinct views (newest weighs most): session-aware."""
        cat = snap.catalog
        views = [cat.index[e.item_id] for e in fresh if e.event_type in ("view", "add_to_cart")]
        for rank, v in enumerate(list(dict.fromkeys(views))[: self.config.session_views]):
            ids, sc = self._neighbours(snap, v)
            if not len(ids):
                continue
            boost.add(ids, self.config.session_boost * norm(sc) / (1 + rank))
            text = R.because_you_viewed(cat.titles[v])
            for i in ids.tolist():
                reasons.setdefault(i, text)


def _model_item_ids(model: Any) -> np.ndarray:
    """A model's item ids in its own index order."""
    return model.items.sort_values("item_idx")["item_id"].astype(str).to_numpy()


def _known(cat: F.Catalog, ids: tuple[str, ...] | list[str]) -> list[int]:
    return [i for i in (cat.idx(x) for x in ids) if i is not None]


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
    return int(k)
