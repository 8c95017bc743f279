"""Evaluation splits: `loo` (leave-last-out per user), `time` (global cut-off) and `random` (per user
80/10/10), written under `features/splits/<name>/` (docs/workspace.md).

Each split is defined by SQL over the build's working tables (`ev`, `tgt`, `seq_all` = the full
sequences, see features.transforms): a view `train_ev_<name>` of the training events, `train_tgt_<name>`
of its target events, `train_seq_<name>` of their sequences, and the held-out target interactions.
Every table of the training part (interaction matrix, last purchases, item statistics with their
trend, the learned re-buy rates, the customers' lifecycle segments) is computed from those views alone, with the reference time = the
end of the training part, so no feature an evaluated model sees is computed from the held-out period.

Leak-freedom (`loo`, `time`): for every user, every valid/test interaction is strictly later than every
training event of that user, of any event type. Times are whole seconds; events tied at a cut time go
to the held-out side together (an Instacart basket stays whole).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from features.config import FeatureConfig
from features.engines import Engine
from features.errors import BuildError
from features.transforms import (
    DAY_S,
    category_rebuy_sql,
    customer_rebuy_sql,
    cycle_days,
    has_money_sql,
    interactions_sql,
    item_stats_sql,
    last_purchases_sql,
    pairs_sql,
    segments_sql,
    typical_gap_sql,
)


def define_loo(eng: Engine) -> dict[str, Any]:
    """Per user: last distinct target time -> test, the one before -> valid, everything earlier (every
    event type) -> train. Users with fewer than 3 distinct target times keep all their events in train.
    Creates `train_ev_loo`, `valid_loo`, `test_loo`; returns meta entries."""
    eng.table(
        "loo_cut",
        """
        WITH d AS (SELECT DISTINCT user_idx, ts FROM tgt),
        r AS (SELECT user_idx, ts, row_number() OVER (PARTITION BY user_idx ORDER BY ts DESC) AS k FROM d)
        SELECT user_idx, max(ts) FILTER (WHERE k = 1) AS t_test, max(ts) FILTER (WHERE k = 2) AS t_valid
        FROM r WHERE k <= 3 GROUP BY user_idx HAVING count(*) >= 3""",
    )
    eng.view(
        "train_ev_loo",
        """SELECT e.* FROM ev e LEFT JOIN loo_cut c USING (user_idx)
           WHERE c.t_valid IS NULL OR e.ts < c.t_valid""",
    )
    eng.view(
        "train_tgt_loo",
        """SELECT t.* FROM tgt t LEFT JOIN loo_cut c USING (user_idx)
           WHERE c.t_valid IS NULL OR t.ts < c.t_valid""",
    )
    for part, col in (("valid", "t_valid"), ("test", "t_test")):
        eng.view(
            f"{part}_loo",
            f"""SELECT t.user_idx, t.item_idx, min(t.ts) AS ts
                FROM tgt t JOIN loo_cut c ON t.user_idx = c.user_idx AND t.ts = c.{col}
                GROUP BY t.user_idx, t.item_idx ORDER BY t.user_idx, t.item_idx""",
        )
    # Training sequences are prefixes of the full time-ordered sequences (`seq_all`): cutting a sorted
    # list is far cheaper than re-aggregating and re-sorting every event per split.
    eng.view(
        "train_seq_loo",
        """SELECT user_idx, item_idx[1:n] AS item_idx, ts[1:n] AS ts FROM (
               SELECT s.*, CASE WHEN c.t_valid IS NULL THEN array_length(s.ts)
                                ELSE array_length(list_filter(s.ts, lambda x: x < c.t_valid)) END AS n
               FROM seq_all s LEFT JOIN loo_cut c USING (user_idx)
           ) cut WHERE n > 0 ORDER BY user_idx""",
    )
    # Each held-out customer's own cut-off, the reference time of their segment (features.transforms
    # segments_sql): the training part as a whole ends at the end of the data.
    eng.view("segment_ref_loo", "SELECT user_idx, t_valid AS ref_ts FROM loo_cut")
    n_users = eng.count("loo_cut")
    return {"min_distinct_target_times": 3, "n_held_out_users": n_users}


def define_time(eng: Engine, config: FeatureConfig) -> dict[str, Any]:
    """Global cut-off C (config.cutoff, else the `time_quantile` of all event times): target events at or
    after C -> test; those in [V, C) -> valid, with V = C - (last time - C) (a validation window as long
    as the test window, right before it); events before V -> train."""
    t_min, t_max = eng.one("SELECT min(ts), max(ts) FROM ev")
    cut = config.cutoff_ts()
    if cut is None:
        cut = int(eng.scalar(f"SELECT quantile_disc(ts, {config.time_quantile!r}) FROM ev"))
    elif not t_min < cut <= t_max:
        raise BuildError(
            f"--cutoff {config.cutoff} lies outside the events' time range "
            f"({_iso(t_min)} .. {_iso(t_max)}); choose a date inside it"
        )
    valid_cut = max(int(t_min), cut - (int(t_max) - cut))
    eng.view("train_ev_time", f"SELECT * FROM ev WHERE ts < {valid_cut}")
    eng.view("train_tgt_time", f"SELECT * FROM tgt WHERE ts < {valid_cut}")
    eng.view(
        "train_seq_time",
        f"""SELECT user_idx, item_idx[1:n] AS item_idx, ts[1:n] AS ts FROM (
                SELECT *, array_length(list_filter(ts, lambda x: x < {valid_cut})) AS n FROM seq_all
            ) cut WHERE n > 0 ORDER BY user_idx""",
    )
    for part, cond in (("valid", f"ts >= {valid_cut} AND ts < {cut}"), ("test", f"ts >= {cut}")):
        eng.view(
            f"{part}_time",
            f"""SELECT user_idx, item_idx, min(ts) AS ts FROM tgt WHERE {cond}
                GROUP BY user_idx, item_idx ORDER BY user_idx, item_idx""",
        )
    return {
        "cutoff_ts": cut,
        "cutoff": _iso(cut),
        "valid_cutoff_ts": valid_cut,
        "valid_cutoff": _iso(valid_cut),
        "cutoff_source": "config" if config.cutoff else f"quantile {config.time_quantile}",
    }


def define_random(eng: Engine, config: FeatureConfig) -> dict[str, Any]:
    """Per user, the distinct target (user, item) pairs are shuffled by a seeded hash and split by
    RecBole's rule: valid = floor(r_valid * n), test = floor(r_test * n), and a user with a fractional
    share below one item still gets one (test first, then valid) while at least two stay in train.
    A held-out pair leaves train entirely (all its events, views included), so train never shows
    the answer."""
    total = sum(config.random_ratios)
    _, rv, rt = (r / total for r in config.random_ratios)
    seed = int(config.seed)
    # The shuffle key is an md5 of (user, item, seed): the same text, so the same order, on every
    # engine (engines' own hash() functions differ).
    key = f"md5(CAST(user_idx AS VARCHAR) || ':' || CAST(item_idx AS VARCHAR) || ':{seed}')"
    eng.table(
        "random_parts",
        f"""
        WITH pairs AS (
            SELECT user_idx, item_idx, max(ts) AS ts FROM tgt GROUP BY user_idx, item_idx
        ), r AS (
            SELECT *, row_number() OVER (PARTITION BY user_idx ORDER BY {key}, item_idx) AS k,
                      count(*) OVER (PARTITION BY user_idx) AS n
            FROM pairs
        ), c AS (
            SELECT DISTINCT user_idx, n,
                   CAST(floor(round({rv!r} * n, 9)) AS BIGINT) AS nv0,
                   CAST(floor(round({rt!r} * n, 9)) AS BIGINT) AS nt0
            FROM r
        ), c2 AS (
            SELECT *, CAST(n - nv0 - nt0 > 1 AND {rt!r} * n > 0 AND {rt!r} * n < 1 AS INTEGER) AS add_t FROM c
        ), c3 AS (
            SELECT *, CAST(n - nv0 - nt0 - add_t > 1 AND {rv!r} * n > 0 AND {rv!r} * n < 1 AS INTEGER) AS add_v FROM c2
        )
        SELECT r.user_idx, r.item_idx, r.ts,
               CASE WHEN r.k <= c3.nt0 + c3.add_t THEN 'test'
                    WHEN r.k <= c3.nt0 + c3.add_t + c3.nv0 + c3.add_v THEN 'valid'
                    ELSE 'train' END AS part
        FROM r JOIN c3 USING (user_idx)""",
    )
    held = "(SELECT user_idx, item_idx FROM random_parts WHERE part <> 'train') h"
    eng.view("train_ev_random", f"SELECT e.* FROM ev e ANTI JOIN {held} USING (user_idx, item_idx)")
    eng.view("train_tgt_random", f"SELECT t.* FROM tgt t ANTI JOIN {held} USING (user_idx, item_idx)")
    eng.view(
        "train_seq_random",
        """
        WITH h AS (
            SELECT user_idx, list(item_idx) AS hold FROM random_parts WHERE part <> 'train' GROUP BY user_idx
        ), m AS (
            SELECT s.user_idx, s.item_idx, s.ts,
                   list_transform(s.item_idx, lambda x: NOT coalesce(list_contains(h.hold, x), false)) AS keep
            FROM seq_all s LEFT JOIN h USING (user_idx)
        )
        SELECT user_idx, list_where(item_idx, keep) AS item_idx, list_where(ts, keep) AS ts FROM m
        WHERE array_length(list_where(item_idx, keep)) > 0 ORDER BY user_idx""",
    )
    for part in ("valid", "test"):
        eng.view(
            f"{part}_random",
            f"""SELECT user_idx, item_idx, ts FROM random_parts WHERE part = '{part}'
                ORDER BY user_idx, item_idx""",
        )
    return {
        "ratios": [r / total for r in config.random_ratios],
        "seed": seed,
        "unit": "distinct (user, item) target pair",
    }


def write_split(
    eng: Engine,
    name: str,
    out_dir: Path,
    config: FeatureConfig,
    *,
    target_types: list[str],
    shape: tuple[int, int],
) -> dict[str, Any]:
    """Define split `name` and write train.parquet (COO, decayed at the end of the training part),
    train_sequences.parquet, train_last_purchases.parquet, item_stats.parquet,
    category_rebuy.parquet, customer_rebuy.parquet and segments.parquet (all from the training part only), valid.parquet,
    test.parquet and meta.json into `out_dir`.
    Returns the meta dict (kind, cut-offs, counts, target types)."""
    if name == "loo":
        meta = define_loo(eng)
    elif name == "time":
        meta = define_time(eng, config)
    elif name == "random":
        meta = define_random(eng, config)
    else:
        raise BuildError(f"unknown split {name!r}; known: loo, time, random")
    out_dir.mkdir(parents=True, exist_ok=True)
    train = f"train_ev_{name}"
    n_train, ref, t_min = eng.one(f"SELECT count(*), max(ts), min(ts) FROM {train}")
    if ref is None:  # nothing in train (e.g. a cut-off before every event): an empty matrix, honestly
        ref = t_min = eng.scalar("SELECT min(ts) FROM ev")
    # The trend window of the training part: the same share of *its* time span, ending at its end.
    span = int(ref) - int(t_min)
    window = max(DAY_S, int(config.trend_window_share * span))
    pairs = pairs_sql(train, ref_ts=int(ref), half_life_days=config.half_life_days, window_s=window)
    eng.table("split_pairs", pairs)
    n_nnz = eng.write(interactions_sql("split_pairs"), out_dir / "train.parquet")
    eng.write(f"SELECT * FROM train_seq_{name}", out_dir / "train_sequences.parquet")
    # The training part's target events (purchases), materialised once: the re-buy policy's input
    # and the learned statistics below are all computed from them and from nothing later.
    eng.table("split_tgt", f"SELECT * FROM train_tgt_{name}")
    # Last purchase per (user, item) over the training part's *target* events only. Training
    # sequences hold views and carts too, and a viewed item is no purchase: excluding it would hide
    # the very item a customer viewed and then bought.
    eng.write(last_purchases_sql("split_tgt"), out_dir / "train_last_purchases.parquet")
    # item_stats and category_rebuy of the training part, with the reference time = its end: the
    # whole-data tables (features/) have seen the held-out period (a category re-bought, an item
    # trending only there), so evaluation must use these.
    eng.write(item_stats_sql(pairs="split_pairs", targets="split_tgt"), out_dir / "item_stats.parquet")
    eng.write(
        category_rebuy_sql(
            min_rate=config.rebuy_min_rate,
            min_repeat_buyers=config.rebuy_min_repeat_buyers,
            targets="split_tgt",
        ),
        out_dir / "category_rebuy.parquet",
    )
    eng.write(customer_rebuy_sql(targets="split_tgt"), out_dir / "customer_rebuy.parquet")
    # Customer segments as of the cut-off: the whole-data profiles' rules over the training part,
    # at its end (`loo`: at each held-out customer's own cut-off), with the purchase cycle of its
    # own baskets. The whole-data segment has seen the
    # held-out period (a first purchase there is not "new", test-period spending makes a VIP).
    gap = eng.scalar(typical_gap_sql("split_tgt"))
    cycle = cycle_days(gap, int(t_min), int(ref))
    eng.write(
        segments_sql(
            events=train,
            targets="split_tgt",
            ref_ts=int(ref),
            cycle_days=cycle,
            has_money=bool(eng.scalar(has_money_sql("split_tgt"))),
            user_ref="segment_ref_loo" if name == "loo" else None,
        ),
        out_dir / "segments.parquet",
    )
    eng.drop("split_tgt")
    eng.drop("split_pairs")
    counts: dict[str, int] = {
        "train_events": int(n_train),
        "train_nnz": n_nnz,
    }
    for part in ("valid", "test"):
        eng.write(f"SELECT * FROM {part}_{name}", out_dir / f"{part}.parquet")
        eng.source("part_out", out_dir / f"{part}.parquet")
        n, users = eng.one("SELECT count(*), count(DISTINCT user_idx) FROM part_out")
        eng.drop("part_out")
        counts[f"{part}_rows"], counts[f"{part}_users"] = int(n), int(users)
    meta = {
        "kind": name,
        **meta,
        "reference_ts": int(ref),
        "reference_time": _iso(int(ref)),
        "trend_window_days": round(window / DAY_S, 3),
        "cycle_days": round(cycle, 3),
        "shape": list(shape),
        "target_event_types": target_types,
        "counts": counts,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def _iso(ts: int | float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(ts), tz=UTC).isoformat()
