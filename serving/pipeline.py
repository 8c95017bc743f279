"""The serving pipeline: candidates -> filter -> rank -> explain, as one `Engine` over a bundle.

`Engine.from_bundle(path)` loads a serving bundle (serving/bundle.py), precomputes every per-item
array the rules need (serving/filters.py) and answers the calls the HTTP service exposes:

- `recommend`: one customer's block. Personal scores from the model (one matrix-vector product),
  hard rules as boolean masks (stock/size, gender, re-buy window, cart, the current item), page
  context and real-time events as boosts, then at most N per brand / leaf category, then a reason
  per item. Unknown user -> popular for the context and segment; no consent -> exactly
  `popular(k, context=context)`.
- `bought_together` (one item or a whole cart), `similar_items` (with cheaper alternatives),
  `popular` (per segment / category), `recommend_batch` (the e-mail renderer's feed).
- `record_events` / `forget` write to the online store (serving/store.py); `health` says whether
  the store is reachable.

Nothing here uses pandas per request: everything a request touches is a numpy array or a dict
built at load. Every call returns at most k `Rec`s, and exactly k whenever k eligible items exist.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from serving import filters as F
from serving.bundle import Bundle, load_bundle
from serving.mips import NormOrdered, Scan
from serving.store import Event, InMemoryStore, OnlineStore, parse_event
from training.base import History

log = logging.getLogger(__name__)

MAX_K = 1000
_FILL_ORDERS = 256  # parent categories whose bought-together fill order is kept
# Context masks (stock in the size(s), gender) kept: n bytes each, 12.8 MB at 100k items.
_CONTEXT_MASKS = 128
_POPULAR_BLOCKS = 1024  # plain popular blocks kept (k Recs each)


@dataclass(frozen=True)
class Context:
    """Where the block is shown. `cart` holds item ids; `size`/`gender` are explicit preferences
    (they win over learned ones); `max_price`/`cheaper` ask for cheaper alternatives."""

    channel: str = "web"
    page_category: str | None = None
    current_item: str | None = None
    cart: tuple[str, ...] = ()
    size: str | None = None
    gender: str | None = None
    max_price: float | None = None
    cheaper: bool = False


@dataclass(frozen=True)
class Rec:
    """One recommended item: the shop's id, the ranking score (higher first) and a reason a
    marketer can read."""

    item_id: str
    score: float
    reason: str


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
    rebuy_boost: float = 0.3  # boost for purchased items whose re-buy window has passed
    neighbours: int = 30  # neighbours fetched per item for boosts and bought-together
    cache_items: int = 50_000  # per-item neighbour lists kept in memory
    warm_items: int = 2048  # neighbour lists of the most popular items computed at load, in batches
    view_weight: float = 1.0  # weight of real-time events added to the history row
    cart_weight: float = 2.0
    purchase_weight: float = 4.0
    # Catalogues at least this large score a factor model's personal block longest item factors
    # first and stop once nothing unscored can reach the candidates (serving/mips.py: exact, not
    # approximate); smaller ones score every item, which costs no more there.
    prune_min_items: int = 20_000
    prune_block: int = 2048  # items scored before the first check (then doubling blocks)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EngineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown EngineConfig key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def __post_init__(self) -> None:
        for name in ("max_per_brand", "max_per_category", "overfetch", "neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1")


class _NeedsAllScores(Exception):
    """A ranking over a candidate set (`_rank` with `support`) cannot be certain of its block: the
    caller ranks every item instead."""


class _User(NamedTuple):
    fidx: int  # features user_idx (rows of user_items, sizes, last purchases); -1 unknown
    midx: int  # the model's user index; -1 unknown to the model
    segment: str | None
    gender_affinity: str | None
    consent: bool


class _FillOrder(NamedTuple):
    """A category's items in bought-together fill order: most popular first, ties by lower index."""

    items: np.ndarray
    leaves: np.ndarray | None  # the leaf categories among them; None when some item has none


class _Boost:
    """A request's boosts (complements, session, re-buy) of a few dozen items, kept sparse: a
    catalogue-sized float64 array per request (800 KB at 100k items) cost more to allocate and
    zero than every boost together. `add` sums in float64 exactly as `dense[ids] += vals` on a
    zeroed array does (same operands, a repeated id takes its last value), and `at` reads back what
    that array holds, so rankings keep their bits."""

    __slots__ = ("_v",)

    def __init__(self) -> None:
        self._v: dict[int, float] = {}

    def add(self, ids: np.ndarray, vals: np.ndarray | float) -> None:
        ids_l = np.asarray(ids, dtype=np.int64).tolist()
        vals_l = np.broadcast_to(np.asarray(vals, dtype=np.float64), (len(ids_l),)).tolist()
        v = self._v
        self._v.update([(i, v.get(i, 0.0) + x) for i, x in zip(ids_l, vals_l, strict=True)])

    def at(self, items: np.ndarray) -> np.ndarray:
        """(len(items),) float64 boosts of `items` (sorted ascending, unique), 0 where none."""
        out = np.zeros(len(items))
        if self._v and len(items):
            keys = np.fromiter(self._v.keys(), dtype=np.int64, count=len(self._v))
            vals = np.fromiter(self._v.values(), dtype=np.float64, count=len(self._v))
            pos = np.minimum(np.searchsorted(items, keys), len(items) - 1)
            hit = items[pos] == keys
            out[pos[hit]] = vals[hit]
        return out

    def nonzero(self) -> np.ndarray:
        """The boosted items, ascending (np.flatnonzero of the dense array)."""
        return np.sort(np.fromiter((i for i, x in self._v.items() if x != 0), dtype=np.int64))


def _label(category: str) -> str:
    """A category path as a marketer reads it: the leaf, words not slugs ('litter boxes')."""
    leaf = category.strip("/").rsplit("/", 1)[-1]
    return leaf.replace("-", " ").replace("_", " ") or "the shop"


def _bounded_cache(fn: Callable[[int], Any], maxsize: int) -> Callable[[int], Any]:
    """A bounded cache over int keys, oldest entry out first (functools.lru_cache on a method
    would pin `self` and every old Engine after a hot swap). Safe enough under threads: a race
    only computes a value twice."""
    cache: OrderedDict[int, Any] = OrderedDict()

    def put(key: int, value: Any) -> None:
        cache[key] = value
        if len(cache) > maxsize:
            cache.popitem(last=False)

    def get(key: int) -> Any:
        hit = cache.get(key)
        if hit is not None:
            return hit
        value = fn(key)
        put(key, value)
        return value

    get.put = put  # type: ignore[attr-defined]  # pre-filled at load by Engine._warm
    return get


def _load_policy(bundle: Bundle) -> Any:
    """training.policy.RebuyPolicy from the bundle's learned statistics; None when unavailable."""
    try:
        from training.policy import RebuyPolicy
    except ImportError:
        log.warning("training.policy.RebuyPolicy not available: every purchased item stays excluded")
        return None
    return RebuyPolicy.from_frame(bundle.category_rebuy)


class Engine:
    """Answers recommendation calls from one loaded bundle and an online store."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        store: OnlineStore | None = None,
        model_version: str = "local",
        config: EngineConfig | None = None,
    ) -> None:
        self.bundle = bundle
        self.store: OnlineStore = store if store is not None else InMemoryStore()
        self.model_version = model_version
        self.config = config or EngineConfig()
        self.model = bundle.model
        self.complements = bundle.complements
        cat = self.catalog = F.build_catalog(bundle.items, bundle.stock)
        n = cat.n

        # Model item index <-> bundle item index; identical in a bundle from one features build,
        # but a mismatch must map, not silently shift every item.
        self._model_pos, self._model_inv = self._align(self.model)
        self._comp_pos, self._comp_inv = self._align(self.complements) if self.complements else (None, None)

        # Users: features index from the profiles, model index from the model's own mapping.
        model_idx = dict(
            zip(
                self.model.users["user_id"].astype(str), self.model.users["user_idx"].astype(int), strict=True
            )
        )
        prof = bundle.profiles
        self._users: dict[str, _User] = {}
        if len(prof):
            seg = prof["segment"] if "segment" in prof else [None] * len(prof)
            aff = prof["gender_affinity"] if "gender_affinity" in prof else [None] * len(prof)
            consent = (
                prof["consent_personalisation"] if "consent_personalisation" in prof else [None] * len(prof)
            )
            for uid, fidx, s, a, c in zip(prof["user_id"], prof["user_idx"], seg, aff, consent, strict=True):
                given = (
                    True if c is None or c is np.nan or (isinstance(c, float) and np.isnan(c)) else bool(c)
                )
                self._users[uid] = _User(
                    int(fidx), model_idx.get(uid, -1), s if isinstance(s, str) else None,
                    a if isinstance(a, str) else None, given,
                )  # fmt: skip
        for uid, midx in model_idx.items():  # users the model knows but the profiles do not
            if uid not in self._users:
                self._users[uid] = _User(-1, midx, None, None, True)
        self._forgotten: set[str] = set()

        # Learned sizes per user: {features user_idx: {garment path: size}}.
        self._sizes: dict[int, dict[str, str]] = {}
        for u, g, s in zip(
            bundle.sizes["user_idx"], bundle.sizes["garment"], bundle.sizes["size"], strict=True
        ):
            self._sizes.setdefault(int(u), {})[str(g)] = str(s)

        # Last purchases grouped by user as sorted arrays (a request slices with searchsorted).
        lp = bundle.last_purchases
        order = np.argsort(lp["user_idx"].to_numpy(), kind="stable")
        self._lp_user = lp["user_idx"].to_numpy(dtype=np.int64)[order]
        self._lp_item = lp["item_idx"].to_numpy(dtype=np.int64)[order]
        self._lp_ts = lp["last_ts"].to_numpy(dtype=np.int64)[order] if len(lp) else np.zeros(0, np.int64)
        lp_cat = (
            lp["category"].astype(object).to_numpy()[order]
            if "category" in lp
            else self.catalog.categories[self._lp_item]
        )
        self._policy = _load_policy(bundle)
        # When each past purchase may come back (epoch s; inf = never), from the learned policy.
        self._lp_back = np.full(len(self._lp_item), np.inf)
        if self._policy is not None and len(self._lp_item):
            uniq, inverse = np.unique(np.asarray(lp_cat, dtype=str), return_inverse=True)
            self._lp_back = self._lp_ts + F.policy_windows(self._policy, uniq.astype(object))[inverse]

        # Popularity: learned (items.popularity), else interaction mass; per segment from the matrix.
        ui = bundle.user_items
        mass = np.asarray(ui.sum(axis=0)).ravel().astype(np.float64) if ui.shape[0] else np.zeros(n)
        self._pop = cat.popularity if cat.popularity.any() else mass
        # Interactions per item: 0 marks a new item (catalogue neighbours). Without a matrix in the
        # bundle nothing is known, so trust the model's similarity for every item.
        self._item_nnz = np.diff(ui.tocsc().indptr) if ui.nnz else np.ones(n, dtype=np.int64)
        self._seg_pop: dict[str, np.ndarray] = {}
        by_seg: dict[str, list[int]] = {}
        for u in self._users.values():
            if u.segment and 0 <= u.fidx < ui.shape[0]:
                by_seg.setdefault(u.segment, []).append(u.fidx)
        for s, rows in by_seg.items():
            self._seg_pop[s] = np.asarray(ui[np.asarray(rows)].sum(axis=0)).ravel().astype(np.float64)

        self._pop_squashed = _squash(self._pop)
        self._pop_orders: dict[str | None, np.ndarray] = {}
        self._pop_ranks: dict[str | None, np.ndarray] = {}
        # Context masks by (size, learned sizes, gender): they depend on nothing else (the stock
        # table is fixed at load), so a request copies one instead of recomputing it.
        self._masks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._masks_lock = threading.Lock()
        # Plain popular blocks (no session, cart, page or category) by (k, segment, mask key):
        # the cold-start and no-consent answer depends on nothing else while the bundle is loaded.
        self._popular_blocks: OrderedDict[tuple, tuple[Rec, ...]] = OrderedDict()
        self._fill_orders: OrderedDict[str, _FillOrder] = OrderedDict()
        self._page_orders: OrderedDict[str, Any] = OrderedDict()  # category prefix -> NormOrdered
        self._fill_all: _FillOrder | None = None  # the whole catalogue's
        self._n_leaves = int(cat.leaf.max(initial=-1)) + 2  # leaf codes + 1 (0: no leaf)
        self._user_factors, self._item_factors = _plain_factor_model(self.model)
        self._by_length = (
            NormOrdered.build(self._item_factors)
            if self._item_factors is not None and self._model_pos is None and n >= self.config.prune_min_items
            else None
        )
        self._neighbours = _bounded_cache(self._compute_neighbours, self.config.cache_items)
        self._complements_of = _bounded_cache(self._compute_complements, self.config.cache_items)
        table = (
            _sparse_complement_table(
                self.complements, self.config.neighbours, self._comp_pos, self._comp_inv, n
            )
            if self.complements is not None
            else None
        )
        if table is not None:  # every item's complements, precomputed: a request only slices
            self._complements_of = _table_lookup(*table)
        self._warm()

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_bundle(
        cls,
        path: Path,
        *,
        store: OnlineStore | None = None,
        model_version: str = "local",
        config: EngineConfig | None = None,
    ) -> Engine:
        """Load the bundle directory at `path` (docs/workspace.md) and precompute everything."""
        return cls(load_bundle(path), store=store, model_version=model_version, config=config)

    def _align(self, model: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(pos, inv): pos[bundle item] = model item (-1 absent), inv[model item] = bundle item;
        (None, None) when the model's items are exactly the bundle's."""
        ids = model.items.sort_values("item_idx")["item_id"].astype(str).to_numpy()
        if len(ids) == self.catalog.n and np.array_equal(ids, self.catalog.item_ids.astype(str)):
            return None, None
        inv = np.array([self.catalog.index.get(i, -1) for i in ids], dtype=np.int64)
        pos = np.full(self.catalog.n, -1, dtype=np.int64)
        pos[inv[inv >= 0]] = np.nonzero(inv >= 0)[0]
        return pos, inv

    def _warm(self) -> None:
        """Compute the neighbour and complement lists of the most popular items at load, in
        batches: a model's similar_items costs about as much for 128 items as for one, and
        requests mostly touch popular items, so cold-cache lookups leave the request path. On a
        catalogue that takes the candidate walk, also every parent category's fill order (a 25k-item
        parent costs ~2 ms to sort, the whole catalogue ~10 ms: not for the first requests)."""
        if self.catalog.n >= self.config.prune_min_items:
            self._fill_order(None)
            paths = {F.parent_category(c) for c in set(self.catalog.categories.tolist())}
            known = sorted(
                (p for p in paths if p and p in self.catalog.prefix_items),
                key=lambda p: -len(self.catalog.prefix_items[p]),
            )
            for p in known[:_FILL_ORDERS]:
                self._fill_order(p)
        n = min(self.config.warm_items, self.catalog.n)
        if n <= 0:
            return
        hot = np.argsort(-self._pop, kind="stable")[:n]
        hot = hot[self._item_nnz[hot] > 0]
        for start in range(0, len(hot), 128):
            chunk = hot[start : start + 128]
            for i, got in zip(
                chunk.tolist(),
                _similar_batch(self.model, chunk, self.config.neighbours, self._model_pos, self._model_inv),
                strict=True,
            ):
                if got is not None and len(got[0]):
                    self._neighbours.put(i, got)
            if self.complements is not None and not hasattr(self._complements_of, "table"):
                for i, got in zip(
                    chunk.tolist(),
                    _similar_batch(
                        self.complements, chunk, self.config.neighbours, self._comp_pos, self._comp_inv
                    ),
                    strict=True,
                ):
                    if got is not None:
                        keep = got[1] > 0
                        self._complements_of.put(i, (got[0][keep], got[1][keep]))

    # -- public API --------------------------------------------------------------------------------
    def recommend(
        self, user_id: str | None, k: int, context: Context = Context(), *, now: float | None = None
    ) -> list[Rec]:
        """The customer's block of k items for `context`. `now` (epoch s) is the time the re-buy
        windows are measured against (default: the wall clock)."""
        k = _check_k(k)
        return self._recommend(user_id, k, context, time.time() if now is None else float(now), None)

    def _recommend(
        self, user_id: str | None, k: int, context: Context, now: float, ahead: np.ndarray | None
    ) -> list[Rec]:
        """`recommend`; `ahead`: approximate scores of the longest item factors (_ahead_scores)."""
        user = self._user(user_id)
        if user is not None and not user.consent:
            return self.popular(k, context=context)
        events = self.store.recent(user_id, self.config.recent_events) if user_id else []
        if user is None or user.midx < 0:
            # Cold start: popular for the context and segment, still reacting to this session.
            segment = user.segment if user is not None and user.segment else "new"
            return self._popular_block(k, segment, None, context, user, events)
        return self._personal_block(k, context, user, events, now, ahead)

    def recommend_batch(
        self, user_ids: list[str], k: int, context: Context = Context()
    ) -> dict[str, list[Rec]]:
        """One block per user (the e-mail renderer's feed); duplicates answered once. Exactly the
        blocks of `recommend` per user; with a length-pruned factor model (serving/mips.py) the
        users' scores of the longest item factors come from one matrix product per 256 users
        (_ahead_scores) instead of one matrix-vector product each."""
        k = _check_k(k)
        now = time.time()
        uids = list(dict.fromkeys(user_ids))
        out: dict[str, list[Rec]] = {}
        for start in range(0, len(uids), 256):
            chunk = uids[start : start + 256]
            ahead = self._ahead_scores(chunk)
            for uid in chunk:
                out[uid] = self._recommend(uid, k, context, now, ahead.get(uid))
        return out

    def _ahead_scores(self, user_ids: list[str]) -> dict[str, np.ndarray]:
        """Per user (known to a length-pruned factor model, with consent) the scores of the
        `_ahead_items()` longest item factors, from one matrix product for them all. A matrix
        product rounds differently from the matrix-vector product of a single request, so these
        only choose which items to score exactly (`_pruned_rank`); empty for one user or none."""
        if self._by_length is None or len(user_ids) < 2:
            return {}
        found = [(uid, self._user(uid)) for uid in user_ids]
        found = [(uid, u.midx) for uid, u in found if u is not None and u.consent and u.midx >= 0]
        if len(found) < 2:
            return {}
        rows = self._user_factors[np.asarray([m for _, m in found], dtype=np.int64)]
        scores = rows @ self._by_length.factors[: self._ahead_items()].T  # (users, items) float32
        return {uid: scores[j] for j, (uid, _) in enumerate(found)}

    def _ahead_items(self) -> int:
        """How many of the longest item factors `recommend_batch` scores ahead for every user:
        about as many as a single request's scan reaches (its first blocks)."""
        return min(self._by_length.n, 4 * self.config.prune_block)

    def bought_together(
        self, item_ids: list[str], k: int, user_id: str | None = None, context: Context = Context()
    ) -> list[Rec]:
        """Complements of one item or of a whole cart (never the items themselves). Unknown ids
        are skipped; with none known, popular for the context."""
        k = _check_k(k)
        cat = self.catalog
        src = [i for i in dict.fromkeys(cat.idx(x) for x in item_ids) if i is not None]
        user = self._user(user_id)
        personal = user is not None and user.consent
        cart = _known(cat, context.cart)
        if not src:
            return self.popular(k, context=context)
        # Complement scores summed over the sources, on the touched items only (a few dozen per
        # source): the catalogue-wide arrays cost more than the rest of a pruned request.
        found = [(s, *self._complements_of(s)) for s in src]
        found = [f for f in found if len(f[1])]
        touched = np.unique(np.concatenate([f[1] for f in found])) if found else np.zeros(0, np.int64)
        agg = np.zeros(len(touched))
        best = np.zeros(len(touched))
        source = np.full(len(touched), -1, dtype=np.int64)
        for s, ids, sc in found:
            at = np.searchsorted(touched, ids)
            norm = sc / (sc.max() if sc.max() > 0 else 1.0)
            agg[at] += norm
            better = norm > best[at]
            best[at[better]] = norm[better]
            source[at[better]] = s
        allowed = self._context_mask(context, user if personal else None)
        allowed[src] = False
        allowed[cart] = False
        if personal:
            allowed[self._purchased(user, [], time.time())[0]] = False
        keep = (agg > 0) & allowed[touched]
        primary = touched[keep]
        titles = cat.titles

        source_of = dict(zip(touched.tolist(), source.tolist(), strict=True))

        def reason(i: int) -> str:
            s = source_of.get(i, -1)
            if s >= 0:
                return f"bought together with {titles[s]}"
            return f"popular in {_label(cat.categories[i])}"

        # Complements first; popular items of the sources' categories fill a short block.
        if cat.n >= self.config.prune_min_items:
            try:
                return self._fill_rank(agg[keep], allowed, k, primary, self._parent_keys(src), reason)
            except _NeedsAllScores:
                pass
        base = np.zeros(cat.n)
        base[touched] = agg
        fill = self._fill_vector(src)
        return self._rank(base, allowed, k, primary=primary, fill=fill, reason=reason)

    def _fill_rank(
        self,
        base: np.ndarray,
        allowed: np.ndarray,
        k: int,
        primary: np.ndarray,
        parents: list[str],
        reason: Callable[[int], str],
    ) -> list[Rec]:
        """`_rank(b, allowed, k, primary=primary, fill=_fill_vector(src))` without a pass over the
        catalogue, where b[primary] = `base` (the allowed complements and their summed scores) and
        `parents` are the sources' parent categories (one per source, repeats kept). Raises
        _NeedsAllScores when the fill cannot be normalised (every item under a parent).

        That dense ranking walks every allowed item in one order (value down, lower index first:
        what its doubling candidate sets give `diversify`) and keeps the first k that fit the brand
        and leaf caps. The order has three tiers that never interleave: the primary items (values
        in [2, 3]); the parents' items, lifted by 1.0 once per source under the parent (values by
        lift, then popularity; an item under nested parents is lifted for each); every other item
        (by popularity, values in [0, 1)). So the walk
        here takes the primary items, and only when they leave the block short draws more, most
        popular first, from each parent's precomputed order (`_fill_order`, built once per parent)
        and from the catalogue's, passing on to `diversify` only items that no undrawn item can
        reach (a threshold walk). It skips the items the request rules out (`allowed`), the primary
        items, those whose brand or leaf the block already fills, and a whole parent once all its
        leaf categories are full. Every value comes from the dense path's arithmetic on the same
        operands (same bits). A t-shirt's complements usually fill the block by themselves; the
        25k items of its parent category are then never touched."""
        cat, cfg = self.catalog, self.config
        kept = np.zeros(0, dtype=np.int64)
        scores: list[float] = []
        capped: Callable[[np.ndarray], np.ndarray] | None = None
        sources: list[list[Any]] = []  # filled by _fill_walk

        def admit(items: np.ndarray, vals: np.ndarray) -> None:
            """Walk on from the block so far through `items`, which no undrawn item can outrank."""
            nonlocal kept, capped
            order = np.lexsort((items, -vals))  # value down, lower index first
            items, vals = items[order], vals[order]
            before = len(kept)
            kept = F.diversify(
                np.concatenate([kept, items]), cat, k,
                max_per_brand=cfg.max_per_brand, max_per_category=cfg.max_per_category,
            )  # fmt: skip
            if len(kept) == before:
                return
            # The new kept items are a subsequence of `items`, in the same order.
            by_id = np.argsort(items, kind="stable")
            scores.extend(vals[by_id[np.searchsorted(items[by_id], kept[before:])]].tolist())
            if len(kept) < k:
                capped = F.capped(kept, cat, cfg.max_per_brand, cfg.max_per_category)
                full = np.bincount(cat.leaf[kept] + 1, minlength=n_leaves) >= cfg.max_per_category
                for src in sources:
                    if src[4] is not None and full[src[4] + 1].all():
                        src[1] = len(src[0])  # every leaf category there is full: none fits

        n_leaves = self._n_leaves
        prim = np.asarray(primary, dtype=np.int64)
        if len(prim):
            if not np.isfinite(base).all():  # (nan_to_num costs more than the rest when idle)
                base = np.nan_to_num(base, neginf=0.0)
            admit(prim, 2.0 + np.clip(_norm(base), 0, 1))
        if len(kept) < k:
            self._fill_walk(
                allowed, prim, parents, sources, admit,
                short=lambda: len(kept) < k,
                blocked=lambda items: capped(items) if capped is not None else np.zeros(len(items), bool),
            )  # fmt: skip
        ids = cat.item_ids
        return [Rec(str(ids[i]), v, reason(i)) for i, v in zip(kept.tolist(), scores, strict=True)]

    def _fill_walk(
        self,
        allowed: np.ndarray,
        primary: np.ndarray,
        parents: list[str],
        sources: list[list[Any]],
        admit: Callable[[np.ndarray, np.ndarray], None],
        *,
        short: Callable[[], bool],
        blocked: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        """The fill tiers of `_fill_rank`: feed `admit` every allowed non-primary item in
        (value down, index up) order, in batches, while `short()`; items that `blocked` says the
        block's brand / leaf caps already shut out are dropped on the way (diversify would skip
        them)."""
        cat = self.catalog
        pop = self._pop_squashed
        counts: dict[str, int] = {}
        for p in parents:
            counts[p] = counts.get(p, 0) + 1
        names = list(counts)
        # Category prefixes nest or are disjoint. An item under nested parents is lifted once per
        # source under each of them, and drawn from the innermost parent's order only.
        lifts = [sum(c for q, c in counts.items() if p == q or p.startswith(q + "/")) for p in names]
        inner = [[cat.prefix_items[q] for q in names if q.startswith(p + "/")] for p in names]
        members = [cat.prefix_items[p] for p in names]  # sorted item indices under each parent
        orders = [self._fill_order(p) for p in names]
        catalogue = self._fill_order(None)
        everything = catalogue.items

        def outside(items: np.ndarray, under: list[np.ndarray]) -> np.ndarray:
            out = np.ones(len(items), dtype=bool)
            for m in under:
                out &= ~_in_sorted(m, items)
            return out

        def first(order: np.ndarray, under: list[np.ndarray], from_end: bool = False) -> np.ndarray:
            """The first (or last) item of `order` under none of `under`; empty when none is."""
            pos, step = 0, 64
            while pos < len(order):
                if from_end:
                    part = order[max(0, len(order) - pos - step) : len(order) - pos]
                else:
                    part = order[pos : pos + step]
                ok = np.flatnonzero(outside(part, under))
                if len(ok):
                    return part[ok[-1:]] if from_end else part[ok[:1]]
                pos, step = pos + len(part), step * 2
            return order[:0]

        def lifted(x: np.ndarray, times: int) -> np.ndarray:
            for _ in range(times):  # _fill_vector's `fill[under] += 1.0`, once per source
                x = x + 1.0
            return x

        # _squash(fill)'s extremes, exactly: the least popular item under no parent (every lifted
        # value is >= 1 > any popularity squashed into [0, 1)), and the most lifted parent item.
        least = first(everything, members, from_end=True)
        if not len(least):
            raise _NeedsAllScores  # the parents hold every item
        lo = pop[least[0]]
        hi = pop[everything[0]]
        # [order, next position, next chunk, lifts, leaf codes or None, parents drawn elsewhere]
        sources += [[everything, 0, 64, 0, catalogue.leaves, members]]
        for o, times, under in zip(orders, lifts, inner, strict=True):
            top = first(o.items, under)
            if len(top):  # (else every item of the parent lies in inner ones)
                hi = max(hi, lifted(pop[top], times)[0])
                sources.append([o.items, 0, 64, times, o.leaves, under])
        if not hi > lo:
            raise _NeedsAllScores

        def value(items: np.ndarray, times: int) -> np.ndarray:
            return (lifted(pop[items], times) - lo) / (hi - lo) * 0.999

        prim_sorted = np.sort(primary)
        pool, pool_v = np.zeros(0, dtype=np.int64), np.zeros(0)
        while short():
            live = [src for src in sources if src[1] < len(src[0])]
            fronts = [float(value(src[0][src[1] : src[1] + 1], src[3])[0]) for src in live]
            bound = max(fronts, default=-np.inf)  # no undrawn item has a higher value
            if len(pool):
                out = pool_v > bound
                if out.any():
                    admit(pool[out], pool_v[out])
                    pool, pool_v = pool[~out], pool_v[~out]
                    continue
            if not live:
                break
            src = live[int(np.argmax(fronts))]
            part = src[0][src[1] : src[1] + src[2]]
            src[1], src[2] = src[1] + len(part), src[2] * 2
            ok = allowed[part]
            if len(prim_sorted):
                ok &= ~_in_sorted(prim_sorted, part)
            if src[5]:
                ok &= outside(part, src[5])
            part = part[ok]
            part = part[~blocked(part)]
            if len(part):
                pool = np.concatenate([pool, part])
                pool_v = np.concatenate([pool_v, value(part, src[3])])

    def _fill_order(self, parent: str | None) -> _FillOrder:
        """The items under category prefix `parent` (None: every item) most popular first, as a
        short bought-together block takes them; one per parent, kept in a bounded cache."""
        got = self._fill_all if parent is None else self._fill_orders.get(parent)
        if got is None:
            items = self.catalog.prefix_items[parent] if parent is not None else np.arange(self.catalog.n)
            items = items[np.argsort(-self._pop_squashed[items], kind="stable")]  # ties: lower index
            leaves = np.unique(self.catalog.leaf[items])
            got = _FillOrder(items, None if (leaves < 0).any() else leaves)
            got.items.setflags(write=False)
            if parent is None:
                self._fill_all = got
                return got
            self._fill_orders[parent] = got
            if len(self._fill_orders) > _FILL_ORDERS:
                self._fill_orders.popitem(last=False)
        return got

    def _parent_keys(self, src: list[int]) -> list[str]:
        """Each source's parent category prefix (repeats kept), as _fill_vector lifts them."""
        out = []
        for i in src:
            parent = F.parent_category(self.catalog.categories[i])
            if parent and parent in self.catalog.prefix_items:
                out.append(parent)
        return out

    def _parents(self, src: list[int]) -> list[np.ndarray]:
        """Each source's parent category items, as _fill_vector adds them."""
        return [self.catalog.prefix_items[p] for p in self._parent_keys(src)]

    def similar_items(
        self, item_id: str, k: int, user_id: str | None = None, context: Context = Context()
    ) -> list[Rec]:
        """Items like `item_id` (the model's similarity; for a new item without interactions, the
        catalogue: category, brand, price). `context.cheaper` or `context.max_price` keeps only items
        cheaper than the reference. Unknown item -> popular for the context."""
        k = _check_k(k)
        cat = self.catalog
        i = cat.idx(item_id)
        if i is None:
            return self.popular(k, context=context)
        user = self._user(user_id)
        personal = user is not None and user.consent
        allowed = self._context_mask(context, user if personal else None)
        allowed[i] = False
        allowed[_known(cat, context.cart)] = False
        ref = cat.price[i]
        cheaper = context.cheaper or context.max_price is not None
        if cheaper:
            # Only items strictly cheaper than the reference (when its price is known), within budget.
            below = float(ref) if np.isfinite(ref) else None
            allowed &= F.price_mask(cat, below=below, max_price=context.max_price)
        ids, sc = self._neighbours(i)
        primary = ids if self._item_nnz[i] > 0 else np.zeros(0, np.int64)
        base = np.zeros(cat.n)
        base[ids] = sc
        title = cat.titles[i]
        text = f"a cheaper alternative to {title}" if cheaper else f"similar to {title}"
        primary = primary[allowed[primary]]
        if len(primary) >= k:
            recs = self._rank(base, allowed, k, primary=primary, reason=lambda _: text)
            if len(recs) == k and recs[-1].score >= 2.0:  # the model's neighbours filled the block
                return recs
        # Short of neighbours (new item, strict price filter): fill by catalogue similarity.
        fill = F.content_neighbours(cat, i)
        return self._rank(base, allowed, k, primary=primary, fill=fill, reason=lambda _: text)

    def popular(
        self, k: int, segment: str | None = None, category: str | None = None, context: Context = Context()
    ) -> list[Rec]:
        """The non-personal answer: popular items (in `segment`, under `category`) for the context,
        using only what the request itself says (size, gender, cart, page)."""
        k = _check_k(k)
        return self._popular_block(k, segment, category, context, None, [])

    def record_events(self, events: list[dict]) -> int:
        """Validate and store real-time events; returns how many were stored. Events of customers
        without consent for personalisation are not stored. Raises ValueError naming the bad event."""
        parsed: list[Event] = []
        for n, raw in enumerate(events):
            try:
                parsed.append(parse_event(raw))
            except ValueError as e:
                raise ValueError(f"event {n}: {e}") from None
        keep = []
        for e in parsed:
            u = self._users.get(e.user_id)
            if (
                e.user_id in self._forgotten
                or (u is not None and not u.consent)
                or self._store_forgot(e.user_id)
            ):
                continue
            keep.append(e)
        return self.store.add(keep) if keep else 0

    def forget(self, user_id: str) -> None:
        """Erase the customer from the online store and stop personalising for them in this
        process (the bundle still holds their history until the next retrain, which excludes them)."""
        self._forgotten.add(str(user_id))
        if not self.store.forget(str(user_id)):
            log.warning("forget: the online store was unreachable; the erasure must be retried")

    def health(self) -> dict:
        """Readiness detail: store state, catalogue and user counts, model and version."""
        return {
            "store": self.store.health(),
            "items": self.catalog.n,
            "users": len(self._users),
            "model": getattr(self.model, "name", type(self.model).__name__),
            "model_version": self.model_version,
            "complements": self.complements is not None,
            "rebuy_policy": self._policy is not None,
        }

    # -- blocks ------------------------------------------------------------------------------------
    def _personal_block(
        self,
        k: int,
        context: Context,
        user: _User,
        events: list[Event],
        now: float,
        ahead: np.ndarray | None = None,
    ) -> list[Rec]:
        cat, cfg = self.catalog, self.config
        fresh = [e for e in events if e.item_id in cat.index]
        factors = self._user_factors is not None and 0 <= user.midx < len(self._user_factors)
        scores: np.ndarray | None = None
        if factors:
            # A matrix-factorisation model scores a known user from the user's factors alone (the
            # history row only folds in users it has not seen): skip building that sparse row.
            # The scores come last, once the rules and boosts say which items are candidates.
            seq = self._sequence(user, fresh)
        else:
            row, seq = self._history(user, fresh)
            scores = self._model_scores(user.midx, row, seq)
        allowed = self._context_mask(context, user)
        out, due = self._purchased(user, fresh, now)
        allowed[out] = False
        cur = cat.idx(context.current_item)
        cart = _known(cat, context.cart)
        allowed[cart] = False
        if cur is not None:
            allowed[cur] = False

        boost = _Boost()
        reasons: dict[int, str] = {}
        # Complements of the cart, the current item and fresh purchases: "bought together with".
        anchors = (
            list(cart)
            + ([cur] if cur is not None else [])
            + [cat.index[e.item_id] for e in fresh if e.event_type == "purchase"]
        )
        comp_of_current = self._add_complement_boost(anchors, boost, reasons)
        self._add_session_boost(fresh, boost, reasons)
        if len(due):
            boost.add(due, cfg.rebuy_boost)
            for i in due.tolist():
                reasons[i] = "buy it again"
        tier = (
            F.page_tier(
                cat, page_category=context.page_category, current_item=cur, complements=comp_of_current
            )
            if context.page_category or cur is not None
            else None  # page_tier would be all zeros
        )
        tail = list(dict.fromkeys(seq[-3:][::-1].tolist()))
        history_reason = _history_reasons(cat, tail)

        def reason(i: int) -> str:
            return reasons.get(i) or history_reason(i)

        boosted = _keys(reasons)
        if factors and self._by_length is not None:
            try:
                if tier is None:
                    return self._pruned_rank(user.midx, allowed, k, boost, boosted, reason, ahead)
                pages = F.page_prefixes(cat, context.page_category, cur)
                return self._pruned_page_rank(
                    user.midx, allowed, k, boost, boosted, reason, tier, pages, comp_of_current
                )
            except _NeedsAllScores:
                pass  # the block needs deeper candidates than the scans made certain
        if scores is None:
            scores = self._factor_scores(user.midx)
        return self._rank(scores, allowed, k, boost=boost, boosted=boosted, tier=tier, reason=reason)

    def _pruned_rank(
        self,
        midx: int,
        allowed: np.ndarray,
        k: int,
        boost: _Boost,
        boosted: np.ndarray,
        reason: Callable[[int], str],
        ahead: np.ndarray | None = None,
    ) -> list[Rec]:
        """`_rank` of the factor scores, scoring only the items that can matter: the longest item
        factors until the top candidates are certain (serving/mips.py), plus the boosted items.
        Gives the same block as scoring every item; raises _NeedsAllScores when it cannot.
        `ahead` (recommend_batch): approximate scores of the longest items, from which the items
        to score exactly are chosen without a scan (more of them, 4x, so that diversity rarely
        needs deeper; when it does, or the prefix is too short, the scan answers)."""
        cfg = self.config
        u = self._user_factors[midx]
        need = self._first_candidates(k)
        if ahead is not None:
            got = self._by_length.rescan(ahead, u, allowed, need)
            if got is not None:
                try:
                    return self._rank_scan(got, u, allowed, k, boost, boosted, reason)
                except _NeedsAllScores:
                    pass
        scan = self._by_length.scan(u, allowed, need, cfg.prune_block)
        return self._rank_scan(scan, u, allowed, k, boost, boosted, reason)

    def _pruned_page_rank(
        self,
        midx: int,
        allowed: np.ndarray,
        k: int,
        boost: _Boost,
        boosted: np.ndarray,
        reason: Callable[[int], str],
        tier: np.ndarray,
        pages: list[str],
        complements: np.ndarray,
    ) -> list[Rec]:
        """`_pruned_rank` on a category or item page, where `tier` lifts the items under the
        category prefixes `pages` (tier 1) and the current item's `complements` (tier 2) above the
        rest. Scored exactly: the catalogue's longest factors until its top candidates are certain
        (they set the scores' normalisation), the longest of each page's own items until its top
        candidates are certain (a scan over that category alone), the complements and the boosted
        items. Gives the same block as scoring every item; raises _NeedsAllScores when it cannot."""
        need = self._first_candidates(k)
        args = (self._user_factors[midx], allowed, k, boost, boosted, reason, tier, pages, complements)
        # A page of few leaf categories cannot fill the block alone (at most max_per_category items
        # of each): the rest comes from the whole catalogue, whose scan then goes deeper.
        leaves = sum(self._page_order(p)[1] for p in pages)
        deep = leaves * self.config.max_per_category < 2 * k
        try:
            return self._page_rank(*args, 2 * need if deep else need, 2 * need)
        except _NeedsAllScores:
            # Diversity filled the page's leaf categories or brands: their other items drop out
            # and the block needs deeper candidates, on the page or past it (a page of three leaf
            # categories holds at most 9 items of a block). Deeper scans still cost far less
            # than scoring every item.
            return self._page_rank(*args, 4 * need, 8 * need)

    def _page_rank(
        self,
        u: np.ndarray,
        allowed: np.ndarray,
        k: int,
        boost: _Boost,
        boosted: np.ndarray,
        reason: Callable[[int], str],
        tier: np.ndarray,
        pages: list[str],
        complements: np.ndarray,
        need_all: int,
        need_page: int,
    ) -> list[Rec]:
        """_pruned_page_rank with scans that make `need_all` candidates of the catalogue and
        `need_page` of each page certain."""
        by_length, block = self._by_length, self.config.prune_block
        scans = [by_length.scan(u, allowed, need_all, block)]
        scans += [self._page_order(p)[0].scan(u, allowed, need_page, block) for p in pages]
        base = np.full(allowed.size, -np.inf, dtype=np.float32)
        parts = []
        for scan in scans:  # (they overlap; an item scores the same bits in each)
            new = np.isneginf(base[scan.items])
            base[scan.items[new]] = scan.scores[new]
            parts.append(scan.items[new])
        extra = np.concatenate([complements, boosted]) if len(complements) else boosted
        extra = _sorted_unique(extra[np.isneginf(base[extra])])
        if len(extra):
            base[extra] = by_length.score(extra, u)
            parts.append(extra)
        # The page items no scan reached: at most their scans' largest bound, a tier up.
        unscored = [
            self.catalog.prefix_items[p] for p, sc in zip(pages, scans[1:], strict=True) if not sc.complete
        ]
        if unscored:
            left = np.concatenate(unscored) if len(unscored) > 1 else unscored[0]
            left = left[allowed[left] & np.isneginf(base[left]) & (tier[left] > 0)]
        else:
            left = np.zeros(0, dtype=np.int64)
        tier_bound = max((sc.bound for sc in scans[1:] if not sc.complete), default=None)
        return self._rank(
            base, allowed, k, boost=boost, boosted=boosted, reason=reason, tier=tier,
            support=np.concatenate(parts), bound=scans[0].bound, unscored=left, tier_bound=tier_bound,
        )  # fmt: skip

    def _page_order(self, prefix: str) -> tuple[Any, int]:
        """The length-ordered factors of the items under a category prefix, and how many leaf
        categories they fall in (built on first use; the 256 most recent kept)."""
        order = self._page_orders.get(prefix)
        if order is None:
            under = self.catalog.prefix_items[prefix]
            order = (self._by_length.subset(under), len(_sorted_unique(self.catalog.leaf[under])))
            self._page_orders[prefix] = order
            while len(self._page_orders) > 256:
                self._page_orders.popitem(last=False)
        return order

    def _rank_scan(
        self,
        scan: Scan,
        u: np.ndarray,
        allowed: np.ndarray,
        k: int,
        boost: _Boost,
        boosted: np.ndarray,
        reason: Callable[[int], str],
    ) -> list[Rec]:
        """`_rank` over the items `scan` scored exactly, plus the boosted items (scored here).
        The scores stay beside their items (`support_scores`, `lookup`), not in a catalogue-sized
        -inf array: filling that array and scattering thousands of scores into it cost more than
        the ranking's own reads."""
        by_length = self._by_length
        if scan.prefix:  # an item's score is at its place in length order
            m = len(scan.items)
            position = by_length.position

            def known(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                at = position[items]
                hit = at < m
                return hit, scan.scores[at[hit]]

            at_scan = known
        else:
            order = np.argsort(scan.items, kind="stable")
            at_scan = _sorted_lookup(scan.items[order], scan.scores[order])
        hit, _ = at_scan(boosted)
        missing = boosted[~hit]
        if len(missing):  # boosted items may jump the queue: score them exactly too
            m_order = np.argsort(missing, kind="stable")
            at_missing = _sorted_lookup(missing[m_order], by_length.score(missing, u)[m_order])
        else:
            at_missing = None

        def lookup(items: np.ndarray) -> np.ndarray:
            out = np.full(len(items), -np.inf, dtype=np.float32)
            hit, vals = at_scan(items)
            out[hit] = vals
            if at_missing is not None and not hit.all():
                rest = np.flatnonzero(~hit)
                hit2, vals2 = at_missing(items[rest])
                out[rest[hit2]] = vals2
            return out

        if len(missing):
            support = np.concatenate([scan.items, missing])
            support_scores = np.concatenate([scan.scores, lookup(missing)])
        else:
            support, support_scores = scan.items, scan.scores
        return self._rank(
            None, allowed, k, boost=boost, boosted=boosted, reason=reason,
            support=support, support_scores=support_scores, lookup=lookup, bound=scan.bound,
            floor=scan.floor,
        )  # fmt: skip

    def _popular_block(
        self,
        k: int,
        segment: str | None,
        category: str | None,
        context: Context,
        user: _User | None,
        events: list[Event],
    ) -> list[Rec]:
        plain = (
            not category
            and not context.cart
            and context.current_item is None
            and not context.page_category
            and not any(e.item_id in self.catalog.index for e in events)
        )
        if not plain:
            return self._rank_popular(k, segment, category, context, user, events)
        key = (
            k,
            segment if segment and segment in self._seg_pop else None,
            self._context_key(context, user)[0],
        )
        with self._masks_lock:
            hit = self._popular_blocks.get(key)
            if hit is not None:
                self._popular_blocks.move_to_end(key)
        if hit is None:
            hit = tuple(self._rank_popular(k, segment, category, context, user, events))
            with self._masks_lock:
                self._popular_blocks[key] = hit
                if len(self._popular_blocks) > _POPULAR_BLOCKS:
                    self._popular_blocks.popitem(last=False)
        return list(hit)

    def _rank_popular(
        self,
        k: int,
        segment: str | None,
        category: str | None,
        context: Context,
        user: _User | None,
        events: list[Event],
    ) -> list[Rec]:
        """The popular block (`_popular_block`), ranked."""
        cat = self.catalog
        base = self._seg_pop.get(segment, self._pop) if segment else self._pop
        allowed = self._context_mask(context, user)
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
        boost = _Boost()
        reasons: dict[int, str] = {}
        fresh = [e for e in events if e.item_id in cat.index]
        if fresh:
            bought = [cat.index[e.item_id] for e in fresh if e.event_type == "purchase"]
            allowed[bought] = False
            self._add_complement_boost(bought, boost, reasons)
            self._add_session_boost(fresh, boost, reasons)
        anchors = list(cart) + ([cur] if cur is not None else [])
        comp = self._add_complement_boost(anchors, boost, reasons)
        tier = (
            F.page_tier(cat, page_category=context.page_category, current_item=cur, complements=comp)
            if context.page_category or cur is not None
            else None  # page_tier would be all zeros
        )

        def reason(i: int) -> str:
            return reasons.get(i) or f"popular in {_label(category or cat.categories[i])}"

        boosted = _keys(reasons)
        if tier is None and not category and cat.n >= self.config.prune_min_items:
            # Popularity is fixed: its most popular items (and the boosted ones) hold the top of
            # the block, unless the rules leave too few of them (then every item is ranked).
            key = segment if base is not self._pop else None
            order = self._popularity_order(key)
            m = self._candidate_reach(k)
            if len(order) > m:
                # The boosted items outside the first m: by their place in the order (np.isin
                # here built an n-sized table per request).
                outside = boosted[self._popularity_rank(key)[boosted] >= m] if len(boosted) else boosted
                support = np.concatenate([order[:m], outside])
                try:
                    return self._rank(
                        base, allowed, k, boost=boost, boosted=boosted, reason=reason,
                        support=support, bound=float(base[order[m]]),
                    )  # fmt: skip
                except _NeedsAllScores:
                    pass
        return self._rank(base, allowed, k, boost=boost, boosted=boosted, tier=tier, reason=reason)

    def _popularity_order(self, segment: str | None) -> np.ndarray:
        """Items most popular first (overall, or in `segment`), computed once per segment."""
        got = self._pop_orders.get(segment)
        if got is None:
            base = self._seg_pop[segment] if segment is not None else self._pop
            got = np.argsort(-base, kind="stable")
            got.setflags(write=False)
            self._pop_orders[segment] = got
        return got

    def _popularity_rank(self, segment: str | None) -> np.ndarray:
        """(n,) each item's place in `_popularity_order(segment)`, computed once per segment."""
        got = self._pop_ranks.get(segment)
        if got is None:
            order = self._popularity_order(segment)
            got = np.empty(len(order), dtype=np.int64)
            got[order] = np.arange(len(order))
            got.setflags(write=False)
            self._pop_ranks[segment] = got
        return got

    # -- ranking -----------------------------------------------------------------------------------
    def _first_candidates(self, k: int) -> int:
        """How many candidates `_rank` orders first for a block of k (grown when diversity cuts)."""
        return max(k * self.config.overfetch, k + 10)

    def _candidate_reach(self, k: int) -> int:
        """How deep a popularity order a candidate-set ranking takes: room for `_rank` to grow its
        first candidates several times before it needs every item."""
        return max(16 * self._first_candidates(k), 1024)

    def _rank(
        self,
        base: np.ndarray,
        allowed: np.ndarray,
        k: int,
        *,
        reason: Callable[[int], str],
        boost: _Boost | None = None,
        boosted: np.ndarray | None = None,
        tier: np.ndarray | None = None,
        primary: np.ndarray | None = None,
        fill: np.ndarray | None = None,
        support: np.ndarray | None = None,
        support_scores: np.ndarray | None = None,
        lookup: Callable[[np.ndarray], np.ndarray] | None = None,
        bound: float | None = None,
        floor: float | None = None,
        unscored: np.ndarray | None = None,
        tier_bound: float | None = None,
        normalise: bool = True,
    ) -> list[Rec]:
        """Order the allowed items and cut a diverse block of k.

        base (n,) scores are min-max normalised over the top candidates (so boosts, in those units,
        mean the same for every model); `tier` adds whole steps above any score (page context);
        `primary` items (e.g. complements) rank above all others, which are ordered by `fill`
        (default: popularity). Candidates are over-fetched and grown until the block is full or
        the allowed items run out.

        `support`: the only items whose `base` was computed (the rest are -inf), with no
        `primary`; the candidates then come from those items alone, without a pass over the
        catalogue. `bound`: no allowed item outside `support` has a `base` above it (None: support
        holds them all), so only the items of `support` above it are certain to be the catalogue's
        best (serving/mips.py); needing deeper raises _NeedsAllScores. `normalise=False`: `base`
        already holds the final values, as the `primary` path makes them. With `support`, `base`
        may be None when `support_scores` (aligned with `support`) and `lookup` (items of
        `support` -> their `base` values, -inf for any other item) stand in for it. `floor` (a
        scan's, serving/mips.py): a value that at least the first candidates' number of allowed
        items of `support` reach, and above `bound`; the first candidates are then chosen among
        those items only (checked here: when too few reach it, from all of `support`). With
        `support` and a `tier`, `unscored` are the allowed tier-1 items outside
        `support`, whose `base` is at most `tier_bound` (every other item outside has tier 0): the
        bound holds a tier up while any of them can still be kept."""
        cfg = self.config
        n = allowed.size
        pool: np.ndarray | None = None  # with `support`: the allowed items that have a score
        pool_s: np.ndarray | None = None  # ... and their `base` values
        head: tuple[np.ndarray, np.ndarray] | None = None  # ... those at or above `floor`
        finite: np.ndarray | None = None
        s = base
        if support is not None:
            if support_scores is None:
                support_scores = base[support]
            if floor is not None and (bound is None or floor > bound):
                at_floor = np.flatnonzero(support_scores >= floor)
                items, vals = support[at_floor], support_scores[at_floor]
                ok = allowed[items] & np.isfinite(vals)
                if np.count_nonzero(ok) >= self._first_candidates(k):
                    # The top candidates all lie here (at least that many allowed items score at
                    # least `floor`), and they are certain (above `bound`): the rest of `support`
                    # is needed only when diversity asks for more.
                    head = (items[ok], vals[ok])
                    n_allowed = len(support)  # an upper bound, made exact before it decides
            if head is None:
                keep = allowed[support] & np.isfinite(support_scores)
                pool, pool_s = support[keep], support_scores[keep]
                n_allowed = len(pool)
        elif primary is not None:
            # Primary items score in [2, 3]; all others follow in `fill` order, squeezed into [0, 1).
            primary = np.asarray(primary, dtype=np.int64)
            primary = primary[allowed[primary]]
            s = np.where(allowed, self._pop_squashed if fill is None else _squash(fill), -np.inf)
            s[primary] = 2.0 + np.clip(_norm(np.nan_to_num(base[primary], neginf=0.0)), 0, 1)
        else:
            # In the model's own dtype (float32 for factor models): selecting the top candidates
            # is the O(n) part of a request, and float32 halves it. Values are normalised below in
            # float64, for the candidates only.
            s = np.where(allowed, base, -np.inf)
        if support is None:
            finite = np.isfinite(s)
            n_allowed = int(np.count_nonzero(finite))
        if n_allowed == 0:
            return []

        def pick(c: int) -> tuple[np.ndarray, np.ndarray | None]:
            """The top c of `s` among the allowed items (all of them when c covers them), equal
            values at the cut by lower index: argpartition alone takes an arbitrary few of them,
            which then differ between the candidate-set and the dense ranking. With their `s`
            values where at hand (a candidate set), else None."""
            if pool is None and head is not None:  # the first candidates, among the head
                items, vals = head
                if c >= len(items):
                    return items, vals
                at_top = _top_by_index(vals, c, items)
                return items[at_top], vals[at_top]
            if pool is not None:
                if c >= len(pool):
                    return pool, pool_s
                at_top = _top_by_index(pool_s, c, pool)
                return pool[at_top], pool_s[at_top]
            return (_top_by_index(s, c) if c < n else np.flatnonzero(finite)), None

        def certain() -> int:
            """How many of the top candidates are certain (all when nothing lies outside)."""
            if pool is None and head is not None:
                return len(head[0])  # a lower bound, enough for the first candidates
            return n_allowed if pool is None or bound is None else int(np.count_nonzero(pool_s > bound))

        def at(idx: np.ndarray) -> np.ndarray:
            """`s` of items `idx`."""
            return s[idx] if lookup is None or s is not base else lookup(idx)

        c = min(n_allowed, self._first_candidates(k))
        if c > certain():
            raise _NeedsAllScores
        scale: tuple[float, float] | None = None  # (lo, hi - lo): `s` not yet min-max normalised
        if primary is None and normalise:
            # Min-max over the top candidates: boosts (in these units) mean the same for any model.
            top, top_v = pick(c)
            top_s = at(top) if top_v is None else top_v
            hi, lo = float(top_s.max()), float(top_s.min())
            if support is not None and hi <= lo:
                raise _NeedsAllScores  # every candidate ties: the dense path's flat normalisation
            if tier is not None and pool is not None:
                # The candidates' values only, with the dense path's arithmetic (same bits); every
                # step is monotone, so the bounds map to bounds.
                pool_s = (pool_s.astype(np.float64) - lo) / (hi - lo) + 10.0 * tier[pool]
                if bound is not None:
                    raw0 = bound
                    bound = bound0 = float((np.float64(raw0) - lo) / (hi - lo))
                    if unscored is not None and len(unscored):
                        raw1 = raw0 if tier_bound is None else min(tier_bound, raw0)
                        bound = max(bound0, float((np.float64(raw1) - lo) / (hi - lo)) + 10.0)
                    # No item at or below the lowest bound is ever certain, so never picked; the
                    # boosted ones join the candidates anyway.
                    keep = pool_s > bound0
                    if boosted is not None and len(boosted):
                        keep |= _in_sorted(np.sort(boosted), pool)
                    pool, pool_s = pool[keep], pool_s[keep]
                    n_allowed = len(pool)
                by_item = np.argsort(pool, kind="stable")
                lookup, s = _values_of(pool[by_item], pool_s[by_item]), base
            elif tier is not None or hi <= lo:  # the whole normalised array is needed
                s = (s.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.where(finite, 0.0, -np.inf)
            else:  # a monotone map: the order of `s` is the order of the normalised scores
                scale = (lo, hi - lo)
        if tier is not None and pool is None:
            s = s + 10.0 * tier

        def value(vals: np.ndarray) -> np.ndarray:
            """The ranking values of items whose `s` values are `vals`."""
            if scale is None:
                return vals
            return (vals.astype(np.float64) - scale[0]) / scale[1]

        # Boosted items may jump the queue: few, scored exactly; every other item ranks by `s`,
        # so the top c of `s` plus the boosted ones hold the true top c.
        if boost is None:
            boosted = np.zeros(0, np.int64)
        elif boosted is None:  # callers that know which items they boosted save a full scan
            boosted = boost.nonzero()
        if finite is not None:
            boosted = boosted[finite[boosted]]
        elif len(boosted):
            boosted = boosted[allowed[boosted] & np.isfinite(at(boosted))]
        reuse = primary is None and tier is None and normalise  # the normalisation's top c
        while True:
            if not reuse:
                top, top_v = pick(c)
            reuse = False
            # The sorted union of the top c and the boosted items (np.union1d, without its hashing).
            if finite is not None:
                top = top[finite[top]]
            if len(boosted) and len(top):  # (a few dozen each: no n-sized mask)
                extra = boosted[~_in_sorted(np.sort(top), boosted)]
                top = np.concatenate([top, extra])
                if top_v is not None:
                    top_v = np.concatenate([top_v, at(extra)])
            elif len(boosted):
                top, top_v = boosted, None
            by_item = np.argsort(top, kind="stable")
            cand = top[by_item]  # = np.sort(top): the items are distinct
            cand_s = at(cand) if top_v is None else top_v[by_item]
            key = value(cand_s) if boost is None else value(cand_s) + boost.at(cand)
            ordered = cand[np.argsort(-key, kind="stable")]
            kept = F.diversify(
                ordered,
                self.catalog,
                k,
                max_per_brand=cfg.max_per_brand,
                max_per_category=cfg.max_per_category,
            )
            if len(kept) >= k:
                break
            if pool is None and head is not None:  # diversity needs more: the whole candidate set
                keep = allowed[support] & np.isfinite(support_scores)
                pool, pool_s = support[keep], support_scores[keep]
                n_allowed = len(pool)
            if c >= n_allowed:
                if pool is not None and bound is not None:
                    raise _NeedsAllScores  # allowed items beyond the scored ones may exist
                break
            # Short: a few brands or leaf categories filled up. Their other items can never be
            # kept, and behind them may lie thousands more (a t-shirt page: 25k tops before the
            # first sock), so drop them all before fetching more; the walk stays the same, since
            # diversify skipped exactly these items and would skip every later one.
            blocked = F.capped(kept, self.catalog, cfg.max_per_brand, cfg.max_per_category)
            if pool is not None:
                drop = blocked(pool)
                drop[_in_sorted(np.sort(kept), pool)] = False
                pool, pool_s = pool[~drop], pool_s[~drop]
                n_allowed = len(pool)
            else:
                drop = blocked(np.arange(n))
                drop[kept] = False
                s = np.where(drop, -np.inf, s)
                finite = np.isfinite(s)
                n_allowed = int(np.count_nonzero(finite))
            boosted = boosted[~blocked(boosted) | np.isin(boosted, kept)]
            if unscored is not None and len(unscored) and pool is not None and tier is not None:
                unscored = unscored[~blocked(unscored)]  # (unscored items are never kept)
                if not len(unscored) and bound is not None:
                    bound = bound0  # the page items no scan reached can no longer be kept
            c = min(n_allowed, c * 2)
            if c > certain():
                raise _NeedsAllScores
        ids = self.catalog.item_ids
        kept_key = key[np.searchsorted(cand, kept)]  # cand is sorted
        return [
            Rec(str(ids[i]), float(v), reason(i))
            for i, v in zip(kept.tolist(), kept_key.tolist(), strict=True)
        ]

    # -- pieces ------------------------------------------------------------------------------------
    def _user(self, user_id: str | None) -> _User | None:
        if user_id is None or user_id in self._forgotten:
            return None
        user = self._users.get(str(user_id))
        if user is not None and self._store_forgot(str(user_id)):
            return None
        return user

    def _store_forgot(self, user_id: str) -> bool:
        """Erased through another replica (the online store shares the erasures)."""
        check = getattr(self.store, "is_forgotten", None)
        return bool(check(user_id)) if check is not None else False

    def _context_mask(self, context: Context, user: _User | None) -> np.ndarray:
        """Stock (in the customer's size) and gender, from the request, else the learned profile
        (only for a consenting `user`). A fresh (n,) bool array the caller may change: a copy of
        the mask kept for the same size, learned sizes and gender (a bounded LRU cache)."""
        key, sizes, gender = self._context_key(context, user)
        with self._masks_lock:
            mask = self._masks.get(key)
            if mask is not None:
                self._masks.move_to_end(key)
        if mask is None:
            mask = F.stock_mask(self.catalog, size=context.size, sizes_by_garment=sizes)
            if gender is not None:
                mask &= F.gender_mask(self.catalog, gender)
            mask.setflags(write=False)
            with self._masks_lock:
                self._masks[key] = mask
                if len(self._masks) > _CONTEXT_MASKS:
                    self._masks.popitem(last=False)
        return mask.copy()

    def _context_key(
        self, context: Context, user: _User | None
    ) -> tuple[tuple, dict[str, str] | None, str | None]:
        """(key, learned sizes, gender) of `_context_mask`: the mask depends on the key alone."""
        sizes = self._sizes.get(user.fidx) if user is not None and not context.size else None
        gender = F.resolve_gender(context.gender, user.gender_affinity if user is not None else None)
        if gender not in ("women", "men"):
            gender = None
        # Learned sizes keyed in their own order: nested garment paths apply one after another.
        return (context.size or None, tuple(sizes.items()) if sizes else (), gender), sizes, gender

    def _purchased(self, user: _User, fresh: list[Event], now: float) -> tuple[np.ndarray, np.ndarray]:
        """(keep_out, due) item indices: keep_out, past purchases inside their learned re-buy window
        (RebuyPolicy) and every purchase in the online store (the very next answer); due, the other
        past purchases (never one just bought). Indices, not an (n,) mask: a customer has a handful."""
        keep_out = np.zeros(0, dtype=np.int64)
        due = np.zeros(0, dtype=np.int64)
        if user.fidx >= 0 and len(self._lp_user):
            lo, hi = np.searchsorted(self._lp_user, [user.fidx, user.fidx + 1])
            if hi > lo:
                bought = self._lp_item[lo:hi]
                excluded = bought[now < self._lp_back[lo:hi]]  # inside the window (or never)
                keep_out, due = F.rebuy_split(bought, excluded)
        just = [self.catalog.index[e.item_id] for e in fresh if e.event_type == "purchase"]
        if just:
            keep_out = np.concatenate([keep_out, np.asarray(just, dtype=np.int64)])
            gone = set(just)
            due = due[np.fromiter((i not in gone for i in due.tolist()), dtype=bool, count=len(due))]
        return keep_out, due

    def _history(self, user: _User, fresh: list[Event]) -> tuple[sp.csr_matrix, np.ndarray]:
        """The user's interaction row (1, n_model_items, the model's item space) and sequence (bundle
        item indices), plus the online store's newest events (so a model scoring from history
        reacts at once)."""
        cfg = self.config
        n_model = self.model.n_items
        ui = self.bundle.user_items
        if 0 <= user.fidx < ui.shape[0]:
            row = ui[user.fidx]
            if self._model_pos is not None:
                r = row.tocoo()
                cols = self._model_pos[r.col]
                ok = cols >= 0
                row = sp.csr_matrix((r.data[ok], (np.zeros(ok.sum(), int), cols[ok])), shape=(1, n_model))
        else:
            row = sp.csr_matrix((1, n_model), dtype=np.float32)
        seq = self.bundle.sequences.get(user.fidx, np.zeros(0, dtype=np.int64))
        if fresh:
            weight = {
                "view": cfg.view_weight,
                "add_to_cart": cfg.cart_weight,
                "purchase": cfg.purchase_weight,
            }
            items = [self.catalog.index[e.item_id] for e in reversed(fresh) if weight.get(e.event_type)]
            if items:
                idx = np.asarray(items, dtype=np.int64)
                if self._model_pos is not None:
                    idx = self._model_pos[idx]
                vals = [weight[e.event_type] for e in reversed(fresh) if weight.get(e.event_type)]
                ok = idx >= 0
                add = sp.csr_matrix(
                    (np.asarray(vals, np.float32)[ok], (np.zeros(ok.sum(), int), idx[ok])), shape=(1, n_model)
                )
                row = row + add
                seq = np.concatenate([seq, np.asarray(items, dtype=np.int64)])  # bundle item indices
        return sp.csr_matrix(row, dtype=np.float32), seq

    def _sequence(self, user: _User, fresh: list[Event]) -> np.ndarray:
        """The user's item sequence (bundle indices) with the online store's newest events appended,
        exactly as `_history` builds it, without the sparse history row."""
        seq = self.bundle.sequences.get(user.fidx, np.zeros(0, dtype=np.int64))
        weight = {"view": self.config.view_weight, "add_to_cart": self.config.cart_weight,
                  "purchase": self.config.purchase_weight}  # fmt: skip
        items = [self.catalog.index[e.item_id] for e in reversed(fresh) if weight.get(e.event_type)]
        return np.concatenate([seq, np.asarray(items, dtype=np.int64)]) if items else seq

    def _factor_scores(self, midx: int) -> np.ndarray:
        """(n,) float32 scores of a plain matrix-factorisation model for its user `midx`, in bundle
        item order (-inf for items the model does not know): one matrix-vector product over the
        model's C-contiguous float32 item factors. `model.score` computes the same product as a
        1-row matrix product; with numpy's OpenBLAS both give the same bits (checked on 600 users
        of the bench shops, and by tests/test_pipeline.py), this form ~10% faster."""
        s = self._item_factors @ self._user_factors[midx]
        if self._model_pos is None:
            return s
        out = np.full(self.catalog.n, -np.inf, dtype=s.dtype)
        ok = self._model_pos >= 0
        out[ok] = s[self._model_pos[ok]]
        return out

    def _model_scores(self, midx: int, row: sp.csr_matrix, seq: np.ndarray) -> np.ndarray:
        """(n,) model scores in bundle item order; -inf for items the model does not know.
        `row` is in the model's item space, `seq` in the bundle's (mapped here)."""
        if self._model_pos is not None and len(seq):
            seq = self._model_pos[seq]
            seq = seq[seq >= 0]
        s = np.asarray(
            self.model.score(np.array([midx], dtype=np.int64), History(row, [seq])), dtype=np.float64
        )[0]
        if self._model_pos is None:
            return s
        out = np.full(self.catalog.n, -np.inf)
        ok = self._model_pos >= 0
        out[ok] = s[self._model_pos[ok]]
        return out

    def _compute_neighbours(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Top neighbours of bundle item i, best first: the model's item similarity where it has one
        and the item has interactions, else catalogue similarity (category, brand, price)."""
        n = self.config.neighbours
        if self._item_nnz[i] > 0:
            got = _similar(self.model, i, n, self._model_pos, self._model_inv)
            if got is not None and len(got[0]):
                return got
        sim = F.content_neighbours(self.catalog, i)
        m = min(n, self.catalog.n - 1)
        if m <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
        top = np.argpartition(-sim, m - 1)[:m]
        top = top[np.argsort(-sim[top], kind="stable")]
        return top.astype(np.int64), sim[top]

    def _compute_complements(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Bought-together items of bundle item i from the complements model (best first, scores
        > 0); the main model's neighbours when there is no complements model."""
        if self.complements is None:
            ids, sc = self._neighbours(i)
            return ids, np.maximum(sc - sc.min(), 1e-6) if len(sc) else sc
        got = _similar(self.complements, i, self.config.neighbours, self._comp_pos, self._comp_inv)
        if got is None:
            return np.zeros(0, np.int64), np.zeros(0)
        ids, sc = got
        keep = sc > 0
        return ids[keep], sc[keep]

    def _add_complement_boost(self, anchors: list[int], boost: _Boost, reasons: dict[int, str]) -> np.ndarray:
        """Boost complements of `anchors` (reason "bought together with <title>"); returns them."""
        found: list[np.ndarray] = []
        for a in dict.fromkeys(anchors):
            ids, sc = self._complements_of(a)
            if not len(ids):
                continue
            boost.add(ids, self.config.complement_boost * _norm(sc))
            for i in ids.tolist():
                reasons.setdefault(i, f"bought together with {self.catalog.titles[a]}")
            found.append(ids)
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def _add_session_boost(self, fresh: list[Event], boost: _Boost, reasons: dict[int, str]) -> None:
        """Boost neighbours of the newest distinct views (newest weighs most): session-aware."""
        views = [self.catalog.index[e.item_id] for e in fresh if e.event_type in ("view", "add_to_cart")]
        for rank, v in enumerate(list(dict.fromkeys(views))[: self.config.session_views]):
            ids, sc = self._neighbours(v)
            if not len(ids):
                continue
            boost.add(ids, self.config.session_boost * _norm(sc) / (1 + rank))
            for i in ids.tolist():
                reasons.setdefault(i, f"because you viewed {self.catalog.titles[v]}")

    def _fill_vector(self, src: list[int]) -> np.ndarray:
        """Fallback order for a short complement block: popular, the sources' categories first."""
        fill = self._pop_squashed.copy()
        for under in self._parents(src):
            fill[under] += 1.0
        return fill


def _plain_factor_model(model: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(user factors, item factors), both C-contiguous float32, of a model whose `score` is exactly
    user_factors[u] @ item_factorsᵀ for the users it knows (training's matrix-factorisation models:
    ALS, BPR); (None, None) for any other model."""
    try:
        from training.models.implicit_models import _FactorModel
    except ImportError:
        return None, None
    if (
        type(model).score is not _FactorModel.score
        or type(model)._user_vectors is not _FactorModel._user_vectors
    ):
        return None, None
    uf, itf = getattr(model, "user_factors_", None), getattr(model, "item_factors_", None)
    if not all(isinstance(a, np.ndarray) and a.ndim == 2 and a.dtype == np.float32 for a in (uf, itf)):
        return None, None  # another dtype would change the product's rounding: the model scores
    return np.ascontiguousarray(uf), np.ascontiguousarray(itf)


def _sparse_complement_table(
    model: Any, k: int, pos: np.ndarray | None, inv: np.ndarray | None, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every bundle item's complements at once, for a complements model whose similar_items is the
    top k of a sparse item x item similarity (training.models.bought_together): (indptr, ids,
    scores) in bundle indices, best first, exactly what `_compute_complements` returns per item
    (the stored non-zero similarities, the item itself left out, ties by lower index as
    training.base.topk, scores > 0). None for any other model (computed per item, cached).
    Vectorised over the stored entries: ~1 s for 100k items, where the per-item path densifies a
    100k-wide row for each."""
    try:
        from training.models.bought_together import BoughtTogether
    except ImportError:
        return None
    sim = getattr(model, "similarity_", None)
    if type(model).similar_items is not BoughtTogether.similar_items or not sp.issparse(sim):
        return None
    sim = sp.csr_matrix(sim, copy=True)
    sim.sum_duplicates()  # canonical: one entry per (row, col), columns ascending
    m = sim.shape[0]
    rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(sim.indptr))
    cols = sim.indices.astype(np.int64)
    vals = sim.data.astype(np.float64)
    keep = (vals != 0) & (cols != rows)
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((-vals, rows))  # stable: equal scores keep ascending columns
    rows, cols, vals = rows[order], cols[order], vals[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    top = rank < k
    rows, cols, vals = rows[top], cols[top], vals[top]
    if inv is not None:  # model indices -> bundle indices; unmapped items drop out
        rows, cols = inv[rows], inv[cols]
        ok = (rows >= 0) & (cols >= 0)
        rows, cols, vals = rows[ok], cols[ok], vals[ok]
        order = np.argsort(rows, kind="stable")
        rows, cols, vals = rows[order], cols[order], vals[order]
    ok = (cols != rows) & (vals > 0)
    rows, cols, vals = rows[ok], cols[ok], vals[ok]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    for a in (indptr, cols, vals):
        a.setflags(write=False)
    return indptr, cols, vals


def _table_lookup(indptr: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> Callable[[int], Any]:
    """(ids, scores) of row i of a precomputed neighbour table (read-only views)."""

    def get(i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = indptr[i], indptr[i + 1]
        return ids[lo:hi], scores[lo:hi]

    get.table = (indptr, ids, scores)  # type: ignore[attr-defined]
    return get


def _similar(
    model: Any, i: int, n: int, pos: np.ndarray | None, inv: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """model.similar_items for bundle item i, mapped back to bundle indices; None if unsupported."""
    return _similar_batch(model, np.array([i]), n, pos, inv)[0]


def _similar_batch(
    model: Any, items: np.ndarray, n: int, pos: np.ndarray | None, inv: np.ndarray | None
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """model.similar_items for bundle items in one call: per item (ids, scores) in bundle indices,
    best first, the item itself and padding removed; None where the model has no similarity or
    does not know the item."""
    items = np.asarray(items, dtype=np.int64)
    mi = items if pos is None else pos[items]
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(items)
    known = np.flatnonzero(mi >= 0)
    if not len(known):
        return out
    try:
        ids_all, sc_all = model.similar_items(mi[known], n)
    except NotImplementedError:
        return out
    for row, j in enumerate(known.tolist()):
        ids, sc = np.asarray(ids_all[row], dtype=np.int64), np.asarray(sc_all[row], dtype=np.float64)
        ok = (ids >= 0) & np.isfinite(sc)
        ids, sc = ids[ok], sc[ok]
        if inv is not None:
            ids = inv[ids]
            ok = ids >= 0
            ids, sc = ids[ok], sc[ok]
        ok = ids != items[j]
        out[j] = (ids[ok], sc[ok])
    return out


@functools.lru_cache(maxsize=4096)
def _parts(path: str) -> tuple[str, ...]:
    """A category path's levels (a shop has few distinct paths; split once each)."""
    return tuple(path.split("/")) if path else ()


def _history_reason(cat: F.Catalog, i: int, tail: list[int]) -> str:
    """Reason for a personal pick without a more specific one: "because you viewed <title>" of the
    recent history item sharing the deepest part of the category tree with it (the most recent on
    ties); computed for the k shown items only, so it costs nothing per catalogue item."""
    return _history_reasons(cat, tail)(i)


def _history_reasons(cat: F.Catalog, tail: list[int]) -> Callable[[int], str]:
    """`_history_reason(cat, i, tail)` as a function of i for one request: the history items'
    category levels split once, and one answer per category path (it depends on nothing else)."""
    history = [(j, _parts(cat.categories[j])) for j in tail]
    by_path: dict[str, str] = {}

    def reason(i: int) -> str:
        path = cat.categories[i]
        got = by_path.get(path)
        if got is not None:
            return got
        parts = _parts(path)
        best, best_depth = None, 0
        for j, other in history:
            depth = 0
            for a, b in zip(parts, other, strict=False):
                if a != b:
                    break
                depth += 1
            if depth > best_depth:
                best, best_depth = j, depth
        got = (
            f"because you viewed {cat.titles[best]}"
            if best is not None
            else f"picked for you in {_label(path)}"
        )
        by_path[path] = got
        return got

    return reason


def _norm(x: np.ndarray) -> np.ndarray:
    """Scale to (0, 1] by the maximum (min-max would zero the weakest neighbour)."""
    if not len(x):
        return x
    m = np.max(np.abs(x))
    return x / m if m > 0 else np.ones_like(x)


def _squash(x: np.ndarray) -> np.ndarray:
    """Monotone map of any scores into [0, 1)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(), x.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):  # finite extremes: no nan or inf anywhere
        x = np.nan_to_num(x, nan=0.0, neginf=0.0, posinf=0.0)
        lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) * 0.999 if hi > lo else np.zeros_like(x)


def _top_by_index(values: np.ndarray, c: int, index: np.ndarray | None = None) -> np.ndarray:
    """Positions of the c largest `values` (0 < c < len), equal values at the cut taken by lower
    `index` (default: the position), so that the set is the first c of (value down, index up)."""
    top = np.argpartition(-values, c - 1)[:c]
    cut = values[top].min()
    at_cut = values == cut
    if np.count_nonzero(at_cut) == np.count_nonzero(values[top] == cut):
        return top  # no tie straddles the cut
    ties = np.flatnonzero(at_cut)
    if index is not None:
        ties = ties[np.argsort(index[ties], kind="stable")]
    above = top[values[top] > cut]
    return np.concatenate([above, ties[: c - len(above)]])


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique of item indices by sorting (numpy's hashing unique costs ~10x on these)."""
    x = np.sort(x)
    return x[np.concatenate(([True], x[1:] != x[:-1]))] if len(x) > 1 else x


def _values_of(items: np.ndarray, values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """For sorted unique `items` and their `values`: query items -> values (-inf for others)."""
    get = _sorted_lookup(items, values)

    def lookup(query: np.ndarray) -> np.ndarray:
        out = np.full(len(query), -np.inf)
        hit, vals = get(query)
        out[hit] = vals
        return out

    return lookup


def _sorted_lookup(
    items: np.ndarray, values: np.ndarray
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """For `items` sorted ascending (unique) and their `values`: a function of query items
    returning (which of them are among `items`, the values of those, in query order)."""

    def get(query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(items):
            return np.zeros(len(query), dtype=bool), values[:0]
        at = np.minimum(np.searchsorted(items, query), len(items) - 1)
        hit = items[at] == query
        return hit, values[at[hit]]

    return get


def _keys(d: dict[int, str]) -> np.ndarray:
    return np.fromiter(d.keys(), dtype=np.int64, count=len(d))


def _in_sorted(sorted_items: np.ndarray, idx: Any) -> Any:
    """Whether item index `idx` (or each of an array of them) is in the sorted array."""
    at = np.minimum(np.searchsorted(sorted_items, idx), len(sorted_items) - 1)
    return sorted_items[at] == idx


def _known(cat: F.Catalog, ids: tuple[str, ...] | list[str]) -> list[int]:
    return [i for i in (cat.idx(x) for x in ids) if i is not None]


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
    return int(k)
