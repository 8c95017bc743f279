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
from collections.abc import Iterable, Iterator
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

    def frames(
        self, user_ids: list[str], k: int, context: Context, *, progress: bool = True
    ) -> Iterator[pd.DataFrame]:
        """Blocks for `user_ids` (order kept), one frame with OUTPUT_COLUMNS per CHUNK customers:
        a feed for a million customers never holds more than one chunk's rows."""
        from tqdm.auto import tqdm

        with tqdm(total=len(user_ids), desc="recommending", unit="customer", disable=not progress) as bar:
            for start in range(0, len(user_ids), CHUNK):
                chunk = user_ids[start : start + CHUNK]
                cols: dict[str, list[Any]] = {c: [] for c in OUTPUT_COLUMNS}
                for a in self.router.batch(chunk, k, context, endpoint="feed"):
                    n = len(a.items)
                    cols["user_id"] += [a.user_id] * n
                    cols["rank"] += range(1, n + 1)
                    cols["item_id"] += [r.item_id for r in a.items]
                    cols["score"] += [r.score for r in a.items]
                    cols["reason"] += [r.reason for r in a.items]
                    cols["variant"] += [a.variant] * n
                    cols["model_version"] += [a.model_version] * n
                    cols["recommendation_id"] += [a.recommendation_id] * n
                bar.update(len(chunk))
                yield pd.DataFrame(cols, columns=list(OUTPUT_COLUMNS))

    def run(self, user_ids: list[str], k: int, context: Context, *, progress: bool = True) -> pd.DataFrame:
        """Blocks for `user_ids` (order kept): one frame with OUTPUT_COLUMNS."""
        parts = list(self.frames(user_ids, k, context, progress=progress))
        if not parts:
            return pd.DataFrame({c: [] for c in OUTPUT_COLUMNS}, columns=list(OUTPUT_COLUMNS))
        return pd.concat(parts, ignore_index=True)

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


def _check_out(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"--out must end in .csv or .parquet, got {path.name!r}")
    return path


def write_output(frame: pd.DataFrame, path: str | Path) -> Path:
    """CSV or Parquet by the file's extension."""
    return write_frames([frame], path)


def write_frames(frames: Iterable[pd.DataFrame], path: str | Path) -> Path:
    """Frames of one schema written one after another to a CSV or Parquet file (by its extension),
    so that nothing holds the whole output. The file appears only when complete (written beside
    it, then renamed): a stopped run never leaves half a feed where a mailer would read it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _check_out(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    writer: pq.ParquetWriter | None = None
    header = True
    try:
        for frame in frames:
            if path.suffix.lower() == ".csv":
                frame.to_csv(part, index=False, header=header, mode="w" if header else "a")
                header = False
                continue
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(part, table.schema)
            writer.write_table(table.cast(writer.schema))
        if header and path.suffix.lower() == ".csv":  # no frame at all
            pd.DataFrame(columns=list(OUTPUT_COLUMNS)).to_csv(part, index=False)
        if writer is None and path.suffix.lower() == ".parquet":
            pd.DataFrame(columns=list(OUTPUT_COLUMNS)).to_parquet(part, index=False)
    finally:
        if writer is not None:
            writer.close()
    part.replace(path)
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
    _check_out(out)
    context = feed_context(exclude_seen)
    user_ids = read_users(users_file)
    feed = Feed(ws, model_uri=model_uri)
    rows = 0
    variants: dict[str, int] = {}
    popular = 0

    def counted(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        nonlocal rows, popular
        for frame in frames:
            rows += len(frame)
            firsts = frame[frame["rank"] == 1]
            for v, n in firsts["variant"].value_counts().items():
                variants[str(v)] = variants.get(str(v), 0) + int(n)
            popular += int(firsts["reason"].str.startswith("popular in").sum())
            yield frame

    try:
        path = write_frames(counted(feed.frames(user_ids, k, context, progress=progress)), out)
        models = feed.holder.models
    finally:
        feed.close()
    return {
        "out": str(path),
        "model_uri": model_uri or "models:/shoprec@champion",
        "model": models.champion.model.name,
        "model_version": models.champion_version,
        "users": len(user_ids),
        "rows": rows,
        "variants": variants,
        "popular_users": popular,
    }
