"""`als`, `bpr` and `itemknn`: the `implicit` library's CPU models behind the shoprec interface.

implicit runs its own thread pool; a BLAS pool inside each of its threads oversubscribes the CPU
(implicit warns about exactly this), so every call into implicit runs under
`threadpool_limits(1, "blas")`. Scoring is one float32 matrix product per batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from training.base import History, ModelConfig, Recommender, TrainData, sparse_neighbours, topk
from training.space import Param


def _confidence(user_items: sp.csr_matrix, binary: bool) -> sp.csr_matrix:
    """The (n_users, n_items) float32 CSR implicit trains on: 1 per interaction or the weighted value."""
    X = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
    X.eliminate_zeros()
    if binary:
        X.data[:] = 1.0
    X.sort_indices()
    return X


def _fold_in(item_factors: np.ndarray, rows: sp.csr_matrix, alpha: float, reg: float) -> np.ndarray:
    """User vectors for users the model has not seen, from their history alone (one exact ALS
    half-step per user: min Σ c_ui (p_ui - x·y_i)² + reg |x|², c = 1 + alpha·r). Shape (n, f)."""
    Y = item_factors.astype(np.float64)
    YtY = Y.T @ Y
    out = np.zeros((rows.shape[0], Y.shape[1]), dtype=np.float32)
    eye = reg * np.eye(Y.shape[1])
    for r in range(rows.shape[0]):
        lo, hi = rows.indptr[r], rows.indptr[r + 1]
        if lo == hi:
            continue
        idx, val = rows.indices[lo:hi], rows.data[lo:hi].astype(np.float64)
        Yi = Y[idx]
        A = YtY + (Yi.T * (alpha * val)) @ Yi + eye
        b = ((1.0 + alpha * val)[:, None] * Yi).sum(axis=0)
        out[r] = np.linalg.solve(A, b)
    return out


class _FactorModel(Recommender):
    """Shared scoring for matrix-factorisation models: scores = user_factors · item_factorsᵀ."""

    user_factors_: np.ndarray
    item_factors_: np.ndarray

    def _keep_factors(self, model: Any) -> None:
        """Take a fitted implicit model's factors as contiguous float32 (the serving product's layout)."""
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)

    def _user_vectors(self, users: np.ndarray, history: History) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        U = np.zeros((len(users), self.user_factors_.shape[1]), dtype=np.float32)
        known = (users >= 0) & (users < self.user_factors_.shape[0])
        U[known] = self.user_factors_[users[known]]
        if (~known).any():
            U[~known] = self._fold_in(history.user_items[np.flatnonzero(~known)])
        return U

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        raise NotImplementedError

    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        return self._user_vectors(users, history) @ self.item_factors_.T

    def factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        uf, itf = self.user_factors_, self.item_factors_
        if not all(isinstance(a, np.ndarray) and a.ndim == 2 and a.dtype == np.float32 for a in (uf, itf)):
            return None  # another dtype would change the product's rounding: let `score` answer
        return np.ascontiguousarray(uf), np.ascontiguousarray(itf)

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of item factors, the item itself excluded."""
        # Normalised once per fitted/loaded state, not per call: at 100k items re-normalising every
        # factor on each request cost 17-25 ms, the whole p99 budget of the service.
        cached = getattr(self, "_unit_cache", None)
        if cached is not None and cached[0] is self.item_factors_:  # same factors as last call
            Vn = cached[1]
        else:
            V = self.item_factors_
            norms = np.linalg.norm(V, axis=1)
            norms[norms == 0] = 1.0
            Vn = (V / norms[:, None]).astype(np.float32)
            self._unit_cache = (V, Vn)
        items = np.asarray(items, dtype=np.int64)
        s = Vn[items] @ Vn.T
        s[np.arange(len(items)), items] = -np.inf
        ids, scores = topk(s, k)
        ids[~np.isfinite(scores)] = -1
        return ids, scores

    def _forget_rows(self, users: np.ndarray) -> None:
        """Replace the users' factor rows by the fold-in of an empty history (zeros; BPR keeps the
        constant bias column): indices keep their meaning, and the row holds nothing of the user,
        so the model scores them as a customer it never saw."""
        users = users[users < self.user_factors_.shape[0]]
        self.user_factors_ = self.user_factors_.copy()
        self.user_factors_[users] = self._fold_in(
            sp.csr_matrix((len(users), self.item_factors_.shape[0]), dtype=np.float32)
        )

    def _save_state(self, path: Path) -> None:
        np.save(path / "user_factors.npy", self.user_factors_)
        np.save(path / "item_factors.npy", self.item_factors_)

    def _load_state(self, path: Path) -> None:
        self.user_factors_ = np.load(path / "user_factors.npy")
        self.item_factors_ = np.load(path / "item_factors.npy")


@dataclass(frozen=True)
class ALSConfig(ModelConfig):
    factors: int = 64
    regularization: float = 0.05
    # confidence c = 1 + alpha·r (Hu, Koren & Volinsky); with binary=True r is 1 per interaction.
    alpha: float = 2.0
    iterations: int = 15
    binary: bool = False
    seed: int = 42
    num_threads: int = 0  # 0 = all cores


class ALS(_FactorModel):
    """implicit's AlternatingLeastSquares (conjugate gradient), float32."""

    name = "als"
    # Tie-break in promotion: among equal scores the cheaper model to serve wins (one factor product (pruned at 100k items)).
    cost = 3
    # What `shoprec tune` searches (training.tune; only dimensions that are config fields).
    search_space = (
        Param("factors", "int", 16, 256, log=True),
        Param("regularization", "float", 1e-4, 1.0, log=True),
        Param("alpha", "float", 0.5, 50.0, log=True),
        Param("iterations", "int", 5, 30),
        Param("binary", "categorical", choices=(False, True)),
    )
    Config = ALSConfig
    config: ALSConfig

    def _fit(self, data: TrainData, *, callback: Any = None) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        c = self.config
        cb = None
        if callback is not None:

            def cb(iteration: int, elapsed: float, loss: float) -> None:
                # expose the factors so far, so a tuning callback can evaluate the half-trained model
                self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
                self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)
                metrics = {"elapsed_s": float(elapsed)}
                if loss is not None:  # only when implicit computes the training loss
                    metrics["loss"] = float(loss)
                callback(iteration, metrics)

        # implicit checks the BLAS pool when the model is built, so build it inside the limit too
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=c.factors,
                regularization=c.regularization,
                alpha=c.alpha,
                iterations=c.iterations,
                random_state=c.seed,
                num_threads=c.num_threads,
            )
            model.fit(_confidence(data.user_items, c.binary), show_progress=False, callback=cb)
        self._keep_factors(model)

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        rows = _confidence(rows, self.config.binary)
        return _fold_in(self.item_factors_, rows, self.config.alpha, self.config.regularization)


@dataclass(frozen=True)
class BPRConfig(ModelConfig):
    factors: int = 64
    # implicit's SGD over-fits MovieLens-100K with long, fast schedules: random-split valid/test
    # NDCG@10 0.106/0.113 at lr 0.05, 0.196/0.243 at lr 0.005 with 100 iterations (lr 0.01 with 50,
    # lr 0.002 with 200, or 128 factors were not better on validation). RecBole's Adam BPR: 0.293.
    learning_rate: float = 0.005
    regularization: float = 0.01
    iterations: int = 100
    seed: int = 42
    num_threads: int = 0


class BPR(_FactorModel):
    """implicit's BayesianPersonalizedRanking. Its factors carry an item-bias column (the user side
    holds a constant 1 there), so unknown users are folded in on the other columns with the bias kept."""

    name = "bpr"
    # Tie-break in promotion: among equal scores the cheaper model to serve wins (one factor product).
    cost = 4
    # What `shoprec tune` searches (training.tune; only dimensions that are config fields).
    search_space = (
        Param("factors", "int", 16, 256, log=True),
        Param("learning_rate", "float", 1e-3, 0.1, log=True),
        Param("regularization", "float", 1e-5, 0.1, log=True),
        Param("iterations", "int", 20, 200, log=True),
    )
    Config = BPRConfig
    config: BPRConfig

    def _fit(self, data: TrainData, *, callback: Any = None) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        c = self.config
        with threadpool_limits(1, "blas"):
            model = BayesianPersonalizedRanking(
                factors=c.factors,
                learning_rate=c.learning_rate,
                regularization=c.regularization,
                iterations=c.iterations,
                random_state=c.seed,
                num_threads=c.num_threads,
            )
            model.fit(_confidence(data.user_items, True), show_progress=False)
        self._keep_factors(model)

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        # BPR optimises a ranking, not a reconstruction, so a least-squares fold-in fits it badly;
        # the mean of the history's item vectors scores items like those (item-to-item), bias kept.
        rows = _confidence(rows, True)
        counts = np.maximum(np.diff(rows.indptr), 1)[:, None]
        x = np.asarray(rows @ self.item_factors_[:, :-1]) / counts
        return np.hstack([x, np.ones((x.shape[0], 1))]).astype(np.float32)


@dataclass(frozen=True)
class ItemKNNConfig(ModelConfig):
    # cosine | bm25 | tfidf (implicit.nearest_neighbours). BM25 damps heavy users and popular items.
    similarity: str = "cosine"
    neighbours: int = 100  # K: similar items kept per item
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    binary: bool = True
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.similarity not in ("cosine", "bm25", "tfidf"):
            raise ValueError(f"itemknn similarity must be cosine, bm25 or tfidf, got {self.similarity!r}")


class ItemKNN(Recommender):
    """Item-based nearest neighbours: score(u, j) = Σ_i history(u, i) · sim(i, j), self-similarity removed
    (repeats are the policy's and the blend's business). Works for unknown users as is."""

    name = "itemknn"
    # Tie-break in promotion: among equal scores the cheaper model to serve wins (a sparse product per customer).
    cost = 1
    # What `shoprec tune` searches (training.tune; only dimensions that are config fields).
    search_space = (
        Param("similarity", "categorical", choices=("cosine", "bm25", "tfidf")),
        Param("neighbours", "int", 10, 400, log=True),
        Param("bm25_k1", "float", 0.5, 2.0),
        Param("bm25_b", "float", 0.3, 1.0),
        Param("binary", "categorical", choices=(False, True)),
    )
    Config = ItemKNNConfig
    config: ItemKNNConfig

    def _fit(self, data: TrainData, *, callback: Any = None) -> None:
        from implicit import nearest_neighbours as nn

        c = self.config
        if c.similarity == "cosine":
            model = nn.CosineRecommender(K=c.neighbours + 1, num_threads=c.num_threads)
        elif c.similarity == "bm25":
            model = nn.BM25Recommender(
                K=c.neighbours + 1, K1=c.bm25_k1, B=c.bm25_b, num_threads=c.num_threads
            )
        else:
            model = nn.TFIDFRecommender(K=c.neighbours + 1, num_threads=c.num_threads)
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            # implicit's own normalize() hands itself a COO matrix under current scipy and warns about it
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(_confidence(data.user_items, c.binary), show_progress=False)
        sim = sp.csr_matrix(model.similarity, dtype=np.float32)
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        self.similarity_ = sim

    def _history(self, history: History) -> sp.csr_matrix:
        return _confidence(history.user_items, self.config.binary)

    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        return np.asarray((self._history(history) @ self.similarity_).toarray(), dtype=np.float32)

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return sparse_neighbours(self.similarity_, items, k)

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "similarity.npz", self.similarity_)

    def _load_state(self, path: Path) -> None:
        self.similarity_ = sp.load_npz(path / "similarity.npz").tocsr()
