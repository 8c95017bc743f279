"""`ease`: Steck's EASE^R, a closed-form item × item linear model (WWW 2019).

B = I - P · diag(1 / diag(P)), P = (XᵀX + λI)⁻¹, then diag(B) = 0; scores = X · B.

`dropout` = p > 0 gives Steck's denoising variants (NeurIPS 2020, "Autoencoders that don't overfit
towards the identity"): training on inputs with each entry dropped with probability p (and the rest
scaled by 1/(1-p)) is, in expectation, a ridge penalty Λ = λI + p/(1-p)·diag(XᵀX), so popular items are
regularised more. With `zero_diagonal` (default) this is EDLAE: the EASE closed form with λI replaced
by Λ; without it, DLAE: B = (XᵀX + Λ)⁻¹XᵀX = I - PΛ, whose diagonal is not zero (an item partly predicts
itself), so its scores only make sense where seen items are excluded. p = 0 is plain EASE. On
MovieLens-100K (random 80/10/10) both gain about +0.005 NDCG@10 over EASE, within the noise of one
random draw (benchmarks/bench_training.py). `pop_beta` > 0 scales X's columns by
popularity^-β before all this (see the config). The item × item
matrix is dense, so the catalogue size is capped (`max_items`): above it the model either refuses
with an error (`on_too_large="error"`) or, saying so in a warning, in `fallback_` and in the run's
`fit_warnings`, fits EASE on the `top_items` most popular items only and ranks the rest below them
(`on_too_large="top-items"`, the default: a scheduled retrain on a big shop's catalogue gets a
bounded EASE, not a stopped run).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from training.base import History, ModelConfig, Recommender, TrainData, topk
from training.space import Param


@dataclass(frozen=True)
class EASEConfig(ModelConfig):
    # L2 strength; on MovieLens-100K ~200–500 is best (benchmarks/bench_training.py sweeps it).
    lambda_: float = 300.0
    binary: bool = True  # EASE is defined on the 0/1 matrix; False uses the weighted confidences
    # The largest catalogue fitted whole. The solve holds one dense float64 n × n matrix (20 000
    # items: 3.2 GB) and the model a float32 one (1.6 GB); the LU inverse costs ~2n³ flops.
    max_items: int = 20_000
    # Above max_items: "top-items" fits EASE on the `top_items` most popular items and ranks the
    # rest below them (warned, and recorded in the run), so a big catalogue never stops a scheduled
    # retrain; "error" refuses instead. 10 000 items: 0.8 GB while solving and an eighth of the
    # flops of 20 000. On Complete Journey the 10 000 products with most lines hold 80% of the
    # purchase lines (20 000: 92%).
    on_too_large: str = "top-items"  # top-items | error
    top_items: int = 10_000
    # Denoising (Steck 2020): input dropout probability p in [0, 1); 0 = plain EASE.
    dropout: float = 0.0
    zero_diagonal: bool = True  # True: EASE / EDLAE (diag(B) = 0); False: DLAE (B = I - PΛ)
    # Column (popularity) normalisation: item j's column of X is scaled by (n_j / median n)^-β
    # (n_j = its users in training) before the Gram matrix, for fitting and scoring alike, so rare
    # items weigh more; λ keeps its meaning for an item of median popularity. 0 = off. On
    # MovieLens-100K random, β = 0.1-0.15 lifted DLAE's validation NDCG@10 by about +0.002 on two
    # random draws (test +0.001 to +0.003; benchmarks/bench_training.py sweeps it).
    pop_beta: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ease dropout must be in [0, 1), got {self.dropout!r}")
        if self.on_too_large not in ("error", "top-items"):
            raise ValueError(f"ease on_too_large must be 'error' or 'top-items', got {self.on_too_large!r}")
        if self.top_items < 1:
            raise ValueError(f"ease top_items must be >= 1, got {self.top_items!r}")
        if self.lambda_ <= 0:
            raise ValueError("ease lambda_ must be > 0")
        if not 0.0 <= self.pop_beta <= 1.0:
            raise ValueError(f"ease pop_beta must be in [0, 1], got {self.pop_beta!r}")


def closed_form(
    G: np.ndarray,
    lambda_: float,
    dropout: float = 0.0,
    zero_diagonal: bool = True,
    *,
    overwrite: bool = False,
) -> np.ndarray:
    """B from the Gram matrix G = XᵀX: Λ = λI + p/(1-p)·diag(G), P = (G + Λ)⁻¹; EASE/EDLAE
    B = I - P·diag(1/diag(P)) (diag(B) = 0), DLAE B = I - PΛ.

    `overwrite=True` lets the solve work inside G (float64, C-contiguous) and returns B in its
    memory: one n × n matrix at peak instead of four (20 000 items: 3.2 GB, not 13)."""

    lam = lambda_ + dropout / (1.0 - dropout) * np.diag(G)
    A = G if overwrite and G.dtype == np.float64 and G.flags.c_contiguous else np.array(G, dtype=np.float64)
    A[np.diag_indices_from(A)] += lam
    P = spd_inverse(A, overwrite=True)
    if zero_diagonal:
        P /= -np.diag(P).copy()[None, :]
        P[np.diag_indices_from(P)] = 0.0
    else:
        P *= -lam[None, :]
        P[np.diag_indices_from(P)] += 1.0
    return P


def gram(X: sp.spmatrix, chunk_bytes: int = 1 << 28) -> np.ndarray:
    """XᵀX as a dense, C-contiguous float64 (n, n) matrix, with one n × n allocation.

    A sparse product first materialises every co-occurring pair of a user's items (Σ_u k_u²
    entries of 12+ bytes) and then densifies: on Complete Journey's 20 000 most popular items that
    is 3.8·10⁸ pairs (measured on its loo training part), several GB. So unless those pairs take less room than the dense result,
    XᵀX is accumulated in place from dense blocks of users (`chunk_bytes` each) with BLAS's syrk,
    which fills one triangle; the other is mirrored block by block."""
    from scipy.linalg import blas

    X = sp.csr_matrix(X)
    n_users, n = X.shape
    per_user = np.diff(X.indptr).astype(np.float64)
    if float(np.sum(per_user**2)) * 16 <= 8.0 * n * n:
        return np.ascontiguousarray((X.T @ X).astype(np.float64).toarray())
    G = np.zeros((n, n), dtype=np.float64, order="F")
    rows = max(1, int(chunk_bytes // (8 * max(n, 1))))
    for start in range(0, n_users, rows):
        block = X[start : start + rows].astype(np.float64).toarray()
        G = blas.dsyrk(1.0, block, beta=1.0, c=G, trans=1, lower=0, overwrite_c=1)
    C = G.T  # C-contiguous view; its lower triangle holds the sums (G's upper one)
    step = max(1, int(chunk_bytes // (8 * max(n, 1))))
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        D = C[b0:b1, b0:b1]
        D[...] = np.tril(D) + np.tril(D, -1).T
        if b1 < n:
            C[b0:b1, b1:] = C[b1:, b0:b1].T
    return C


def spd_inverse(A: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix (G + Λ, λ > 0) by Cholesky: n³ flops
    against LU's 2n³ (np.linalg.inv), which is what a 10k-20k item model's fit time is made of.
    With `overwrite` (A float64 and C-contiguous) LAPACK works inside A's memory (its transpose is
    the same symmetric matrix in Fortran order) and the result is returned there: one n × n matrix
    at peak. Falls back to LU if LAPACK finds the matrix not positive definite (rounding)."""
    from scipy.linalg import lapack

    inplace = overwrite and A.dtype == np.float64 and A.flags.c_contiguous
    M = A.T if inplace else np.array(A, dtype=np.float64, order="F")
    c, info = lapack.dpotrf(M, lower=False, clean=False, overwrite_a=1)
    if info == 0:
        inv, info = lapack.dpotri(c, lower=False, overwrite_c=1)
    if info != 0:  # (M is spoilt; A too when in place: rebuild from the caller's data is not possible)
        if inplace:
            raise np.linalg.LinAlgError("G + Λ is not positive definite")
        return np.linalg.inv(A)
    _mirror_upper(inv)
    return inv.T if inplace else inv


def _mirror_upper(M: np.ndarray, block: int = 2048) -> None:
    """Copy M's upper triangle onto its lower one, in place, a block at a time (no n × n temporary)."""
    n = M.shape[0]
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        D = M[b0:b1, b0:b1]
        D[...] = np.triu(D) + np.triu(D, 1).T
        if b1 < n:
            M[b1:, b0:b1] = M[b0:b1, b1:].T


def most_popular(X: sp.spmatrix, max_items: int) -> np.ndarray:
    """Sorted column indices of the `max_items` columns of X with the most nonzeros (ties: the
    lower index), or every column when there are no more than that."""
    n_items = X.shape[1]
    if n_items <= max_items:
        return np.arange(n_items)
    counts = np.diff(sp.csc_matrix(X).indptr)
    return np.sort(np.argsort(-counts, kind="stable")[:max_items])


def column_weights(X: sp.spmatrix, beta: float) -> np.ndarray:
    """(n_j / median n)^-β per column j of X, n_j = the column's nonzeros (at least 1); ones for β = 0."""
    n = np.maximum(np.diff(sp.csc_matrix(X).indptr), 1).astype(np.float64)
    if beta == 0.0:
        return np.ones(len(n))
    return (n / np.median(n)) ** -beta


class EASE(Recommender):
    name = "ease"
    # Tie-break in promotion: among equal scores the cheaper model to serve wins (a dense item x item product).
    cost = 2
    # What `shoprec tune` searches (training.tune; only dimensions that are config fields).
    search_space = (
        Param("lambda_", "float", 1.0, 5000.0, log=True),
        Param("binary", "categorical", choices=(False, True)),
        # Steck 2020's dropout-emphasised variants (EDLAE with the zero diagonal, DLAE without):
        # validation picked DLAE p=0.75 on MovieLens-100K random (benchmarks/bench_training.py)
        Param("dropout", "float", 0.0, 0.8),
        Param("zero_diagonal", "categorical", choices=(True, False)),
        # popularity-normalised columns: beta 0.1 won ML-100K random validation (bench_training)
        Param("pop_beta", "float", 0.0, 0.3),
    )
    Config = EASEConfig
    config: EASEConfig

    def _fit(self, data: TrainData, *, callback: Any = None) -> None:
        c = self.config
        X = self._x(data.user_items)
        n_items = X.shape[1]
        if n_items > c.max_items:
            msg = (
                f"ease: catalogue of {n_items} items exceeds max_items={c.max_items} "
                f"(dense {n_items}×{n_items} float32 = {n_items**2 * 4 / 1e9:.1f} GB)"
            )
            if c.on_too_large == "error":
                raise ValueError(msg + "; raise max_items, or set on_too_large=top-items, or use itemknn")
            top = min(c.top_items, c.max_items)
            self.kept_ = most_popular(X, top)
            self.fallback_ = f"fitted on the {top} most popular items only"
            self.fit_warnings.append(f"{msg}; {self.fallback_}, the rest ranked below them")
            warnings.warn(self.fit_warnings[-1], stacklevel=2)
        else:
            self.kept_ = np.arange(n_items)
            self.fallback_ = ""
        Xk = X[:, self.kept_]
        w = column_weights(Xk, c.pop_beta)
        Xk = Xk @ sp.diags(w)
        B = closed_form(gram(Xk), c.lambda_, c.dropout, c.zero_diagonal, overwrite=True)
        # Scoring scales the input the same way: X·diag(w)·B, so diag(w) is folded into B's rows
        # (a row scale leaves each row's ranking, i.e. similar_items, unchanged).
        B *= w[:, None]
        self.B_ = B.astype(np.float32)

    def _x(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        X = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
        X.eliminate_zeros()
        if self.config.binary:
            X.data[:] = 1.0
        return X

    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        X = self._x(history.user_items)
        if len(self.kept_) == self.n_items:
            return np.asarray(X @ self.B_, dtype=np.float32)
        s = np.full((X.shape[0], self.n_items), -1e9, dtype=np.float32)
        s[:, self.kept_] = X[:, self.kept_] @ self.B_
        return s

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Items j with the largest weight B[i, j] (how much having i predicts j)."""
        items = np.asarray(items, dtype=np.int64)
        pos = np.searchsorted(self.kept_, items)
        s = np.full((len(items), self.n_items), -np.inf, dtype=np.float32)
        ok = (pos < len(self.kept_)) & (self.kept_[np.clip(pos, 0, len(self.kept_) - 1)] == items)
        s[np.ix_(np.flatnonzero(ok), self.kept_)] = self.B_[pos[ok]]
        s[np.arange(len(items)), items] = -np.inf
        ids, scores = topk(s, k)
        ids[~np.isfinite(scores)] = -1
        return ids, scores

    def _save_state(self, path: Path) -> None:
        np.save(path / "ease_B.npy", self.B_)
        np.save(path / "ease_kept.npy", self.kept_)
        (path / "ease.json").write_text(json.dumps({"fallback": self.fallback_}))

    def _load_state(self, path: Path) -> None:
        self.B_ = np.load(path / "ease_B.npy")
        self.kept_ = np.load(path / "ease_kept.npy")
        self.fallback_ = json.loads((path / "ease.json").read_text())["fallback"]
