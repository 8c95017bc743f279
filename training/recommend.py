"""`shoprec recommend`: batch recommendations for a list of customers (the e-mail renderer's feed).

Reads only the serving bundle (champion by default), like serving does, so the feed agrees with
`/recommend_batch` for the same users. Output: one row per (user, rank) with columns
user_id, rank (1-based), item_id, score, reason.

- Known customers with consent get the model's top-k, their past items excluded by
  `--exclude-seen` (`learned`: the learned re-buy policy; `always`; `never`).
- Unknown customers, and customers without `consent_personalisation`, get the popular items
  (the non-personal answer); a personal list shorter than k is topped up with popular items.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from features.workspace import Workspace
    from training.base import Recommender

log = logging.getLogger(__name__)

EXCLUDE_SEEN = ("learned", "always", "never")
REASON_PERSONAL = "based on your shopping history"
REASON_POPULAR = "popular right now"
OUTPUT_COLUMNS = ("user_id", "rank", "item_id", "score", "reason")


@dataclass
class BundleContext:
    """What batch recommendation needs from a bundle, loaded once."""

    model: Recommender
    user_items: sp.csr_matrix  # (n_users, n_items) full history, rows = model.users' user_idx
    sequences: list[np.ndarray]  # per user_idx, item indices in time order ([] when absent)
    item_ids: np.ndarray  # (n_items,) str, by item_idx
    popular: np.ndarray  # item indices, most popular first
    popularity: np.ndarray  # (n_items,) float, the popular fallback's score
    no_consent: set[int]  # user_idx without consent for personalisation
    category_rebuy: pd.DataFrame
    last_purchases: pd.DataFrame  # user_idx, item_idx, category, last_ts (the re-buy rule's input)
    items: pd.DataFrame

    @classmethod
    def load(cls, bundle: str | Path) -> BundleContext:
        from training.base import Recommender

        bundle = Path(bundle)
        ctx = bundle / "context"
        model = Recommender.load(bundle / "model")
        user_items = sp.load_npz(ctx / "user_items.npz").tocsr().astype(np.float32)
        items = pd.read_parquet(ctx / "items.parquet") if (ctx / "items.parquet").exists() else model.items
        items = items.sort_values("item_idx")
        item_ids = np.empty(model.n_items, dtype=object)
        item_ids[items["item_idx"].to_numpy(dtype=np.int64)] = items["item_id"].astype(str).to_numpy()
        if "popularity" in items.columns and items["popularity"].notna().any():
            popularity = np.zeros(model.n_items)
            popularity[items["item_idx"].to_numpy(dtype=np.int64)] = (
                items["popularity"].fillna(0).to_numpy(float)
            )
        else:  # no learned statistics: users per item
            popularity = np.asarray((user_items > 0).sum(axis=0), dtype=float).ravel()
        popular = np.argsort(-popularity, kind="stable")
        sequences: list[np.ndarray] = []
        if (ctx / "sequences.parquet").exists():
            seq = pd.read_parquet(ctx / "sequences.parquet")
            sequences = [np.zeros(0, dtype=np.int32)] * user_items.shape[0]
            for u, s in zip(seq["user_idx"].to_numpy(), seq["item_idx"], strict=True):
                if 0 <= u < len(sequences):
                    sequences[u] = np.asarray(s, dtype=np.int32)
        no_consent: set[int] = set()
        if (ctx / "profiles.parquet").exists():
            prof = pd.read_parquet(ctx / "profiles.parquet")
            if "consent_personalisation" in prof.columns:
                # null = not recorded -> treated as given (docs/workspace.md)
                refused = prof["consent_personalisation"].astype("boolean").eq(False).fillna(False)
                no_consent = set(prof.loc[refused, "user_idx"].astype(int))
        rebuy = (
            pd.read_parquet(ctx / "category_rebuy.parquet")
            if (ctx / "category_rebuy.parquet").exists()
            else pd.DataFrame()
        )
        lp_path = ctx / "last_purchases.parquet"
        last = pd.read_parquet(lp_path) if lp_path.exists() else pd.DataFrame()
        return cls(
            model, user_items, sequences, item_ids, popular, popularity, no_consent, rebuy, last, items
        )


def exclusions(
    ctx: BundleContext, users: np.ndarray, mode: str, now: float | None = None
) -> sp.csr_matrix | None:
    """Items each user must not get back: (len(users), n_items) CSR, nonzero = excluded.

    never: nothing; always: everything the user interacted with; learned: bought items stay out
    for their category's learned re-buy window (`training.policy.RebuyPolicy`, the rule evaluation
    and serving use); `now` is epoch seconds (default: the current time, as serving does)."""
    if mode not in EXCLUDE_SEEN:
        raise ValueError(f"exclude_seen must be one of {EXCLUDE_SEEN}, got {mode!r}")
    if mode == "never":
        return None
    if mode == "always":
        seen = sp.csr_matrix(ctx.user_items[users], copy=True)
        seen.data[:] = 1.0
        return seen
    from training.policy import RebuyPolicy

    policy = RebuyPolicy.from_frame(ctx.category_rebuy)
    return policy.exclusions(
        users, ctx.last_purchases, time.time() if now is None else now, ctx.user_items.shape[1]
    )


def recommend_users(
    ctx: BundleContext,
    user_ids: list[str],
    k: int,
    *,
    exclude_seen: str = "learned",
    now: float | None = None,
    batch_size: int = 1024,
    progress: bool = True,
) -> pd.DataFrame:
    """Top-k for each user id (order kept): a frame with OUTPUT_COLUMNS, k rows per user whenever
    k items exist. Customer ids are never logged."""
    from tqdm.auto import tqdm

    from training.base import History

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    index = dict(
        zip(ctx.model.users["user_id"].astype(str), ctx.model.users["user_idx"].astype(int), strict=True)
    )
    idx = np.array([index.get(str(u), -1) for u in user_ids], dtype=np.int64)
    personal = (idx >= 0) & (idx < ctx.user_items.shape[0]) & ~np.isin(idx, list(ctx.no_consent))
    n_unknown = int((idx < 0).sum())
    log.info(
        "recommend: %d users (%d personal, %d unknown -> popular, %d without consent -> popular)",
        len(user_ids),
        int(personal.sum()),
        n_unknown,
        int(len(user_ids) - personal.sum() - n_unknown),
    )

    out_ids = np.full((len(user_ids), k), -1, dtype=np.int64)
    out_scores = np.full((len(user_ids), k), np.nan, dtype=np.float64)
    out_personal = np.zeros((len(user_ids), k), dtype=bool)
    rows = np.flatnonzero(personal)
    bar = tqdm(total=len(rows), desc="recommending", unit="user", disable=not progress or len(rows) == 0)
    for start in range(0, len(rows), batch_size):
        r = rows[start : start + batch_size]
        u = idx[r]
        history = History(ctx.user_items[u], [ctx.sequences[i] for i in u] if ctx.sequences else [])
        exclude = exclusions(ctx, u, exclude_seen, now)
        ids, scores = ctx.model.recommend(u, history, k, exclude=exclude)
        out_ids[r] = ids
        out_scores[r] = scores
        out_personal[r] = ids >= 0
        bar.update(len(r))
    bar.close()

    # Fill unknown / non-consenting users and short personal lists with popular items.
    frames = []
    for i, user in enumerate(user_ids):
        ids = out_ids[i]
        have = ids[ids >= 0]
        if have.size < k:
            banned = set(have.tolist())
            if personal[i] and exclude_seen != "never":
                ex = exclusions(ctx, idx[i : i + 1], exclude_seen, now)
                if ex is not None:
                    banned |= set(ex.indices.tolist())
            fill = [j for j in ctx.popular[: k + len(banned)] if j not in banned][: k - have.size]
            n0 = have.size
            ids[n0 : n0 + len(fill)] = fill
            out_scores[i, n0 : n0 + len(fill)] = ctx.popularity[fill]
        valid = ids >= 0
        frames.append(
            pd.DataFrame(
                {
                    "user_id": str(user),
                    "rank": np.arange(1, int(valid.sum()) + 1),
                    "item_id": ctx.item_ids[ids[valid]],
                    "score": out_scores[i, valid],
                    "reason": np.where(out_personal[i, valid], REASON_PERSONAL, REASON_POPULAR),
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: [] for c in OUTPUT_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    out["item_id"] = out["item_id"].astype(str)
    return out[list(OUTPUT_COLUMNS)]


def read_users(path: str | Path) -> list[str]:
    """User ids from a CSV/Parquet file (column `user_id`, or its only column) or a text file
    with one id per line. Duplicates are dropped, order kept."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"users file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        lines = [line.strip() for line in path.read_text().splitlines()]
        frame = pd.DataFrame({"user_id": [s for s in lines if s]})
    if "user_id" not in frame.columns:
        if frame.shape[1] != 1:
            raise ValueError(
                f"{path}: expected a `user_id` column (or a single column), got {list(frame.columns)}"
            )
        frame.columns = ["user_id"]
    ids = frame["user_id"].dropna().astype(str)
    return list(dict.fromkeys(ids[ids != ""]))


def write_output(frame: pd.DataFrame, path: str | Path) -> Path:
    """CSV or Parquet by the file's extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out must end in .csv or .parquet, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def recommend(
    ws: Workspace | None,
    users_file: str | Path,
    k: int,
    out: str | Path,
    *,
    model_uri: str | None = None,
    exclude_seen: str = "learned",
) -> dict[str, object]:
    """Load the bundle behind `model_uri` (default the champion), recommend for every user in
    `users_file`, write `out`; returns a summary for the CLI's JSON line."""
    from training.tracking import DEFAULT_MODEL_URI, load_bundle_dir

    uri = model_uri or DEFAULT_MODEL_URI
    bundle = load_bundle_dir(uri, ws)
    ctx = BundleContext.load(bundle)
    user_ids = read_users(users_file)
    frame = recommend_users(ctx, user_ids, k, exclude_seen=exclude_seen)
    path = write_output(frame, out)
    return {
        "out": str(path),
        "model_uri": uri,
        "model": ctx.model.name,
        "users": len(user_ids),
        "rows": len(frame),
        "popular_users": int(frame.groupby("user_id")["reason"].first().eq(REASON_POPULAR).sum())
        if len(frame)
        else 0,
    }
