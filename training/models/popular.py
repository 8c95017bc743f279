"""`popular`: what many customers interact with, globally, within a customer's categories, or
within a customer's segment; optionally recency-weighted ("trending").

The non-personal baseline every other model must beat, and the fallback serving uses for unknown
customers (`popular_items`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from training.base import History, ModelConfig, Recommender, TrainData, topk
from training.space import Param

_MODES = ("global", "category", "segment")


@dataclass(frozen=True)
class PopularConfig(ModelConfig):
    # global: one ranking for all; category: the customer's own categories first (by their share
    # of the customer's history), popularity within them; segment: popularity among customers of
    # the same segment (profiles' `segment`), global for unknown customers.
    mode: str = "global"
    # False: popularity = number of distinct customers (robust to heavy users).
    # True: the time-decayed confidence sum of the interaction matrix, times the features'
    # learned `trend` (recent/earlier ratio) when item_stats has it: what is selling *now*.
    trending: bool = False

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"popular mode must be one of {_MODES}, got {self.mode!r}")


def _popularity(user_items: sp.csr_matrix, trending: bool, item_stats: pd.DataFrame) -> np.ndarray:
    """(n_items,) float32 popularity, scaled to [0, 1]."""
    n_items = user_items.shape[1]
    if trending:
        pop = np.asarray(user_items.sum(axis=0), dtype=np.float64).ravel()
        if not item_stats.empty and {"item_idx", "trend"} <= set(item_stats.columns):
            trend = np.ones(n_items)
            idx = item_stats["item_idx"].to_numpy(np.int64)
            ok = idx < n_items
            trend[idx[ok]] = item_stats["trend"].fillna(1.0).clip(lower=0.0).to_numpy(np.float64)[ok]
            pop = pop * trend
    else:
        pop = np.bincount(user_items.tocsr().indices, minlength=n_items).astype(np.float64)
    top = pop.max() if pop.size else 0.0
    return (pop / top if top > 0 else pop).astype(np.float32)


def item_categories(items: pd.DataFrame, n_items: int) -> tuple[np.ndarray, list[str]]:
    """(n_items,) int category code per item (-1 = none) and the code -> category path list."""
    codes = np.full(n_items, -1, dtype=np.int64)
    if "category" not in items.columns or items.empty:
        return codes, []
    cat = pd.Categorical(items["category"].astype("string"))
    idx = items["item_idx"].to_numpy(np.int64)
    ok = idx < n_items
    codes[idx[ok]] = np.asarray(cat.codes, dtype=np.int64)[ok]
    return codes, [str(c) for c in cat.categories]


class Popular(Recommender):
    """Popularity ranking; `score` is the same for every user in `global` mode."""

    name = "popular"
    # Tie-break in promotion: among equal scores the cheaper model to serve wins (no model to score: one sort).
    cost = 0
    # What `shoprec tune` searches (training.tune; only dimensions that are config fields).
    search_space = (
        Param("mode", "categorical", choices=("global", "category", "segment")),
        Param("trending", "categorical", choices=(False, True)),
    )
    Config = PopularConfig
    config: PopularConfig

    def _fit(self, data: TrainData, *, callback: Any = None) -> None:
        X = data.user_items.tocsr()
        self.pop_ = _popularity(X, self.config.trending, data.item_stats)
        self.item_cat_, self.categories_ = item_categories(data.items, data.n_items)
        # Per segment popularity: rows = segments (sorted names), built from that segment's users.
        self.segments_: list[str] = []
        self.user_segment_ = np.full(data.n_users, -1, dtype=np.int64)
        self.seg_pop_ = np.zeros((0, data.n_items), dtype=np.float32)
        if "segment" in data.users.columns:
            seg = data.users[["user_idx", "segment"]].dropna()
            self.segments_ = sorted(seg["segment"].astype(str).unique().tolist())
            code = {s: i for i, s in enumerate(self.segments_)}
            uidx = seg["user_idx"].to_numpy(np.int64)
            ok = uidx < data.n_users
            self.user_segment_[uidx[ok]] = seg["segment"].astype(str).map(code).to_numpy(np.int64)[ok]
            self.seg_pop_ = np.zeros((len(self.segments_), data.n_items), dtype=np.float32)
            for s in range(len(self.segments_)):
                rows = np.flatnonzero(self.user_segment_ == s)
                self.seg_pop_[s] = _popularity(X[rows], self.config.trending, pd.DataFrame())

    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        n = len(users)
        base = np.broadcast_to(self.pop_, (n, self.n_items)).astype(np.float32)
        if self.config.mode == "segment" and len(self.segments_):
            seg = np.where(users >= 0, self.user_segment_[np.clip(users, 0, None)], -1)
            has = seg >= 0
            # Segment popularity first; global popularity (scaled to < the smallest step) breaks ties.
            base[has] = self.seg_pop_[seg[has]] + 1e-3 * self.pop_
        elif self.config.mode == "category" and len(self.categories_):
            ui = history.user_items
            known = self.item_cat_ >= 0
            cat_of = sp.csr_matrix(
                (np.ones(known.sum(), np.float32), (np.flatnonzero(known), self.item_cat_[known])),
                shape=(self.n_items, len(self.categories_)),
            )
            share = np.asarray((ui > 0).astype(np.float32) @ cat_of.toarray())
            totals = share.sum(axis=1, keepdims=True)
            share = np.divide(share, totals, out=np.zeros_like(share), where=totals > 0)
            # share in [0, 1] dominates; popularity in [0, 1] orders items within a category.
            item_share = np.where(known[None, :], share[:, np.clip(self.item_cat_, 0, None)], 0.0)
            base = item_share.astype(np.float32) + 1e-3 * self.pop_[None, :]
        return np.ascontiguousarray(base, dtype=np.float32)

    def popular_items(self, k: int, *, segment: str | None = None, category: str | None = None) -> np.ndarray:
        """Top-k item indices for the /popular endpoint: within a segment and/or a category path
        prefix (e.g. "pets/cats" covers "pets/cats/litter-boxes"); unknown segment -> global."""
        pop = self.pop_.copy()
        if segment is not None and segment in self.segments_:
            pop = self.seg_pop_[self.segments_.index(segment)] + 1e-3 * self.pop_
        if category is not None:
            prefix = category.rstrip("/")
            ok_codes = [
                i for i, c in enumerate(self.categories_) if c == prefix or c.startswith(prefix + "/")
            ]
            pop = np.where(np.isin(self.item_cat_, ok_codes), pop, -np.inf)
        order = np.argsort(-pop, kind="stable")[:k]
        return order[np.isfinite(pop[order])]

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Most popular items of the query item's category (the item itself excluded)."""
        items = np.asarray(items, dtype=np.int64)
        s = np.broadcast_to(self.pop_, (len(items), self.n_items)).copy()
        same = self.item_cat_[None, :] == self.item_cat_[items][:, None]
        s = s + same.astype(np.float32) * (self.item_cat_[items][:, None] >= 0)
        s[np.arange(len(items)), items] = -np.inf
        ids, scores = topk(s, k)
        ids[~np.isfinite(scores)] = -1
        return ids, scores

    def _forget_rows(self, users: np.ndarray) -> None:
        """The users' segment codes go (they then get the global ranking, as an unknown customer)."""
        users = users[users < len(self.user_segment_)]
        self.user_segment_ = self.user_segment_.copy()
        self.user_segment_[users] = -1

    def _save_state(self, path: Path) -> None:
        np.savez(
            path / "popular.npz",
            pop=self.pop_,
            item_cat=self.item_cat_,
            user_segment=self.user_segment_,
            seg_pop=self.seg_pop_,
        )
        (path / "popular.json").write_text(
            json.dumps({"categories": self.categories_, "segments": self.segments_})
        )

    def _load_state(self, path: Path) -> None:
        z = np.load(path / "popular.npz")
        names = json.loads((path / "popular.json").read_text())
        self.pop_ = z["pop"]
        self.item_cat_ = z["item_cat"]
        self.categories_ = list(names["categories"])
        self.segments_ = list(names["segments"])
        self.user_segment_ = z["user_segment"]
        self.seg_pop_ = z["seg_pop"]
