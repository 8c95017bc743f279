"""The feature definitions, as SQL over tables.

Each function returns one SELECT over the build's working tables, in DuckDB's SQL dialect: DuckDB
runs it as written, Spark runs its translation (features.engines: `shoprec features build --engine
spark`). To add a feature table, add a function here and call it from features.build (or
features.split for a per-split table) through the engine (`eng.write(sql, out / "name.parquet")`):
it then runs on both engines, and the parity test compares it. Use SQL that translates faithfully:
`list(x ORDER BY ...)` ascending, `array_length`, `md5` rather than `hash`; the translation refuses
what it cannot translate faithfully (features.engines.dialect). The working tables, created by
`features.build` from the validated Parquet files, are:

- `users(user_idx INT, user_id)` and `items(item_idx INT, item_id, category, gender, price, ...)`;
- `ev(user_idx, item_idx, ts BIGINT epoch s, w DOUBLE event weight, rn BIGINT input row)`: every
  accepted event;
- `tgt(user_idx, item_idx, ts, quantity, price, size, bkey)`: the *target* events (purchases when the
  data has any, else every positive-weight event), with `bkey` the basket key: the order id, else
  the session id, else the user's day.

Times are integer epoch seconds (UTC) throughout, so "tied" means "the same second" everywhere.
Parameters that are numbers are formatted into the SQL by these functions (never user strings, which
go through `sql_str`).
"""

from __future__ import annotations

from typing import Any

from features.consent import consent_sql
from features.lifecycle import SegmentConfig

DAY_S = 86400


def sql_str(value: str) -> str:
    """A SQL string literal (single quotes doubled), for event type names from the config."""
    return "'" + value.replace("'", "''") + "'"


def parquet_source(path: Any) -> str:
    """`read_parquet('<path>')`, the path quoted as a literal (a workspace path may hold a quote)."""
    return f"read_parquet({sql_str(str(path))})"


def copy_parquet(con: Any, sql: str, path: Any) -> int:
    """Write the result of `sql` to the Parquet file `path` (zstd) on DuckDB connection `con`;
    returns the number of rows written (DuckDB's COPY reports it)."""
    return int(
        con.execute(f"COPY ({sql}) TO {sql_str(str(path))} (FORMAT parquet, COMPRESSION zstd)").fetchone()[0]
    )


def weight_case(weights: dict[str, float], column: str = "event_type") -> str:
    """CASE expression giving each event its configured weight; unlisted types weigh 0."""
    if not weights:
        return "0.0"
    arms = " ".join(f"WHEN {sql_str(t)} THEN {float(w)!r}" for t, w in weights.items())
    return f"CASE {column} {arms} ELSE 0.0 END"


def decay(ref_ts: int, half_life_days: float, ts: str = "ts") -> str:
    """0.5 ** (age_days / half_life): 1 at the reference time, 0.5 one half-life before it."""
    return f"pow(0.5, ({int(ref_ts)} - {ts}) / {float(half_life_days) * DAY_S!r})"


def pairs_sql(events: str, *, ref_ts: int, half_life_days: float, window_s: int) -> str:
    """One row per (user, item) with any event in `events`: the one pass over the events that both
    the interaction matrix and the item statistics are aggregated from (so a split's statistics
    cost little more than its matrix).

    value = sum of w * decay over the pair's non-zero-weight events (NULL when there are none);
    positive = the same over positive-weight events only; n_events = every event of the pair;
    recent / earlier = summed positive weights (undecayed) in the last `window_s` seconds before
    `ref_ts` and in the 3x longer window before that (the item trend's inputs)."""
    d = decay(ref_ts, half_life_days)
    w, ref = int(window_s), int(ref_ts)
    return f"""
        SELECT user_idx, item_idx,
               sum(w * {d}) FILTER (WHERE w <> 0) AS value,
               coalesce(sum(w * {d}) FILTER (WHERE w > 0), 0) AS positive,
               count(*) AS n_events,
               coalesce(sum(w) FILTER (WHERE w > 0 AND ts > {ref - w}), 0) AS recent,
               coalesce(sum(w) FILTER (WHERE w > 0 AND ts <= {ref - w} AND ts > {ref - 4 * w}), 0) AS earlier
        FROM {events}
        GROUP BY user_idx, item_idx"""


def interactions_sql(pairs: str) -> str:
    """COO user x item matrix from `pairs` (pairs_sql): value = sum over the pair's events of
    w * decay; pairs whose sum is not positive (only zero-weight events, or negatives outweighing)
    are left out. Sorted by (user, item) so a reader can build CSR without re-sorting."""
    return f"""
        SELECT user_idx, item_idx, CAST(value AS FLOAT) AS value
        FROM {pairs}
        WHERE value > 0
        ORDER BY user_idx, item_idx"""


def sequences_sql(events: str) -> str:
    """One row per user: the items of every positive-weight event in time order (input order breaks
    ties, so the sequence is deterministic) and their times."""
    return f"""
        SELECT user_idx,
               list(item_idx ORDER BY ts, rn) AS item_idx,
               list(ts ORDER BY ts, rn) AS ts
        FROM {events}
        WHERE w > 0
        GROUP BY user_idx
        ORDER BY user_idx"""


def baskets_sql() -> str:
    """Target events grouped into baskets by `bkey` (order, else session, else user-day). `ts` is the
    basket's first event time; `item_idx` its distinct items, sorted. Ids are dense, in (user, time) order."""
    return """
        SELECT CAST(row_number() OVER (ORDER BY user_idx, min(ts), bkey) - 1 AS BIGINT) AS basket_id,
               user_idx,
               min(ts) AS ts,
               list(DISTINCT item_idx ORDER BY item_idx) AS item_idx
        FROM tgt
        GROUP BY user_idx, bkey
        ORDER BY basket_id"""


def typical_gap_sql(targets: str | None = None) -> str:
    """Median time (s) between a customer's consecutive baskets, over all repeat customers: the data's
    own purchase cycle, used to scale the lifecycle rules. From the `baskets` table, or (a split's
    training part) from the baskets of the target events `targets` (a basket's time is its first event)."""
    src = (
        "baskets"
        if targets is None
        else f"(SELECT user_idx, min(ts) AS ts FROM {targets} GROUP BY user_idx, bkey)"
    )
    return f"""
        SELECT median(gap) FROM (
            SELECT ts - lag(ts) OVER (PARTITION BY user_idx ORDER BY ts) AS gap FROM {src}
        ) WHERE gap > 0"""


def cycle_days(gap_s: float | None, min_ts: int, ref_ts: int) -> float:
    """The purchase cycle C (days) that scales the lifecycle rules: the typical gap (typical_gap_sql)
    clamped to [1 day, half the history]; without repeat customers, a tenth of the history."""
    span_days = max(1.0, (int(ref_ts) - int(min_ts)) / DAY_S)
    return span_days / 10 if gap_s is None else min(max(gap_s / DAY_S, 1.0), span_days / 2)


def has_money_sql(targets: str = "tgt") -> str:
    """Whether any target event of `targets` has a positive price (event price, else catalogue price):
    without one, VIP is decided by frequency alone."""
    return f"""
        SELECT count(*) > 0 FROM {targets} t JOIN items i USING (item_idx)
        WHERE coalesce(t.price, i.price, 0) > 0"""


def _lifecycle_ctes(events: str, targets: str) -> str:
    """The CTEs `a` (per user: n_events, first_ts, last_ts over `events`), `b` (per buyer: purchases,
    baskets, spend, last purchase over `targets`) and `s` (RFM 1-5 scores among the buyers)."""
    return f"""
        a AS (
            SELECT user_idx, count(*) AS n_events, min(ts) AS first_ts, max(ts) AS last_ts
            FROM {events} GROUP BY user_idx
        ), b AS (
            SELECT t.user_idx, count(*) AS n_purchases, count(DISTINCT t.bkey) AS frequency,
                   sum(t.quantity * coalesce(t.price, i.price, 0.0)) AS monetary, max(t.ts) AS last_buy
            FROM {targets} t JOIN items i USING (item_idx) GROUP BY t.user_idx
        ), s AS (
            SELECT user_idx,
                   CAST(least(5, 1 + floor(5 * percent_rank() OVER (ORDER BY last_buy))) AS TINYINT) AS r_score,
                   CAST(least(5, 1 + floor(5 * percent_rank() OVER (ORDER BY frequency))) AS TINYINT) AS f_score,
                   CAST(least(5, 1 + floor(5 * percent_rank() OVER (ORDER BY monetary))) AS TINYINT) AS m_score
            FROM b
        )"""


def _segment_case(*, ref: str, cycle_days: float, has_money: bool, rules: SegmentConfig | None = None) -> str:
    """The lifecycle segment rules (features.lifecycle; thresholds from `rules`, its defaults when
    None) over the CTEs of _lifecycle_ctes, as of the reference time `ref` (an SQL expression: a
    number, or a per-user column). Without a model here, the p_alive rules do not apply."""
    r = rules or SegmentConfig()
    f, m = int(r.vip_min_f_score), int(r.vip_min_m_score)
    # Without prices frequency alone decides, at the stricter of the two score thresholds.
    vip = f"s.f_score >= {f} AND s.m_score >= {m}" if has_money else f"s.f_score >= {max(f, m)}"
    cycle_s = float(cycle_days) * DAY_S
    return f"""CASE
                   WHEN a.first_ts >= {ref} - {float(r.new_cycles) * cycle_s!r} THEN 'new'
                   WHEN {ref} - a.last_ts > {float(r.lapsed_cycles) * cycle_s!r} THEN 'lapsed'
                   WHEN {ref} - a.last_ts > {float(r.at_risk_cycles) * cycle_s!r} THEN 'at_risk'
                   WHEN {vip} THEN 'vip'
                   ELSE 'active'
               END"""


def segments_sql(
    *,
    events: str,
    targets: str,
    ref_ts: int,
    cycle_days: float,
    has_money: bool,
    user_ref: str | None = None,
) -> str:
    """user_idx, segment for every user with an event in `events`: the lifecycle segment of
    profiles_sql (the same rules, scores ranked among the buyers of `targets`) as of `ref_ts`, or
    of the user's own `ref_ts` in the table `user_ref` (user_idx, ref_ts) where it has one. A
    split passes its training part, its end (`loo`: each customer's own cut-off) and the purchase
    cycle of its training baskets, so a customer's segment there is the one the shop knew then."""
    join, ref = "", str(int(ref_ts))
    if user_ref is not None:
        join, ref = f"LEFT JOIN {user_ref} r USING (user_idx)", f"coalesce(r.ref_ts, {int(ref_ts)})"
    case = _segment_case(ref=ref, cycle_days=cycle_days, has_money=has_money)
    return f"""
        WITH {_lifecycle_ctes(events, targets)}
        SELECT a.user_idx, {case} AS segment
        FROM a LEFT JOIN s USING (user_idx) {join}
        ORDER BY a.user_idx"""


def profiles_sql(
    *,
    ref_ts: int,
    cycle_days: float,
    has_money: bool,
    gender_share: float,
    gender_min_events: int,
    has_customers: bool,
) -> str:
    """One row per user: activity counts, RFM and its 1-5 scores, lifecycle segment, gender affinity,
    consent.

    RFM is over target events: recency = days from the user's last target event (last event of any
    kind for users who never bought) to the reference time; frequency = distinct baskets; monetary =
    sum(quantity * price), the event price else the catalogue price else 0. Scores are quintiles of
    the rank among buyers: 1 + floor(5 * percent_rank), capped at 5 (ties share a score; 5 = most
    recent / most frequent / highest spend). Users without target events have null scores.

    Segment, first matching rule, with C = `cycle_days` (the data's median gap between a customer's
    baskets) so the rules scale with the shop, and "silent" = days since the user's last event of any
    kind (a customer who browses every week but buys rarely has not lapsed); the thresholds are
    features.lifecycle.SegmentConfig's (defaults shown; `shoprec segments` adds BG/NBD's p_alive):
      new      first event within the last 4 C days (too new to judge by the rules below);
      lapsed   silent > 4 C;
      at_risk  silent > 2 C;
      vip      f_score >= 4 and m_score = 5 (f_score = 5 when the data has no prices);
      active   everyone else.
    Gender affinity: weighted share of the user's positive events on women's vs men's items;
    >= `gender_share` on one side names it, otherwise "unisex"; fewer than `gender_min_events`
    gendered events -> null.
    """
    consent = consent_sql("c.consent_personalisation", has_customers_table=has_customers)
    customers_join = "LEFT JOIN customers c ON c.user_id = u.user_id" if has_customers else ""
    segment = _segment_case(ref=str(int(ref_ts)), cycle_days=cycle_days, has_money=has_money)
    return f"""
        WITH {_lifecycle_ctes("ev", "tgt")}, g AS (
            SELECT e.user_idx,
                   coalesce(sum(e.w) FILTER (WHERE i.gender = 'women'), 0) AS wf,
                   coalesce(sum(e.w) FILTER (WHERE i.gender = 'men'), 0) AS wm,
                   count(*) AS ng
            FROM ev e JOIN items i USING (item_idx)
            WHERE e.w > 0 AND i.gender IN ('women', 'men')
            GROUP BY e.user_idx
        )
        SELECT u.user_idx, u.user_id,
               a.n_events, coalesce(b.n_purchases, 0) AS n_purchases, a.first_ts, a.last_ts,
               ({int(ref_ts)} - coalesce(b.last_buy, a.last_ts)) / {float(DAY_S)!r} AS recency_days,
               coalesce(b.frequency, 0) AS frequency, coalesce(b.monetary, 0.0) AS monetary,
               s.r_score, s.f_score, s.m_score,
               {segment} AS segment,
               CASE
                   WHEN coalesce(g.ng, 0) < {int(gender_min_events)} THEN NULL
                   WHEN g.wf >= {float(gender_share)!r} * (g.wf + g.wm) THEN 'women'
                   WHEN g.wm >= {float(gender_share)!r} * (g.wf + g.wm) THEN 'men'
                   ELSE 'unisex'
               END AS gender_affinity,
               {consent} AS consent_personalisation
        FROM users u
        JOIN a USING (user_idx)
        LEFT JOIN b USING (user_idx)
        LEFT JOIN s USING (user_idx)
        LEFT JOIN g USING (user_idx)
        {customers_join}
        ORDER BY u.user_idx"""


def sizes_sql() -> str:
    """Per user and garment type (the category path of the sized item), the size bought most often;
    ties go to the most recently bought size, then the size name (deterministic)."""
    return """
        WITH c AS (
            SELECT t.user_idx, i.category AS garment, t.size, count(*) AS n, max(t.ts) AS last
            FROM tgt t JOIN items i USING (item_idx)
            WHERE t.size IS NOT NULL AND t.size <> ''
            GROUP BY t.user_idx, i.category, t.size
        )
        SELECT user_idx, garment, size, n FROM (
            SELECT *, row_number() OVER (PARTITION BY user_idx, garment ORDER BY n DESC, last DESC, size) AS k
            FROM c
        ) ranked WHERE k = 1
        ORDER BY user_idx, garment"""


def last_purchases_sql(targets: str = "tgt") -> str:
    """Per (user, item) over the target events of `targets`: the item's category, the last time and
    how many times."""
    return f"""
        SELECT t.user_idx, t.item_idx, any_value(i.category) AS category,
               max(t.ts) AS last_ts, count(*) AS n_purchases
        FROM {targets} t JOIN items i USING (item_idx)
        GROUP BY t.user_idx, t.item_idx
        ORDER BY t.user_idx, t.item_idx"""


def item_stats_sql(*, pairs: str, targets: str = "tgt") -> str:
    """One row per item (catalogue items without events included, with zeros), from the (user, item)
    aggregates `pairs` (pairs_sql) and the target events `targets` (a split's training part passes
    its own, so its statistics know nothing of the held-out period).

    n_users = users with any event on the item; popularity = sum of w * decay over positive-weight
    events of all users; trend = (recent + 1) / (earlier / 3 + 1) where recent = weighted events in
    the last trend window and earlier = those in the 3x longer window before it: a smoothed ratio
    of event rates, 1 = flat, > 1 rising; pop_rank = 1 for the most popular item.
    """
    return f"""
        WITH e AS (
            SELECT item_idx, count(*) AS n_users, CAST(sum(n_events) AS BIGINT) AS n_events,
                   sum(positive) AS popularity, sum(recent) AS recent, sum(earlier) AS earlier
            FROM {pairs} GROUP BY item_idx
        ), p AS (
            SELECT item_idx, count(*) AS n_purchases FROM {targets} GROUP BY item_idx
        )
        SELECT i.item_idx, i.category,
               coalesce(e.n_users, 0) AS n_users, coalesce(e.n_events, 0) AS n_events,
               coalesce(p.n_purchases, 0) AS n_purchases,
               coalesce(e.popularity, 0.0) AS popularity,
               (coalesce(e.recent, 0) + 1.0) / (coalesce(e.earlier, 0) / 3.0 + 1.0) AS trend,
               CAST(row_number() OVER (ORDER BY coalesce(e.popularity, 0.0) DESC, i.item_idx) AS INTEGER) AS pop_rank
        FROM items i LEFT JOIN e USING (item_idx) LEFT JOIN p USING (item_idx)
        ORDER BY i.item_idx"""


# A category is *durable* (a laptop, a litter box) when its buyers come back to it far less often
# than their number of baskets predicts: at most DURABLE_MAX_RATIO of the expected repeat buyers,
# with at least DURABLE_MIN_EXPECTED expected (so that "nobody came back" is evidence, not chance:
# P(0 | Poisson(5)) < 1 %). On the synthetic shop durables sit at 0, accessories near 0.2-0.5,
# everything else near 1 (docs/policy.md).
DURABLE_MAX_RATIO = 0.1
DURABLE_MIN_EXPECTED = 5.0
# A customer's own re-buy interval in a category is learned once they have this many intervals.
CUSTOMER_MIN_INTERVALS = 3


def category_rebuy_sql(
    *,
    min_rate: float,
    min_repeat_buyers: int,
    targets: str = "tgt",
    durable_max_ratio: float = DURABLE_MAX_RATIO,
    durable_min_expected: float = DURABLE_MIN_EXPECTED,
) -> str:
    """Over the target events of `targets` (a split passes its training part's), per category.

    The same item again: buyers, buyers who bought the same item again in a later basket
    (n_repeat_buyers), their share (rebuy_rate), the median days between consecutive baskets
    holding the same item (median_interval_days), and the re-buyable flag (rebuy_rate >= `min_rate`
    and n_repeat_buyers >= `min_repeat_buyers`: global thresholds, the rates themselves learned).

    The category again (any item of it): n_category_repeat_buyers (buyers with two or more baskets
    holding the category), expected_category_repeat_buyers (what chance predicts: per buyer with
    n baskets, 1 - (1 - s)^(n - 1), s = the share of all baskets that hold the category),
    category_interval_days (the median days between a customer's consecutive baskets holding the
    category) and the durable flag (n_category_repeat_buyers <= `durable_max_ratio` x expected,
    expected >= `durable_min_expected`). Items without a category are pooled in one row with a
    null category."""
    return f"""
        WITH per AS (
            SELECT t.user_idx, t.item_idx, i.category, t.bkey, min(t.ts) AS ts
            FROM {targets} t JOIN items i USING (item_idx)
            GROUP BY t.user_idx, t.item_idx, i.category, t.bkey
        ), g AS (
            SELECT category, user_idx,
                   ts - lag(ts) OVER (PARTITION BY user_idx, item_idx ORDER BY ts) AS gap
            FROM per
        ), agg AS (
            SELECT category, count(DISTINCT user_idx) AS n_buyers,
                   count(DISTINCT user_idx) FILTER (WHERE gap IS NOT NULL) AS n_repeat_buyers,
                   median(gap) FILTER (WHERE gap IS NOT NULL) / {float(DAY_S)!r} AS median_interval_days
            FROM g GROUP BY category
        ), cb AS (
            SELECT user_idx, category, bkey, min(ts) AS ts FROM per GROUP BY user_idx, category, bkey
        ), cg AS (
            SELECT category, user_idx,
                   ts - lag(ts) OVER (PARTITION BY user_idx, category ORDER BY ts) AS gap,
                   count(*) OVER (PARTITION BY category) AS n_cat_baskets
            FROM cb
        ), nb AS (
            SELECT user_idx, count(DISTINCT bkey) AS n_baskets FROM {targets} GROUP BY user_idx
        ), cb_all AS (
            SELECT DISTINCT user_idx, bkey FROM {targets}
        ), uc AS (
            SELECT category, user_idx, count(gap) AS n_gaps, max(n_cat_baskets) AS n_cat_baskets
            FROM cg GROUP BY category, user_idx
        ), cat AS (
            SELECT uc.category,
                   count(*) FILTER (WHERE uc.n_gaps > 0) AS n_category_repeat_buyers,
                   sum(1.0 - power(1.0 - uc.n_cat_baskets / (SELECT count(*) FROM cb_all), nb.n_baskets - 1))
                       AS expected_category_repeat_buyers
            FROM uc JOIN nb USING (user_idx)
            GROUP BY uc.category
        ), cgi AS (
            SELECT category, median(gap) / {float(DAY_S)!r} AS category_interval_days
            FROM cg WHERE gap IS NOT NULL GROUP BY category
        )
        SELECT agg.category, n_buyers, n_repeat_buyers,
               n_repeat_buyers / n_buyers AS rebuy_rate,
               median_interval_days,
               (n_repeat_buyers / n_buyers >= {float(min_rate)!r}
                AND n_repeat_buyers >= {int(min_repeat_buyers)}) AS rebuyable,
               cat.n_category_repeat_buyers, cat.expected_category_repeat_buyers,
               cgi.category_interval_days,
               (cat.expected_category_repeat_buyers >= {float(durable_min_expected)!r}
                AND cat.n_category_repeat_buyers
                    <= {float(durable_max_ratio)!r} * cat.expected_category_repeat_buyers) AS durable
        FROM agg
        JOIN cat ON cat.category = agg.category OR (cat.category IS NULL AND agg.category IS NULL)
        LEFT JOIN cgi ON cgi.category = agg.category OR (cgi.category IS NULL AND agg.category IS NULL)
        ORDER BY agg.category NULLS LAST"""


def customer_rebuy_sql(*, targets: str = "tgt", min_intervals: int = CUSTOMER_MIN_INTERVALS) -> str:
    """Per (customer, category) with at least `min_intervals` intervals between consecutive baskets
    holding the category, over the target events of `targets`: n_intervals and their median in
    days (median_interval_days): the customer's own re-buy cycle, which the re-buy policy shrinks
    towards the category's (training.policy)."""
    return f"""
        WITH cb AS (
            SELECT t.user_idx, i.category, t.bkey, min(t.ts) AS ts
            FROM {targets} t JOIN items i USING (item_idx)
            GROUP BY t.user_idx, i.category, t.bkey
        ), g AS (
            SELECT user_idx, category,
                   ts - lag(ts) OVER (PARTITION BY user_idx, category ORDER BY ts) AS gap
            FROM cb
        )
        SELECT user_idx, category, count(*) AS n_intervals,
               median(gap) / {float(DAY_S)!r} AS median_interval_days
        FROM g WHERE gap IS NOT NULL
        GROUP BY user_idx, category
        HAVING count(*) >= {int(min_intervals)}
        ORDER BY user_idx, category NULLS LAST"""
