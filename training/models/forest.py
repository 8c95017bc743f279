"""A fitted HistGradientBoostingClassifier's trees walked by one compiled loop, for serving.

`next-basket` asks its boosted trees for ~100 candidates per request. scikit-learn's `predict_proba`
walks each tree in its own Cython call, with a Python step and an OpenMP fork per tree: on the demo
shop that was ~1.1 ms of a ~2.8 ms request for ~220 trees, almost all of it per-tree overhead rather
than walking. `ForestWalk` copies the trees' nodes into flat arrays once and walks every tree for
every row in one Numba-compiled loop, adding the leaf values to the baseline in scikit-learn's order,
so the probabilities are the same bits as `predict_proba` (tests/test_nbr.py).

The tree walk is scikit-learn's own (`_predictor.pyx`, `_predict_one_from_raw_data`): a NaN goes the
side the split learned for missing values, otherwise `x <= threshold` goes left. Models with
categorical splits or more than one output per tree are not compiled; `ForestWalk.fast` is None for
them and they are walked by scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # numba is a dependency (pyproject.toml); without it the trees are walked by scikit-learn
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba cannot be installed
    njit = None


def _walk(
    X: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    missing_left: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    is_leaf: np.ndarray,
    value: np.ndarray,
    roots: np.ndarray,
    baseline: float,
    out: np.ndarray,
) -> None:
    """out[i] = baseline + the leaf value of every tree for row i, added in tree order."""
    for i in range(X.shape[0]):
        acc = baseline
        for t in range(roots.shape[0]):
            node = roots[t]
            while not is_leaf[node]:
                x = X[i, feature[node]]
                if np.isnan(x):
                    node = left[node] if missing_left[node] else right[node]
                elif x <= threshold[node]:
                    node = left[node]
                else:
                    node = right[node]
            acc += value[node]
        out[i] = acc


def compiled(fn: Any) -> Any:
    """`fn` compiled by numba, cached on disk beside its module where that is writable (numba's own
    fallbacks otherwise), so a server start loads it instead of compiling (~0.5 s); None without
    numba (each caller keeps a numpy or scikit-learn path)."""
    if njit is None:
        return None
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # no writable cache location: compile in each process
        return njit(nogil=True)(fn)


_walk_compiled = compiled(_walk)


class ForestWalk:
    """P(class 1) of a fitted binary HistGradientBoostingClassifier, the bits of `predict_proba`.

    Reads the first `n_features_in_` columns of X (a wider matrix is fine: features added after the
    model was fitted are ignored)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.n_features = int(model.n_features_in_)
        self.fast: tuple[Any, ...] | None = None
        if _walk_compiled is None:
            return
        try:
            predictors = model._predictors
            if any(len(p) != 1 for p in predictors):
                raise TypeError("not a binary classifier")
            nodes = [p[0].nodes for p in predictors]
            if any(n["is_categorical"].any() for n in nodes):
                raise TypeError("categorical splits")
            sizes = np.array([len(n) for n in nodes], np.int64)
            offset = np.r_[0, np.cumsum(sizes)[:-1]]
            flat = np.concatenate(nodes)
            shift = np.repeat(offset, sizes)
            leaf = flat["is_leaf"].astype(bool)
            baseline = float(np.asarray(model._baseline_prediction, np.float64).ravel()[0])
            self.fast = (
                flat["feature_idx"].astype(np.int64),
                flat["num_threshold"].astype(np.float64),
                flat["missing_go_to_left"].astype(bool),
                # a leaf's children are unused; keep them in range anyway
                np.where(leaf, 0, flat["left"].astype(np.int64) + shift),
                np.where(leaf, 0, flat["right"].astype(np.int64) + shift),
                leaf,
                flat["value"].astype(np.float64),
                offset.astype(np.int64),
                baseline,
            )
        except (AttributeError, TypeError, IndexError, ValueError, KeyError):
            self.fast = None
        if self.fast is not None:  # compile (or load from the cache) now, not in the first request
            self.raw(np.zeros((1, self.n_features)))

    def raw(self, X: np.ndarray) -> np.ndarray:
        """The summed raw score (log-odds) per row."""
        X = np.ascontiguousarray(X[:, : self.n_features], dtype=np.float64)
        if self.fast is None:
            return np.asarray(self.model._raw_predict(X), np.float64).ravel()
        out = np.empty(len(X), np.float64)
        _walk_compiled(X, *self.fast, out)
        return out

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if not len(X):
            return np.zeros(0, np.float64)
        if self.fast is None:
            return self.model.predict_proba(X[:, : self.n_features])[:, 1]
        from scipy.special import expit

        return expit(self.raw(X))
