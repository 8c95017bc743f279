"""Read a serving bundle (docs/workspace.md "The serving bundle") into memory.

A bundle is what one registered model version carries: the model, a bought-together model and the
context tables serving needs at request time (items, stock, profiles, sizes, last purchases, the
learned re-buy statistics, the interaction matrix and sequences). Serving never reads the
workspace; everything comes from here. Optional parts that are absent load as empty frames, so a
shop without a stock table or customer table still serves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from training.base import Recommender


@dataclass
class Bundle:
    """A loaded serving bundle.

    items:          one row per item index (`item_idx` 0..n_items-1 in order), catalogue columns.
    user_items:     CSR (n_users, n_items) interaction confidence; row = features' `user_idx`.
    sequences:      per features `user_idx`, item indices in time order (may be empty).
    profiles:       user_idx, user_id, segment, gender_affinity, consent_personalisation, ...
    """

    path: Path
    meta: dict[str, Any]
    model: Recommender
    complements: Recommender | None
    items: pd.DataFrame
    stock: pd.DataFrame
    profiles: pd.DataFrame
    sizes: pd.DataFrame
    last_purchases: pd.DataFrame
    category_rebuy: pd.DataFrame
    user_items: sp.csr_matrix
    sequences: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.items)


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    if path.exists():
        return pd.read_parquet(path)
    return pd.DataFrame({c: [] for c in (columns or [])})


def load_bundle(path: str | Path) -> Bundle:
    """Load the bundle directory at `path`. Raises FileNotFoundError / ValueError with what is missing
    or inconsistent (a bundle whose model and items disagree must not serve)."""
    path = Path(path)
    if not (path / "model" / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a serving bundle: no model/config.json")
    meta_path = path / "bundle.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    model = Recommender.load(path / "model")
    complements = None
    if (path / "complements" / "config.json").exists():
        complements = Recommender.load(path / "complements")

    ctx = path / "context"
    items = _read(ctx / "items.parquet")
    if items.empty:
        items = model.items.copy()  # an older bundle without context: the model's own mapping
    if "item_idx" not in items.columns or "item_id" not in items.columns:
        raise ValueError(f"{ctx / 'items.parquet'} needs item_idx and item_id columns")
    items = items.sort_values("item_idx").reset_index(drop=True)
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(len(items))):
        raise ValueError(f"{ctx / 'items.parquet'}: item_idx must be 0..n-1 without gaps")
    items["item_id"] = items["item_id"].astype(str)

    profiles = _read(ctx / "profiles.parquet", ["user_idx", "user_id"])
    if not profiles.empty:
        profiles["user_id"] = profiles["user_id"].astype(str)
    npz = ctx / "user_items.npz"
    if npz.exists():
        user_items = sp.load_npz(npz).tocsr().astype(np.float32)
    else:
        n_users = int(profiles["user_idx"].max()) + 1 if len(profiles) else 0
        user_items = sp.csr_matrix((n_users, len(items)), dtype=np.float32)
    if user_items.shape[1] != len(items):
        raise ValueError(
            f"user_items.npz has {user_items.shape[1]} item columns but items.parquet has {len(items)} rows"
        )

    sequences: dict[int, np.ndarray] = {}
    seq = _read(ctx / "sequences.parquet")
    if not seq.empty:
        for u, its in zip(seq["user_idx"].to_numpy(), seq["item_idx"], strict=True):
            sequences[int(u)] = np.asarray(its, dtype=np.int64)

    return Bundle(
        path=path,
        meta=meta,
        model=model,
        complements=complements,
        items=items,
        stock=_read(ctx / "stock.parquet", ["item_id", "size", "quantity"]),
        profiles=profiles,
        sizes=_read(ctx / "sizes.parquet", ["user_idx", "garment", "size"]),
        last_purchases=_read(ctx / "last_purchases.parquet", ["user_idx", "item_idx", "category", "last_ts"]),
        category_rebuy=_read(
            ctx / "category_rebuy.parquet", ["category", "rebuy_rate", "median_interval_days", "rebuyable"]
        ),
        user_items=user_items,
        sequences=sequences,
    )
