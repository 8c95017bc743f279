"""A model's personal scores in the shop state's item order, with the exact fast path for factor
models.

`ModelScorer` wraps one model: for a matrix-factorisation model (`Recommender.factors()`), the
item factors are laid out in state order once at load, so a request scores with one product, and
on a large catalogue scans the longest factors first and stops once nothing unscored can reach the
block (serving/mips.py: exact, the same block as scoring every item). Any other model scores
through its own `score` with the customer's history mapped into its item space. Items the model
does not know (added to the catalogue after training) score -inf here: they reach a block through
the rules that expose new items, never through the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from serving import filters as F
from serving.cache import Cache
from serving.mips import NormOrdered, Scan
from serving.neighbours import ItemMap
from serving.ranking import Boost, NeedsAllScores, Ranker, Rec, Support, sorted_lookup, sorted_unique
from training.base import History

_PAGE_ORDERS = 256
_tokens = itertools.count()


class ModelScorer:
    """One model's scores for the engine. `users` maps customer ids to the model's user indices."""

    def __init__(self, model: Any, items: ItemMap, *, prune_min_items: int, prune_block: int) -> None:
        self.model = model
        self.items = items
        self.prune_block = prune_block
        self.users: dict[str, int] = dict(
            zip(model.users["user_id"].astype(str), model.users["user_idx"].astype(int), strict=True)
        )
        self.token = next(_tokens)  # keys this scorer's entries in a snapshot's structure caches
        factors = model.factors()
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None  # (rows, d) in state order; rows <= n_state
        self.known: np.ndarray | None = None  # (rows,) bool where a row holds a model item; None: all
        self.by_length: NormOrdered | None = None
        if factors is not None:
            uf, itf = factors
            self.user_factors = uf
            if items.identity:
                self.item_factors = itf
            else:
                rows = int(items.to_state.max(initial=-1)) + 1
                placed = np.zeros((rows, itf.shape[1]), dtype=np.float32)
                placed[items.to_state] = itf
                self.item_factors = placed
                known = np.zeros(rows, dtype=bool)
                known[items.to_state] = True
                self.known = known if not known.all() else None
            if len(self.item_factors) >= prune_min_items:
                self.by_length = NormOrdered.build(self.item_factors)

    # -- users ------------------------------------------------------------------------------------
    def user_index(self, user_id: str) -> int:
        """The model's index of the customer, -1 when it does not know them (or forgot them)."""
        return self.users.get(user_id, -1)

    def forget(self, user_id: str) -> None:
        """Stop knowing the customer: their model row is zeroed and unreachable."""
        midx = self.users.pop(str(user_id), -1)
        if midx >= 0 and self.user_factors is not None and midx < len(self.user_factors):
            self.user_factors = self.user_factors.copy()
            self.user_factors[midx] = 0.0
        self.model.forget_users([str(user_id)])

    @property
    def factor_model(self) -> bool:
        return self.user_factors is not None

    def has_factors(self, midx: int) -> bool:
        return self.user_factors is not None and 0 <= midx < len(self.user_factors)

    def restrict(self, allowed: np.ndarray) -> None:
        """Drop from `allowed` (in place) the items whose factor rows are padding (the model does
        not know them), so no scan or product ever ranks them."""
        if self.known is not None:
            n = min(len(self.known), allowed.size)
            allowed[:n] &= self.known[:n]

    # -- dense scores -------------------------------------------------------------------------------
    def factor_scores(self, midx: int, n_state: int) -> np.ndarray:
        """(n_state,) float32 scores of a factor model for its user `midx` (-inf for items it does
        not know): one matrix-vector product over the C-contiguous float32 item factors; the same
        bits as `model.score`'s 1-row product with numpy's OpenBLAS (tests/test_pipeline.py)."""
        s = self.item_factors @ self.user_factors[midx]
        if self.known is not None:
            s[~self.known] = -np.inf
        if len(s) < n_state:
            s = np.concatenate([s, np.full(n_state - len(s), -np.inf, dtype=s.dtype)])
        return s

    def model_scores(
        self,
        midx: int,
        row: sp.csr_matrix,
        seq: np.ndarray,
        n_state: int,
        seq_ts: np.ndarray | None = None,
        now: float | None = None,
    ) -> np.ndarray:
        """(n_state,) scores from the model's own `score`, given the customer's history row and
        sequence in state indices (mapped into the model's item space here), with the sequence's
        epoch seconds where known (next-basket models group them into baskets) and `now`, the
        request's time in epoch seconds (`History.now`: next-basket models read the days since the
        customer's last basket from it, as evaluation gives them the held-out basket's time)."""
        n_model = self.items.n_model
        r = row.tocoo()
        cols = self.items.to_model(r.col)
        ok = cols >= 0
        model_row = sp.csr_matrix(
            (r.data[ok].astype(np.float32), (np.zeros(int(ok.sum()), dtype=np.int64), cols[ok])),
            shape=(1, n_model),
        )
        mseq = self.items.to_model(seq)
        known = mseq >= 0
        mseq = mseq[known]
        times = (
            [np.asarray(seq_ts, dtype=np.int64)[known]]
            if seq_ts is not None and len(seq_ts) == len(seq)
            else []
        )
        s = np.asarray(
            self.model.score(
                np.array([midx], dtype=np.int64),
                History(model_row, [mseq], times, None if now is None else np.array([float(now)])),
            ),
            dtype=np.float64,
        )[0]
        return self.items.scores_to_state(s, n_state)

    # -- the exact pruned paths (factor models on large catalogues) --------------------------------
    def scores_of(self, items: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Exact scores of `items` (the bits of the full product), -inf for items without factors."""
        items = np.asarray(items, dtype=np.int64)
        rows = len(self.item_factors)
        ok = items < rows
        if self.known is not None:
            ok[ok] &= self.known[items[ok]]
        if ok.all():
            return self.by_length.score(items, u)
        out = np.full(len(items), -np.inf, dtype=np.float32)
        if ok.any():
            out[ok] = self.by_length.score(items[ok], u)
        return out

    def pruned_rank(
        self,
        ranker: Ranker,
        midx: int,
        allowed: np.ndarray,
        k: int,
        boost: Boost,
        boosted: np.ndarray,
        reason: Callable[[int], str],
        ahead: np.ndarray | None = None,
    ) -> list[Rec]:
        """`ranker.rank` of the factor scores, scoring only the items that can matter: the longest
        item factors until the top candidates are certain (serving/mips.py), plus the boosted
        items. Gives the same block as scoring every item; raises NeedsAllScores when it cannot.
        `ahead` (recommend_batch): approximate scores of the longest items, from which the items
        to score exactly are chosen without a scan (when too few, the scan answers)."""
        u = self.user_factors[midx]
        need = ranker.first_candidates(k)
        if ahead is not None:
            got = self.by_length.rescan(ahead, u, allowed, need)
            if got is not None:
                try:
                    return self._rank_scan(ranker, got, u, allowed, k, boost, boosted, reason)
                except NeedsAllScores:
                    pass
        scan = self.by_length.scan(u, allowed, need, self.prune_block)
        return self._rank_scan(ranker, scan, u, allowed, k, boost, boosted, reason)

    def pruned_page_rank(
        self,
        ranker: Ranker,
        structure: dict[str, Any],
        midx: int,
        allowed: np.ndarray,
        k: int,
        boost: Boost,
        boosted: np.ndarray,
        reason: Callable[[int], str],
        tier: np.ndarray,
        pages: list[str],
        complements: np.ndarray,
    ) -> list[Rec]:
        """`pruned_rank` on a category or item page, where `tier` lifts the items under the
        category prefixes `pages` (tier 1) and the current item's `complements` (tier 2) above the
        rest. Scored exactly: the catalogue's longest factors until its top candidates are certain
        (they set the scores' normalisation), the longest of each page's own items until its top
        candidates are certain (a scan over that category alone), the complements and the boosted
        items. Gives the same block as scoring every item; raises NeedsAllScores when it cannot."""
        need = ranker.first_candidates(k)
        orders = [self._page_order(ranker.catalog, structure, p) for p in pages]
        args = (
            ranker,
            self.user_factors[midx],
            allowed,
            k,
            boost,
            boosted,
            reason,
            tier,
            pages,
            orders,
            complements,
        )
        # A page of few leaf categories cannot fill the block alone (at most max_per_category items
        # of each): the rest comes from the whole catalogue, whose scan then goes deeper.
        leaves = sum(o[1] for o in orders)
        deep = leaves * ranker.max_per_category < 2 * k
        try:
            return self._page_rank(*args, 2 * need if deep else need, 2 * need)
        except NeedsAllScores:
            # Diversity filled the page's leaf categories or brands: their other items drop out
            # and the block needs deeper candidates, on the page or past it (a page of three leaf
            # categories holds at most 9 items of a block). Deeper scans still cost far less
            # than scoring every item.
            return self._page_rank(*args, 4 * need, 8 * need)

    def _page_rank(
        self,
        ranker: Ranker,
        u: np.ndarray,
        allowed: np.ndarray,
        k: int,
        boost: Boost,
        boosted: np.ndarray,
        reason: Callable[[int], str],
        tier: np.ndarray,
        pages: list[str],
        orders: list[tuple[NormOrdered, int]],
        complements: np.ndarray,
        need_all: int,
        need_page: int,
    ) -> list[Rec]:
        """pruned_page_rank with scans that make `need_all` candidates of the catalogue and
        `need_page` of each page certain."""
        block = self.prune_block
        scans = [self.by_length.scan(u, allowed, need_all, block)]
        scans += [o[0].scan(u, allowed, need_page, block) for o in orders]
        base = np.full(allowed.size, -np.inf, dtype=np.float32)
        parts = []
        for scan in scans:  # (they overlap; an item scores the same bits in each)
            new = np.isneginf(base[scan.items])
            base[scan.items[new]] = scan.scores[new]
            parts.append(scan.items[new])
        extra = np.concatenate([complements, boosted]) if len(complements) else boosted
        extra = sorted_unique(extra[np.isneginf(base[extra])])
        if len(extra):
            base[extra] = self.scores_of(extra, u)
            parts.append(extra)
        # The page items no scan reached: at most their scans' largest bound, a tier up.
        catalog = ranker.catalog
        unscored = [
            catalog.prefix_items[p] for p, sc in zip(pages, scans[1:], strict=True) if not sc.complete
        ]
        if unscored:
            left = np.concatenate(unscored) if len(unscored) > 1 else unscored[0]
            left = left[allowed[left] & np.isneginf(base[left]) & (tier[left] > 0)]
        else:
            left = np.zeros(0, dtype=np.int64)
        tier_bound = max((sc.bound for sc in scans[1:] if not sc.complete), default=None)
        support = Support(np.concatenate(parts), bound=scans[0].bound, unscored=left, tier_bound=tier_bound)
        return ranker.rank(
            base, allowed, k, boost=boost, boosted=boosted, reason=reason, tier=tier, support=support
        )

    def _page_order(
        self, catalog: F.Catalog, structure: dict[str, Any], prefix: str
    ) -> tuple[NormOrdered, int]:
        """The length-ordered factors of the page's items under a category prefix (the model's
        items only), and how many leaf categories they fall in; kept per catalogue structure."""
        cache = structure.get(("page_orders", self.token))
        if cache is None:
            cache = structure.setdefault(("page_orders", self.token), Cache(_PAGE_ORDERS))

        def build() -> tuple[NormOrdered, int]:
            under = catalog.prefix_items[prefix]
            scored = under[under < len(self.item_factors)]
            return self.by_length.subset(scored), len(sorted_unique(catalog.leaf[under]))

        return cache.get(prefix, build)

    def _rank_scan(
        self,
        ranker: Ranker,
        scan: Scan,
        u: np.ndarray,
        allowed: np.ndarray,
        k: int,
        boost: Boost,
        boosted: np.ndarray,
        reason: Callable[[int], str],
    ) -> list[Rec]:
        """`ranker.rank` over the items `scan` scored exactly, plus the boosted items (scored here).
        The scores stay beside their items (`Support.scores`, `lookup`), not in a catalogue-sized
        -inf array: filling that array and scattering thousands of scores into it cost more than
        the ranking's own reads."""
        by_length = self.by_length
        if scan.prefix:  # an item's score is at its place in length order
            m = len(scan.items)
            position = by_length.position
            rows = len(position)

            def at_scan(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                if len(items) and items.max() >= rows:  # items the factors do not cover
                    at = np.full(len(items), m, dtype=np.int64)
                    inside = items < rows
                    at[inside] = position[items[inside]]
                else:
                    at = position[items]
                hit = at < m
                return hit, scan.scores[at[hit]]

        else:
            order = np.argsort(scan.items, kind="stable")
            at_scan = sorted_lookup(scan.items[order], scan.scores[order])
        hit, _ = at_scan(boosted)
        missing = boosted[~hit]
        if len(missing):  # boosted items may jump the queue: score them exactly too
            m_order = np.argsort(missing, kind="stable")
            at_missing = sorted_lookup(missing[m_order], self.scores_of(missing, u)[m_order])
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
            items = np.concatenate([scan.items, missing])
            scores = np.concatenate([scan.scores, lookup(missing)])
        else:
            items, scores = scan.items, scan.scores
        support = Support(items, scores, lookup=lookup, bound=scan.bound, floor=scan.floor)
        return ranker.rank(None, allowed, k, boost=boost, boosted=boosted, reason=reason, support=support)

    # -- the e-mail feed: many users at once --------------------------------------------------------
    def ahead_scores(self, midx: np.ndarray) -> np.ndarray | None:
        """(len(midx), m) approximate scores of the m longest item factors for these users, from
        one matrix product: a request's scan reaches about as far (its first blocks). A matrix
        product rounds differently from a single request's matrix-vector product, so these only
        choose which items to score exactly (`pruned_rank`). None without a length order."""
        if self.by_length is None or not len(midx):
            return None
        m = min(self.by_length.n, 4 * self.prune_block)
        return self.user_factors[midx] @ self.by_length.factors[:m].T
