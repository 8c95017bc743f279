"""`shoprec recommend`: the e-mail feed, through the same engine, rules and variants as the service.

The feed is not a second engine: it loads the champion (and the challenger, by the same
SHOPREC_AB_SHARES the service reads) over the workspace's live shop state, replays what the
service was told since the last feature build (serving/sync.py: a purchase made an hour ago is not
mailed back), and answers through `serving.router.Router`, as `/recommend_batch` does. Every row
carries the block's reason, `variant`, `model_version` and `recommendation_id`, and every block is
written to the workspace's impression log, so clicks on e-mails are attributed like clicks on the
site.

Output: one row per (customer, rank): user_id, rank (1-based), item_id, score, reason, variant,
model_version, recommendation_id.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from features.workspace import Workspace
    from serving.pipeline import Context

log = logging.getLogger(__name__)

EXCLUDE_SEEN = ("learned", "always", "never")
OUTPUT_COLUMNS = (
    "user_id",
    "rank",
    "item_id",
    "score",
    "reason",
    "variant",
    "model_version",
    "recommendation_id",
)
CHUNK = 1024  # customers per router batch (the engine scores 256 at once inside it)


class Feed:
    """The service's engines over a workspace's shop state, outside a server."""

    def __init__(
        self, ws: Workspace, *, model_uri: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        from serving.ab import ImpressionLog
        from serving.loader import (
            LocalBundleSource,
            ModelHolder,
            ServeConfig,
            default_engine_factory,
            make_source,
        )
        from serving.router import Router
        from serving.state import ShopState
        from serving.store import make_store
        from serving.sync import StateSync

        env = dict(os.environ if env is None else env)
        env["SHOPREC_DATA"] = str(ws.root)
        env["SHOPREC_POLL_SECONDS"] = "0"
        config = ServeConfig.from_env(env)
        self.ws = ws
        self.store = make_store(config.redis_url, prefix=config.redis_prefix)
        self.state = ShopState.from_workspace(ws)
        from features.privacy import ForgetList

        self.state.watch_erasures(ForgetList(ws).__contains__)
        self.sync = StateSync(
            self.state, self.store, ws, redis_url=config.redis_url, prefix=config.redis_prefix
        )
        shares = dict(config.shares)
        if model_uri is not None:
            from training.tracking import load_bundle_dir

            source: Any = LocalBundleSource(Path(load_bundle_dir(model_uri, ws)))
            shares = {"champion": 1.0}  # one named model: no experiment
        else:
            source = make_source(config)
        self.holder = ModelHolder(source, default_engine_factory(self.state, self.store), poll_seconds=0)
        self.holder.load()
        self.impressions = ImpressionLog(ws.serving_dir / "impressions.jsonl", salt=config.ab_salt)
        self.router = Router(lambda: self.holder.models, shares, config.ab_salt, self.impressions)

    def run(self, user_ids: list[str], k: int, context: Context, *, progress: bool = True) -> pd.DataFrame:
        """Blocks for `user_ids` (order kept): a frame with OUTPUT_COLUMNS."""
        from tqdm.auto import tqdm

        cols: dict[str, list[Any]] = {c: [] for c in OUTPUT_COLUMNS}
        with tqdm(total=len(user_ids), desc="recommending", unit="customer", disable=not progress) as bar:
            for start in range(0, len(user_ids), CHUNK):
                chunk = user_ids[start : start + CHUNK]
                for a in self.router.batch(chunk, k, context, endpoint="feed"):
                    for rank, r in enumerate(a.items, 1):
                        cols["user_id"].append(a.user_id)
                        cols["rank"].append(rank)
                        cols["item_id"].append(r.item_id)
                        cols["score"].append(r.score)
                        cols["reason"].append(r.reason)
                        cols["variant"].append(a.variant)
                        cols["model_version"].append(a.model_version)
                        cols["recommendation_id"].append(a.recommendation_id)
                bar.update(len(chunk))
        return pd.DataFrame(cols, columns=list(OUTPUT_COLUMNS))

    def close(self) -> None:
        self.sync.stop()
        self.holder.stop()
        self.impressions.close()


def feed_context(exclude_seen: str = "learned", **fields: Any) -> Context:
    """The e-mail channel's context; `exclude_seen` (learned | always | never) says which of a
    customer's past items may come back (learned: the re-buy policy the site uses)."""
    from serving.pipeline import Context

    if exclude_seen not in EXCLUDE_SEEN:
        raise ValueError(f"exclude_seen must be one of {', '.join(EXCLUDE_SEEN)}, got {exclude_seen!r}")
    return dataclasses.replace(Context(channel="email"), exclude_seen=exclude_seen, **fields)


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
    ws: Workspace,
    users_file: str | Path,
    k: int,
    out: str | Path,
    *,
    model_uri: str | None = None,
    exclude_seen: str = "learned",
    progress: bool = True,
) -> dict[str, object]:
    """The feed for every customer in `users_file`, written to `out`; a summary for the JSON line."""
    if Path(str(out)).suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"--out must end in .csv or .parquet, got {Path(out).name!r}")
    context = feed_context(exclude_seen)
    user_ids = read_users(users_file)
    feed = Feed(ws, model_uri=model_uri)
    try:
        frame = feed.run(user_ids, k, context, progress=progress)
        models = feed.holder.models
    finally:
        feed.close()
    path = write_output(frame, out)
    firsts = frame.drop_duplicates("user_id")
    return {
        "out": str(path),
        "model_uri": model_uri or "models:/shoprec@champion",
        "model": models.champion.model.name,
        "model_version": models.champion_version,
        "users": len(user_ids),
        "rows": len(frame),
        "variants": firsts["variant"].value_counts().to_dict(),
        "popular_users": int(firsts["reason"].str.startswith("popular in").sum()),
    }
