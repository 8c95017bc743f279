"""Loading what features wrote (docs/workspace.md) into `TrainData` and evaluation `Split`s.

Training never reads raw tables: it reads the feature files by index (user_idx, item_idx) and the id
mappings, which travel with every model. A split's training part is leak-free: sequences, baskets and
last purchases come from before each customer's first held-out interaction, and its item statistics
(popularity, trend), learned re-buy rates and customer segments from its training events only. The
whole-data tables (`features/item_stats.parquet`, `category_rebuy.parquet`, the `profiles.parquet`
segments) are for the final refit and serving.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp

from features.workspace import Workspace
from training.base import TrainData

log = logging.getLogger(__name__)


@dataclass
class Split:
    """A training part and held-out targets. valid/test: user_idx, item_idx, ts (epoch s) rows."""

    train: TrainData
    valid: pd.DataFrame
    test: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    # per user index, the epoch-second timestamps matching train.sequences (empty when unknown)
    train_ts: list[np.ndarray] = field(default_factory=list)


def _read(path: Any, required: bool = True) -> pd.DataFrame:
    if path.exists():
        return pd.read_parquet(path)
    if required:
        raise FileNotFoundError(f"{path} is missing: run `shoprec features build --data DIR` first")
    return pd.DataFrame()


def coo_to_csr(frame: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """user_idx, item_idx, value rows -> CSR (n_users, n_items) float32, duplicates summed."""
    if frame.empty:
        return sp.csr_matrix((n_users, n_items), dtype=np.float32)
    M = sp.csr_matrix(
        (
            frame["value"].to_numpy(np.float32),
            (frame["user_idx"].to_numpy(np.int64), frame["item_idx"].to_numpy(np.int64)),
        ),
        shape=(n_users, n_items),
        dtype=np.float32,
    )
    M.sum_duplicates()
    M.sort_indices()
    return M


def read_matrix(path: Path, n_users: int, n_items: int) -> sp.csr_matrix:
    """A COO Parquet file (user_idx, item_idx, value) -> CSR, read column by column with Arrow (no
    pandas frame of the whole matrix: at 1M customers it holds tens of millions of pairs)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `shoprec features build --data DIR` first")
    t = pq.read_table(path, columns=["user_idx", "item_idx", "value"])
    if t.num_rows == 0:
        return sp.csr_matrix((n_users, n_items), dtype=np.float32)
    M = sp.csr_matrix(
        (
            t["value"].to_numpy().astype(np.float32, copy=False),
            (t["user_idx"].to_numpy().astype(np.int64), t["item_idx"].to_numpy().astype(np.int64)),
        ),
        shape=(n_users, n_items),
        dtype=np.float32,
    )
    del t
    M.sum_duplicates()
    M.sort_indices()
    return M


def read_sequences(path: Path, n_users: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """sequences.parquet -> (items, ts) lists indexed by user_idx, as views into two flat numpy
    arrays (Arrow's list offsets), never a pandas frame of every event (a feature build's
    sequences hold every positive event). Absent users get empty arrays."""
    empty_i, empty_t = np.empty(0, np.int64), np.empty(0, np.int64)
    items: list[np.ndarray] = [empty_i] * n_users
    ts: list[np.ndarray] = [empty_t] * n_users
    if not path.exists():
        return items, ts
    names = pq.read_schema(path).names
    t = pq.read_table(path, columns=[c for c in ("user_idx", "item_idx", "ts") if c in names])
    if t.num_rows == 0:
        return items, ts
    users = t["user_idx"].to_numpy()

    def split(column: str) -> list[np.ndarray]:
        lists = t[column].combine_chunks()
        offsets = lists.offsets.to_numpy()
        flat = lists.values.to_numpy().astype(np.int64)
        return np.split(flat, offsets[1:-1] - offsets[0]) if len(offsets) > 2 else [flat]

    for u, seq in zip(users, split("item_idx"), strict=True):
        items[int(u)] = seq
    if "ts" in t.column_names:
        for u, seq in zip(users, split("ts"), strict=True):
            ts[int(u)] = seq
    return items, ts


def sequences_by_user(frame: pd.DataFrame, n_users: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """sequences.parquet rows -> (items, ts) lists indexed by user_idx (empty arrays for absent users)."""
    items = [np.empty(0, np.int64) for _ in range(n_users)]
    ts = [np.empty(0, np.int64) for _ in range(n_users)]
    if frame.empty:
        return items, ts
    has_ts = "ts" in frame.columns
    for row in frame.itertuples(index=False):
        u = int(row.user_idx)
        items[u] = np.asarray(row.item_idx, dtype=np.int64)
        if has_ts:
            ts[u] = np.asarray(row.ts, dtype=np.int64)
    return items, ts


def last_purchases_from_sequences(
    sequences: list[np.ndarray], ts: list[np.ndarray], items: pd.DataFrame
) -> pd.DataFrame:
    """user_idx, item_idx, category, last_ts, n_purchases from per-user (items, ts) sequences: the
    re-buy policy's input restricted to a split's training part."""
    lens = np.array([len(s) for s in sequences], dtype=np.int64)
    if lens.sum() == 0:
        return pd.DataFrame(columns=["user_idx", "item_idx", "category", "last_ts", "n_purchases"])
    flat_ts = [
        t if len(t) == len(s) else np.zeros(len(s), np.int64) for s, t in zip(sequences, ts, strict=True)
    ]
    df = pd.DataFrame(
        {
            "user_idx": np.repeat(np.arange(len(sequences)), lens),
            "item_idx": np.concatenate(sequences).astype(np.int64),
            "ts": np.concatenate(flat_ts).astype(np.int64),
        }
    )
    out = df.groupby(["user_idx", "item_idx"], sort=False).agg(
        last_ts=("ts", "max"), n_purchases=("ts", "size")
    )
    out = out.reset_index()
    if "category" in items.columns:
        out = out.merge(items[["item_idx", "category"]], on="item_idx", how="left")
    else:
        out["category"] = pd.NA
    return out[["user_idx", "item_idx", "category", "last_ts", "n_purchases"]]


def _baskets(frame: pd.DataFrame, keep: np.ndarray | None = None) -> list[np.ndarray]:
    if frame.empty:
        return []
    col = frame["item_idx"]
    rows = col if keep is None else col[keep]
    return [np.asarray(b, dtype=np.int64) for b in rows]


def _users_frame(ws: Workspace) -> pd.DataFrame:
    users = _read(ws.feature("users"))
    profiles = _read(ws.feature("profiles"), required=False)
    if not profiles.empty and "segment" in profiles.columns:
        users = users.merge(profiles[["user_idx", "segment"]], on="user_idx", how="left")
    return users.sort_values("user_idx").reset_index(drop=True)


def load_train_data(ws: Workspace, split: str | None = None) -> TrainData:
    """All data (split=None) or a split's training part as TrainData."""
    if split is not None:
        return load_split(ws, split).train
    users = _users_frame(ws)
    items = _read(ws.feature("items")).sort_values("item_idx").reset_index(drop=True)
    n_users, n_items = len(users), len(items)
    X = read_matrix(ws.feature("interactions"), n_users, n_items)
    seqs, ts = read_sequences(ws.feature("sequences"), n_users)
    return TrainData(
        user_items=X,
        users=users,
        items=items,
        sequences=seqs,
        sequence_ts=ts,
        baskets=_baskets(_read(ws.feature("baskets"), required=False)),
        item_stats=_read(ws.feature("item_stats"), required=False),
        category_rebuy=_read(ws.feature("category_rebuy"), required=False),
        last_purchases=_read(ws.feature("last_purchases"), required=False),
        customer_rebuy=_read(ws.feature("customer_rebuy"), required=False),
    )


def load_split(ws: Workspace, split: str) -> Split:
    """A split under features/splits/<split>/ (loo, time, random) with a leak-free training part."""
    d = ws.split_dir(split)
    if not d.exists():
        raise FileNotFoundError(f"split {split!r} not found at {d}: run `shoprec features build` first")
    users = _split_users_frame(ws, d)
    items = _read(ws.feature("items")).sort_values("item_idx").reset_index(drop=True)
    n_users, n_items = len(users), len(items)
    X = read_matrix(d / "train.parquet", n_users, n_items)
    seqs, ts = read_sequences(d / "train_sequences.parquet", n_users)
    valid, test = _read(d / "valid.parquet"), _read(d / "test.parquet")
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    baskets = _read(ws.feature("baskets"), required=False)
    keep = None
    if not baskets.empty:
        temporal = meta.get("kind", split) in ("loo", "time")
        keep = _baskets_before_heldout(baskets, pd.concat([valid, test], ignore_index=True), temporal)
    train = TrainData(
        user_items=X,
        users=users,
        items=items,
        sequences=seqs,
        sequence_ts=ts,
        baskets=_baskets(baskets, keep),
        item_stats=_split_stats(ws, d, "item_stats"),
        category_rebuy=_split_stats(ws, d, "category_rebuy"),
        last_purchases=_split_last_purchases(d, seqs, ts, items),
        customer_rebuy=_read(d / "customer_rebuy.parquet", required=False),
    )
    return Split(train=train, valid=valid, test=test, meta=meta, train_ts=ts)


def _split_users_frame(ws: Workspace, d: Path) -> pd.DataFrame:
    """users.parquet with each customer's lifecycle segment as of the split's cut-off (the split's
    segments.parquet, from its training part; customers without a training event have none). The
    whole-data profiles' segment has seen the held-out period (a first purchase there is not "new",
    test-period spending makes a VIP); splits built before segments.parquet existed fall back to it
    with a warning."""
    path = d / "segments.parquet"
    if not path.exists():
        if ws.feature("profiles").exists():
            log.warning(
                "%s has no segments.parquet (built by an older `features build`): using the whole-data "
                "segments, which have seen the held-out period; rebuild the features for leak-free evaluation",
                d,
            )
        return _users_frame(ws)
    users = _read(ws.feature("users"))
    segments = pd.read_parquet(path, columns=["user_idx", "segment"])
    users = users.merge(segments, on="user_idx", how="left")
    return users.sort_values("user_idx").reset_index(drop=True)


def _split_stats(ws: Workspace, d: Path, name: str) -> pd.DataFrame:
    """The split's own `item_stats` / `category_rebuy`, learned from its training part only. The
    whole-data tables under features/ have seen the held-out period (an item trending, a category
    re-bought only there); splits built before the per-split tables existed fall back to them with
    a warning, because their evaluation numbers are then optimistic."""
    path = d / f"{name}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    whole = ws.feature(name)
    if whole.exists():
        log.warning(
            "%s has no %s.parquet (built by an older `features build`): using the whole-data table, "
            "which has seen the held-out period; rebuild the features for leak-free evaluation",
            d,
            name,
        )
    return _read(whole, required=False)


def _split_last_purchases(
    d: Path, seqs: list[np.ndarray], ts: list[np.ndarray], items: pd.DataFrame
) -> pd.DataFrame:
    """The split's last purchases over target events of its training part (written by the feature
    build); splits built before that file existed fall back to every training event."""
    path = d / "train_last_purchases.parquet"
    if path.exists():
        return pd.read_parquet(path)
    return last_purchases_from_sequences(seqs, ts, items)


def _baskets_before_heldout(baskets: pd.DataFrame, heldout: pd.DataFrame, temporal: bool) -> np.ndarray:
    """Mask of baskets that leak nothing. Temporal splits (loo, time): strictly before the customer's
    first held-out interaction. Random split: holding no held-out (customer, item) pair (time says
    nothing there; a re-bought staple in an earlier basket is the same interaction again)."""
    keep = np.ones(len(baskets), dtype=bool)
    if heldout.empty:
        return keep
    if temporal:
        first = heldout.groupby("user_idx")["ts"].min()
        cut = baskets["user_idx"].map(first).to_numpy(np.float64)
        keep &= ~(baskets["ts"].to_numpy(np.float64) >= cut)  # NaN cut (no held-out) keeps the basket
        return keep
    ex = baskets[["user_idx", "item_idx"]].assign(b=np.arange(len(baskets))).explode("item_idx")
    ex["item_idx"] = ex["item_idx"].astype(np.int64)
    pairs = heldout[["user_idx", "item_idx"]].drop_duplicates().astype(np.int64)
    hit = ex.merge(pairs, on=["user_idx", "item_idx"])["b"].unique()
    keep[hit.astype(np.int64)] = False
    return keep
