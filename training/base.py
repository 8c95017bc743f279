"""The one narrow interface every recommender answers (after `implicit`'s RecommenderBase).

Serving and evaluation hold a `Recommender` and never ask which model it is. A model learns from a
`TrainData` (matrices, sequences, baskets, item metadata), scores a batch of users from their
`History`, and returns top-k item indices with exclusions applied. Ids are dense indices; the
string id mappings (`users`, `items` frames) travel with the model in `save`/`load`.

A model implements `_fit`, `score` (and optionally `similar_items`, `_save_state`, `_load_state`);
`recommend` (batched top-k with exclusions, -1 padded) is shared so every model ranks the same way.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.strict import strict_fields


@dataclass(frozen=True)
class ModelConfig:
    """Base for a model's own small frozen config. Unknown keys are an error, never a silent default."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        return cls(**strict_fields(cls, values))

    def with_overrides(self, values: dict[str, Any]) -> ModelConfig:
        merged = {**dataclasses.asdict(self), **values}
        return type(self).from_dict(merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainData:
    """Everything a model may learn from. Row/column i of every matrix is user/item index i.

    user_items: CSR (n_users, n_items), float32 confidence (weighted, time-decayed events).
    sequences:  per user index, the item indices of positive-weight events in time order.
    sequence_ts: per user index, the epoch seconds of those events (empty when unknown); events of
                one user at one time are one basket (next-basket models group them so).
    baskets:    list of item-index arrays, one per basket (order), for co-occurrence models.
    users:      frame with user_idx, user_id (+ profile columns such as `segment` when known).
    items:      frame with item_idx, item_id (+ catalogue columns: category, brand, price, gender).
    item_stats / category_rebuy / customer_rebuy: learned statistics from features (may be empty frames).
    """

    user_items: sp.csr_matrix
    users: pd.DataFrame
    items: pd.DataFrame
    sequences: list[np.ndarray] = field(default_factory=list)
    baskets: list[np.ndarray] = field(default_factory=list)
    sequence_ts: list[np.ndarray] = field(default_factory=list)
    item_stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    category_rebuy: pd.DataFrame = field(default_factory=pd.DataFrame)
    last_purchases: pd.DataFrame = field(default_factory=pd.DataFrame)
    customer_rebuy: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def n_users(self) -> int:
        return self.user_items.shape[0]

    @property
    def n_items(self) -> int:
        return self.user_items.shape[1]


@dataclass
class History:
    """What is known about a batch of users at scoring time; row i belongs to users[i].

    user_items: CSR (len(users), n_items) confidence, the same weighting as training.
    sequences:  item indices in time order per row (empty arrays where unknown).
    sequence_ts: epoch seconds matching `sequences` per row (empty list when unknown: a model that
                groups events into baskets then takes a row's whole sequence as one basket).
    now:        (len(users),) float epoch seconds at which each row's recommendation is asked for
                (evaluation: the held-out basket's time, never its contents; serving: the request's
                time; a batch feed: its run time), NaN or None when unknown. Next-basket models read
                "days since the last basket as of now" from it.
    """

    user_items: sp.csr_matrix
    sequences: list[np.ndarray] = field(default_factory=list)
    sequence_ts: list[np.ndarray] = field(default_factory=list)
    now: np.ndarray | None = None

    @classmethod
    def of(cls, data: TrainData, users: np.ndarray) -> History:
        users = np.asarray(users, dtype=np.int64)
        seqs = [data.sequences[u] for u in users] if data.sequences else []
        ts = [data.sequence_ts[u] for u in users] if data.sequence_ts else []
        return cls(data.user_items[users], seqs, ts)

    def __post_init__(self) -> None:
        self.user_items = sp.csr_matrix(self.user_items, dtype=np.float32)
        if self.now is not None:
            self.now = np.asarray(self.now, dtype=np.float64).reshape(-1)
            if len(self.now) != self.user_items.shape[0]:
                raise ValueError(
                    f"History.now has {len(self.now)} entries for {self.user_items.shape[0]} rows"
                )


class Recommender(ABC):
    """Fit on TrainData; score and recommend for batches of users; similar items; save/load."""

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]
    # What a caller may know about a model class, so tuning, promotion and training never ask which
    # model they hold: its search space for `shoprec tune` (training.space.Param dimensions), its
    # serving cost rank (the tie-break in promotion: lower is cheaper and simpler), and whether its
    # fit takes a validation hook to stop early on (`fit(..., validation=...)`).
    search_space: ClassVar[tuple[Any, ...]] = ()
    cost: ClassVar[int] = 100
    early_stopping: ClassVar[bool] = False

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.users = pd.DataFrame({"user_idx": [], "user_id": []})
        self.items = pd.DataFrame({"item_idx": [], "item_id": []})
        self.n_items = 0
        # What a user of the fitted model must know about how it was fitted (a bounded variant, a
        # part skipped): logged with the run and printed in `shoprec train`'s result line.
        self.fit_warnings: list[str] = []

    # -- learning -------------------------------------------------------------------------------
    def fit(self, data: TrainData, *, callback: Any = None, validation: Any = None) -> Recommender:
        """Learn from `data`. `callback(step, metrics)` may be called by iterative models (for
        pruning in tuning); it may raise to stop training. `validation(model) -> float` (higher is
        better), for a class with `early_stopping`, scores the model during training so it stops
        early and keeps its best state; other models ignore it."""
        if validation is not None and self.early_stopping:
            self.validation = validation
        self.users = data.users[["user_idx", "user_id"]].copy()
        self.items = data.items.copy()
        self.n_items = data.n_items
        self.fit_warnings = []
        self._fit(data, callback=callback)
        return self

    @abstractmethod
    def _fit(self, data: TrainData, *, callback: Any = None) -> None: ...

    # -- scoring --------------------------------------------------------------------------------
    @abstractmethod
    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        """Dense scores (len(users), n_items), higher is better. `users` are training user indices,
        or -1 for a user the model has not seen (score from `history` alone where the model can)."""

    def recommend(
        self,
        users: np.ndarray,
        history: History,
        k: int,
        exclude: sp.csr_matrix | None = None,
        batch_size: int = 2048,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per user: (ids, scores), each (len(users), k). Items in row i of `exclude`
        (CSR, len(users) × n_items, nonzero = excluded) never come back; rows with fewer than k
        eligible items are padded with id -1 and score -inf."""
        users = np.asarray(users, dtype=np.int64)
        n = len(users)
        k_eff = min(k, self.n_items)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            rows = np.arange(start, stop)
            sub = History(
                history.user_items[rows],
                [history.sequences[i] for i in rows] if history.sequences else [],
                [history.sequence_ts[i] for i in rows] if history.sequence_ts else [],
                None if history.now is None else history.now[rows],
            )
            s = np.asarray(self.score(users[rows], sub), dtype=np.float32)
            if exclude is not None:
                ex = exclude[rows].tocoo()
                nz = ex.data != 0  # explicitly stored zeros are not exclusions
                s[ex.row[nz], ex.col[nz]] = -np.inf
            top_ids, top_scores = topk(s, k_eff)
            ids[rows, :k_eff] = top_ids
            scores[rows, :k_eff] = top_scores
        ids[~np.isfinite(scores)] = -1
        return ids, scores

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k most similar items per query item (the item itself excluded), -1 padded."""
        raise NotImplementedError(f"{self.name} does not define item similarity")

    # -- what a caller may know about the model (serving asks these, never the model's class) ----
    def factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(user_factors (n_users, d), item_factors (n_items, d)), both C-contiguous float32, when
        `score` for a known user u is exactly user_factors[u] @ item_factorsᵀ (matrix
        factorisation); None otherwise. Serving then scores with one product over the item factors
        and prunes by factor length (serving/mips.py)."""
        return None

    def neighbour_table(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every item's `similar_items(item, k)` at once as a CSR-like table (indptr (n_items+1,),
        ids, scores), best first, the item itself and non-positive scores left out, ties by lower
        index; None when the model has no cheaper way than asking per item."""
        return None

    # -- privacy --------------------------------------------------------------------------------
    def forget_users(self, user_ids: Iterable[str]) -> np.ndarray:
        """Erase customers from the model (CONTRACT "Privacy", `shoprec forget`): their rows leave
        the id mapping `users` and `_forget_rows` clears what the model keeps per user (factor
        rows, segment codes), so the model scores them exactly as a customer it never saw.

        Ids are compared as trimmed text. Returns the erased user indices (sorted; empty when none
        was known). What was learned from everyone together (item factors, similarities) keeps the
        customers' share until the next training, which no longer sees them."""
        wanted = {str(u).strip() for u in user_ids}
        hit = self.users["user_id"].astype(str).str.strip().isin(wanted).to_numpy()
        idx = np.sort(self.users.loc[hit, "user_idx"].to_numpy(np.int64))
        if hit.any():
            self.users = self.users.loc[~hit].reset_index(drop=True)
            self._forget_rows(idx)
        return idx

    def _forget_rows(self, users: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Clear the per-user learned state of these user indices. Every model that keeps state per
        user implements it (tests/test_models.py checks the result for every model); models that
        score from the history alone keep nothing per user and do nothing."""

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(
            json.dumps(
                {"model": self.name, "config": self.config.to_dict(), "n_items": self.n_items}, indent=2
            )
        )
        self.users.to_parquet(path / "users.parquet", index=False)
        self.items.to_parquet(path / "items.parquet", index=False)
        self._save_state(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Load any saved model; the class is read from config.json, so callers need not know it."""
        from training.models import get_model_class

        path = Path(path)
        meta = json.loads((path / "config.json").read_text())
        klass = get_model_class(meta["model"]) if cls is Recommender else cls
        model = klass(klass.Config.from_dict(meta["config"]))
        model.n_items = int(meta["n_items"])
        model.users = pd.read_parquet(path / "users.parquet")
        model.items = pd.read_parquet(path / "items.parquet")
        model._load_state(path)
        return model

    def _save_state(self, path: Path) -> None:  # noqa: B027 - optional hook
        """Write the learned state into `path` (numpy .npy/.npz, torch state dicts, ...)."""

    def _load_state(self, path: Path) -> None:  # noqa: B027 - optional hook
        """Read what `_save_state` wrote."""


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a dense (n, m) matrix, sorted descending (ties: lower index first).

    The k-th largest of the row's block maxima is a lower bound for its k-th largest score, so one
    vectorised compare against it leaves a small candidate set, and only that is sorted: about 3x
    faster than argpartition on 20k items. Rows with huge ties (sparse scores, -inf) make the set
    large; then the whole batch takes the argpartition route.
    """
    n, m = scores.shape
    k = min(k, m)
    if k == 0:
        return np.empty((n, 0), np.int64), np.empty((n, 0), np.float32)
    block = 64
    nb = m // block
    if n > 0 and nb >= 4 * k:
        bmax = scores[:, : nb * block].reshape(n, nb, block).max(axis=2)
        if nb * block < m:
            bmax = np.concatenate([bmax, scores[:, nb * block :].max(axis=1, keepdims=True)], axis=1)
        thr = np.partition(bmax, bmax.shape[1] - k, axis=1)[:, bmax.shape[1] - k]
        mask = scores >= thr[:, None]
        if np.count_nonzero(mask) <= 16 * n * k:
            rows, cols = np.nonzero(mask)
            vals = scores[rows, cols]
            order = np.lexsort((cols, -vals, rows))
            rows, cols, vals = rows[order], cols[order], vals[order]
            rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n))[rows]
            keep = rank < k
            ids = np.full((n, k), -1, np.int64)
            out = np.full((n, k), -np.inf, dtype=scores.dtype)
            ids[rows[keep], rank[keep]] = cols[keep]
            out[rows[keep], rank[keep]] = vals[keep]
            return ids, out
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64), np.take_along_axis(
        part_scores, order, axis=1
    )


def sparse_neighbours(similarity: sp.csr_matrix, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k neighbours per query item from a sparse item x item similarity: items without a stored
    similarity never come back, nor does the item itself; rows are -1 padded."""
    items = np.asarray(items, dtype=np.int64)
    s = similarity[items].toarray()
    s[s == 0] = -np.inf
    s[np.arange(len(items)), items] = -np.inf
    ids, scores = topk(s, k)
    ids[~np.isfinite(scores)] = -1
    return ids, scores
