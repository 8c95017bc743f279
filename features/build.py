"""`shoprec features build`: validated tables -> every feature table of docs/workspace.md.

`build_features(ws, config)` validates the raw tables (features.validate: bad rows to quarantine), then
`build_from_validated(ws, config)` runs the feature definitions of features.transforms and
features.split over the validated Parquet files on an engine (features.engines: DuckDB by default,
or Spark) and writes Parquet under `DIR/features/`. pandas/numpy are not needed on the hot path:
DuckDB streams the Parquet files, keeps only integer-indexed working tables in memory and spills to
disk past `config.memory_limit`; Spark keeps its working tables cached on the executors.

The build writes into `features.partial/` and swaps it in at the end, so a failed build never leaves
a half-written `features/` beside a summary that describes another build.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from features.config import FeatureConfig
from features.engines import Engine, open_engine
from features.errors import BuildError
from features.split import write_split
from features.transforms import (
    DAY_S,
    baskets_sql,
    category_rebuy_sql,
    customer_rebuy_sql,
    cycle_days,
    has_money_sql,
    interactions_sql,
    item_stats_sql,
    last_purchases_sql,
    pairs_sql,
    profiles_sql,
    sequences_sql,
    sizes_sql,
    sql_str,
    typical_gap_sql,
    weight_case,
)
from features.workspace import SPLITS, Workspace

__all__ = ["BuildError", "FeatureConfig", "build_features", "build_from_validated"]

CATALOG_COLUMNS: tuple[str, ...] = ("title", "category", "brand", "price", "gender", "created_at")
_CATALOG_TYPES = {
    "title": "VARCHAR",
    "category": "VARCHAR",
    "brand": "VARCHAR",
    "price": "DOUBLE",
    "gender": "VARCHAR",
    "created_at": "TIMESTAMPTZ",
}


def build_features(
    ws: Workspace,
    config: FeatureConfig,
    *,
    now: datetime | None = None,
    engine: str = "duckdb",
    master: str | None = None,
    spark_conf: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Validate every raw table, build every feature table, write and return the summary.

    `engine` is "duckdb" (embedded, the default) or "spark" (`master`: a Spark master URL, default
    $SPARK_MASTER or local[2]; `spark_conf`: extra Spark settings); both run the same definitions
    and write the same tables (features.engines).

    Returns {"events": {"input_rows", "accepted", "quarantined"}, <other tables>: {...},
    "changes_folded": {table: change-log position folded in}, "features": {counts...,
    "timings": {step: seconds}}}; the same dict is written to
    DIR/features/summary.json. Raises BuildError when a table is unusable (from validation) or when
    no event survives validation.
    """
    try:
        from features.validate import validate_workspace
    except ModuleNotFoundError as e:  # pragma: no cover - only while the validation module is missing
        raise BuildError(f"validation is not available ({e}); features.validate must be installed") from None
    from features.changelog import positions

    start = time.perf_counter()
    # The change log's ends now: rows appended while the build runs are left to the next build
    # (and to the service, which replays the log from these positions).
    folded = positions(ws)
    spill = ws.root / ".duckdb_spill"
    try:
        with open_engine(engine, config, spill_dir=spill, master=master, spark_conf=spark_conf) as eng:
            counts = validate_workspace(ws, now=now or datetime.now(UTC), changes=folded, engine=eng)
            validate_s = time.perf_counter() - start
            features = build_from_validated(ws, config, engine=eng)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    features["engine"] = engine
    features["timings"] = {"validate": round(validate_s, 3), **features["timings"]}
    features["timings"]["total"] = round(time.perf_counter() - start, 3)
    summary = {**counts, "changes_folded": folded, "features": features}
    (ws.features_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def build_from_validated(
    ws: Workspace, config: FeatureConfig, *, engine: Engine | None = None
) -> dict[str, Any]:
    """Build every feature table from DIR/validated/*.parquet (events required; catalog and customers
    optional) into DIR/features/ on `engine` (default: an embedded DuckDB engine of its own).
    Returns the "features" part of the summary: counts and timings."""
    if engine is None:
        spill = ws.root / ".duckdb_spill"
        try:
            with open_engine("duckdb", config, spill_dir=spill) as own:
                return build_from_validated(ws, config, engine=own)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
    eng = engine
    events_path = ws.validated("events")
    if not events_path.exists():
        raise BuildError(f"{events_path} not found: validation must run before the feature build")
    catalog_path = ws.validated("catalog") if ws.validated("catalog").exists() else None
    customers_path = ws.validated("customers") if ws.validated("customers").exists() else None

    out = ws.root / "features.partial"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    timings: dict[str, float] = {}
    info: dict[str, Any] = {}

    def copy(sql: str, name: str) -> int:
        return eng.write(sql, out / f"{name}.parquet")

    def load() -> None:
        info.update(_load(eng, config, events_path, catalog_path, customers_path))

    def ids() -> None:
        cols = ["item_idx", "item_id"] + (info["catalog_columns"] if catalog_path else [])
        info["users"] = copy("SELECT user_idx, user_id FROM users ORDER BY user_idx", "users")
        info["items"] = copy(f"SELECT {', '.join(cols)} FROM items ORDER BY item_idx", "items")

    def interactions() -> None:
        # One aggregation per (user, item) feeds both the matrix and the item statistics.
        window = max(DAY_S, int(config.trend_window_share * (info["ref_ts"] - info["min_ts"])))
        info["trend_window_days"] = round(window / DAY_S, 3)
        pairs = pairs_sql("ev", ref_ts=info["ref_ts"], half_life_days=config.half_life_days, window_s=window)
        eng.table("pairs_all", pairs)
        info["nnz"] = copy(interactions_sql("pairs_all"), "interactions")
        meta = {
            "shape": [info["users"], info["items"]],
            "nnz": info["nnz"],
            "weights": config.weight_map,
            "half_life_days": config.half_life_days,
            "reference_ts": info["ref_ts"],
            "reference_time": _iso(info["ref_ts"]),
            "target_event_types": info["target_event_types"],
        }
        (out / "interactions.json").write_text(json.dumps(meta, indent=2))

    def sequences() -> None:
        # Kept as a table: each split's training sequences are cut from it.
        eng.table_by_user("seq_all", sequences_sql, "ev", info["events"])
        info["sequences"] = copy("SELECT * FROM seq_all ORDER BY user_idx", "sequences")

    def baskets() -> None:
        eng.table("baskets", baskets_sql())
        info["baskets"] = copy("SELECT * FROM baskets", "baskets")

    def profiles() -> None:
        gap = eng.scalar(typical_gap_sql())
        # The purchase cycle scales the lifecycle rules (features.transforms.cycle_days).
        cycle = cycle_days(gap, info["min_ts"], info["ref_ts"])
        info["cycle_days"] = round(cycle, 3)
        has_money = bool(eng.scalar(has_money_sql()))
        sql = profiles_sql(
            ref_ts=info["ref_ts"],
            cycle_days=cycle,
            has_money=has_money,
            gender_share=config.gender_affinity_share,
            gender_min_events=config.gender_min_events,
            has_customers=customers_path is not None,
        )
        info["profiles"] = copy(sql, "profiles")
        eng.source("profiles_out", out / "profiles.parquet")
        rows = eng.rows("SELECT segment, count(*) FROM profiles_out GROUP BY segment ORDER BY segment")
        eng.drop("profiles_out")
        info["segments"] = {s: int(n) for s, n in rows}

    def sizes() -> None:
        info["sizes"] = copy(sizes_sql(), "sizes")

    def last_purchases() -> None:
        info["last_purchases"] = copy(last_purchases_sql(), "last_purchases")

    def item_stats() -> None:
        copy(item_stats_sql(pairs="pairs_all"), "item_stats")
        eng.drop("pairs_all")

    def category_rebuy() -> None:
        sql = category_rebuy_sql(
            min_rate=config.rebuy_min_rate, min_repeat_buyers=config.rebuy_min_repeat_buyers
        )
        info["categories"] = copy(sql, "category_rebuy")
        eng.source("category_rebuy_out", out / "category_rebuy.parquet")
        info["rebuyable_categories"] = int(
            eng.scalar("SELECT count(*) FROM category_rebuy_out WHERE rebuyable")
        )
        eng.drop("category_rebuy_out")
        copy(customer_rebuy_sql(), "customer_rebuy")

    def split(name: str) -> Callable[[], None]:
        def run() -> None:
            meta = write_split(
                eng,
                name,
                out / "splits" / name,
                config,
                target_types=info["target_event_types"],
                shape=(info["users"], info["items"]),
            )
            info.setdefault("splits", {})[name] = meta["counts"]

        return run

    steps: list[tuple[str, Callable[[], None]]] = [
        ("load events", load),
        ("id maps", ids),
        ("interactions", interactions),
        ("sequences", sequences),
        ("baskets", baskets),
        ("profiles", profiles),
        ("sizes", sizes),
        ("last purchases", last_purchases),
        ("item stats", item_stats),
        ("category re-buy", category_rebuy),
        *[(f"split {name}", split(name)) for name in SPLITS],
    ]
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]features[/] {task.description:<18}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as progress:
            task = progress.add_task("", total=len(steps))
            for label, step in steps:
                progress.update(task, description=label)
                t = time.perf_counter()
                step()
                timings[label.replace(" ", "_")] = round(time.perf_counter() - t, 3)
                progress.advance(task)
    except BaseException:  # a failed build leaves no half-written tables behind (features/ is untouched)
        shutil.rmtree(out, ignore_errors=True)
        raise

    # Swap the finished build in; the old features/ goes only once the new one is complete.
    final = ws.features_dir
    old = ws.root / "features.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    out.rename(final)
    shutil.rmtree(old, ignore_errors=True)

    result = {
        "events": info["events"],
        "target_events": info["target_events"],
        "target_event_types": info["target_event_types"],
        "users": info["users"],
        "items": info["items"],
        "nnz": info["nnz"],
        "density": round(info["nnz"] / max(1, info["users"] * info["items"]), 6),
        "sequences": info["sequences"],
        "baskets": info["baskets"],
        "profiles": info["profiles"],
        "segments": info["segments"],
        "sizes": info["sizes"],
        "last_purchases": info["last_purchases"],
        "categories": info["categories"],
        "rebuyable_categories": info["rebuyable_categories"],
        "reference_time": _iso(info["ref_ts"]),
        "cycle_days": info["cycle_days"],
        "trend_window_days": info["trend_window_days"],
        "splits": info["splits"],
        "config": config.to_dict(),
        "timings": timings,
    }
    return result


def _load(
    eng: Engine,
    config: FeatureConfig,
    events_path: Path,
    catalog_path: Path | None,
    customers_path: Path | None,
) -> dict[str, Any]:
    """Create the working tables `users`, `items`, `ev`, `tgt` (and `customers`) described in
    features.transforms. Returns the facts later steps need (reference time, target types, counts)."""
    eng.source("raw_events", events_path, row_number=True)
    cols = set(eng.columns("raw_events"))
    missing = {"user_id", "item_id", "event_type", "timestamp"} - cols
    if missing:
        raise BuildError(f"{events_path} lacks column(s) {', '.join(sorted(missing))}")

    def opt(name: str, sql_type: str) -> str:
        return f"e.{name}" if name in cols else f"CAST(NULL AS {sql_type})"

    facts: dict[str, Any] = {}

    eng.table(
        "users",
        """SELECT CAST(row_number() OVER (ORDER BY user_id) - 1 AS INTEGER) AS user_idx, user_id
           FROM (SELECT DISTINCT user_id FROM raw_events) d""",
    )
    if catalog_path is not None:
        eng.source("raw_catalog", catalog_path)
        cat_cols = set(eng.columns("raw_catalog"))
        facts["catalog_columns"] = [c for c in CATALOG_COLUMNS if c in cat_cols]
        cat_select = ", ".join(
            f"c.{c}" if c in cat_cols else f"CAST(NULL AS {t}) AS {c}" for c, t in _CATALOG_TYPES.items()
        )
        ids_sql = "SELECT item_id FROM raw_events UNION SELECT item_id FROM raw_catalog"
        cat_join = "LEFT JOIN raw_catalog c USING (item_id)"
    else:
        facts["catalog_columns"] = []
        cat_select = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t in _CATALOG_TYPES.items())
        ids_sql = "SELECT DISTINCT item_id FROM raw_events"
        cat_join = ""
    eng.table(
        "items",
        f"""SELECT CAST(row_number() OVER (ORDER BY ids.item_id) - 1 AS INTEGER) AS item_idx, ids.item_id, {cat_select}
            FROM ({ids_sql}) ids {cat_join}""",
    )
    if customers_path is not None:
        eng.source("raw_customers", customers_path)
        cust_cols = set(eng.columns("raw_customers"))
        consent = (
            "consent_personalisation" if "consent_personalisation" in cust_cols else "CAST(NULL AS BOOLEAN)"
        )
        eng.table("customers", f"SELECT user_id, {consent} AS consent_personalisation FROM raw_customers")

    weights = config.weight_map
    n_events = eng.table(
        "ev",
        f"""SELECT u.user_idx, i.item_idx,
                   CAST(epoch_us(e.timestamp) // 1000000 AS BIGINT) AS ts,
                   CAST({weight_case(weights, "e.event_type")} AS DOUBLE) AS w,
                   e.file_row_number AS rn
            FROM raw_events e JOIN users u USING (user_id) JOIN items i USING (item_id)""",
    )
    if not n_events:
        raise BuildError(f"{events_path} holds no accepted events: nothing to build features from")
    min_ts, max_ts = eng.one("SELECT min(ts), max(ts) FROM ev")

    # Target events: purchases when the shop has any, else every positive-weight type (MovieLens
    # ratings are all one type).
    present = [r[0] for r in eng.rows("SELECT DISTINCT event_type FROM raw_events")]
    targets = ["purchase"] if "purchase" in present else sorted(t for t in present if weights.get(t, 0.0) > 0)
    if not targets:
        raise BuildError(
            f"no target events in {events_path}: no purchases and no event type with a positive weight "
            f"(types present: {', '.join(sorted(present))}); set one with --weight TYPE=W"
        )
    # The basket key: order, else session, else the user's (UTC) day.
    bkey = (
        f"CASE WHEN {opt('order_id', 'VARCHAR')} <> '' THEN 'o:' || {opt('order_id', 'VARCHAR')} "
        f"WHEN {opt('session_id', 'VARCHAR')} <> '' THEN 's:' || {opt('session_id', 'VARCHAR')} "
        f"ELSE 'd:' || CAST(epoch_us(e.timestamp) // {DAY_S * 1_000_000} AS VARCHAR) END"
    )
    n_target = eng.table(
        "tgt",
        f"""SELECT u.user_idx, i.item_idx,
                   CAST(epoch_us(e.timestamp) // 1000000 AS BIGINT) AS ts,
                   CAST(coalesce({opt("quantity", "BIGINT")}, 1) AS BIGINT) AS quantity,
                   CAST({opt("price", "DOUBLE")} AS DOUBLE) AS price,
                   CAST({opt("size", "VARCHAR")} AS VARCHAR) AS size,
                   {bkey} AS bkey
            FROM raw_events e JOIN users u USING (user_id) JOIN items i USING (item_id)
            WHERE e.event_type IN ({", ".join(sql_str(t) for t in targets)})""",
    )
    facts.update(
        events=int(n_events),
        target_events=int(n_target),
        target_event_types=targets,
        min_ts=int(min_ts),
        ref_ts=int(max_ts),
    )
    return facts


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), tz=UTC).isoformat()
