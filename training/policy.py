"""The learned re-buy rule: may an item a customer bought before be recommended again, and when?

One place for evaluation (`--exclude-seen learned`), serving's purchase rules (serving/rules.py) and
the campaigns (`back_at`, `durable_until`). Everything is learned by the features build from
inter-purchase times (`category_rebuy.parquet`, `customer_rebuy.parquet`; features/transforms.py):

- **Re-buyable** categories (groceries, pet food: customers buy the *same item* again): a bought item
  comes back `window_fraction` x its window after the purchase, never sooner than `floor_hours`.
  The window is the category's median interval between two baskets holding the same item, or,
  for a customer with at least 3 intervals of their own in the category, their own median interval
  shrunk towards the category's: (n x own + `customer_prior` x category) / (n + `customer_prior`).
- **Every other** category (jeans, brushes, films): a bought item never comes back. A category the
  data never showed is not re-buyable.
- **Durable** categories (laptops, litter boxes: buyers come back to the *category* far less often
  than their number of baskets predicts): after a purchase the *other* items of that category stay
  out for `durable_days` (the category's median interval between two of a customer's purchases
  there, or DURABLE_DEFAULT_DAYS when nobody buys twice); accessories live in other categories and
  are not touched (serving lifts the bought item's complements).
- **Just bought**: nothing comes back within `floor_hours` of its purchase, in any category, so an
  item bought a moment ago (POST /events) is not in the next answer on any channel.

How the window and the floor were chosen (benchmarks/bench_rebuy.py writes the full grid to
benchmarks/results/rebuy.json): Instacart sample, `loo` split, Recall@20 of repeat-blend
(cf_weight 0.05, recency half-life 50), validation / test.

    per-customer windows on            floor (hours) at fraction 0
    fraction 0     0.4955 / 0.4898     0 h  0.4955 / 0.4898     4 h   0.4938 / 0.4881
    fraction 0.1   0.4915 / 0.4891     1 h  0.4955 / 0.4898     6 h   0.4938 / 0.4881
    fraction 0.25  0.4849 / 0.4818     2 h  0.4955 / 0.4898     24 h  0.4888 / 0.4881
    fraction 0.5   0.4632 / 0.4672     3 h  0.4938 / 0.4881     168 h 0.4227 / 0.4168
    fraction 1.0   0.3722 / 0.3822
    (category windows only: fraction 0.1 0.4844 / 0.4854, 0.25 0.4715 / 0.4757, 0.5 0.4120 / 0.4068,
    1.0 0.3141 / 0.3063)

Customers there re-order the same items every week or two, so any fraction above 0 costs recall;
per-customer windows cost far less than the category's (0.4632 against 0.4120 at half a window).
A floor costs nothing up to 2 hours and recall from 3 hours on (a few customers order twice in a
day). The defaults are therefore fraction 0 and a floor of 2 hours: the largest floor of the grid
whose validation recall equals that without one. A shop that wants a cooling-off period sets
`window_fraction` (or `floor_hours`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

_DAY = 86_400.0
_HOUR = 3_600.0
DEFAULT_WINDOW_FRACTION = 0.0  # chosen on Instacart validation (module docstring)
DEFAULT_FLOOR_HOURS = 2.0  # chosen on Instacart validation (module docstring)
DURABLE_DEFAULT_DAYS = 365.0  # a durable category nobody bought twice: its other items stay out a year
DURABLE_MIN_REPEATERS = 5  # fewer customers who bought the category twice: their interval is no estimate
CUSTOMER_PRIOR = 3.0  # a customer's own interval counts as n of these against the category's 3


@dataclass(frozen=True)
class RebuyPolicy:
    """windows: re-buyable category -> window in days (the median re-buy interval; absent = the
    category's items never come back); durables: durable category -> days its other items stay out
    after a purchase; customer_windows: rows user_id, user_idx, category, days (each customer's
    own window where learned, already shrunk towards the category's)."""

    windows: tuple[tuple[str, float], ...] = ()
    # Show a staple again after this fraction of its window (0 = as soon as the floor allows).
    window_fraction: float = DEFAULT_WINDOW_FRACTION
    # Nothing bought comes back sooner than this, whatever the category.
    floor_hours: float = DEFAULT_FLOOR_HOURS
    durables: tuple[tuple[str, float], ...] = ()
    customer_windows: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_frame(
        cls,
        category_rebuy: pd.DataFrame | None,
        *,
        window_fraction: float = DEFAULT_WINDOW_FRACTION,
        floor_hours: float = DEFAULT_FLOOR_HOURS,
        customer_rebuy: pd.DataFrame | None = None,
        users: pd.DataFrame | None = None,
        customer_prior: float = CUSTOMER_PRIOR,
    ) -> RebuyPolicy:
        """From features' category_rebuy (category, rebuyable, median_interval_days, and when the
        build wrote them durable, n_category_repeat_buyers, category_interval_days) and
        customer_rebuy (user_idx, category, n_intervals, median_interval_days; `users` maps
        user_idx to user_id for serving)."""
        if window_fraction < 0 or floor_hours < 0:
            raise ValueError("window_fraction and floor_hours must be >= 0")
        if category_rebuy is None or category_rebuy.empty:
            return cls((), window_fraction, floor_hours)
        missing = {"category", "rebuyable", "median_interval_days"} - set(category_rebuy.columns)
        if missing:
            raise ValueError(f"category_rebuy lacks column(s) {sorted(missing)}")
        cr = category_rebuy.assign(category=_cats(category_rebuy["category"]))
        reb = cr[cr["rebuyable"].fillna(False).astype(bool)]
        windows = tuple(
            (c, float(d) if pd.notna(d) else 0.0)
            for c, d in zip(reb["category"], reb["median_interval_days"], strict=True)
        )
        durables: tuple[tuple[str, float], ...] = ()
        if "durable" in cr.columns:
            dur = cr[cr["durable"].fillna(False).astype(bool) & ~cr["rebuyable"].fillna(False).astype(bool)]
            durables = tuple(
                (c, _durable_days(n, d))
                for c, n, d in zip(
                    dur["category"],
                    dur["n_category_repeat_buyers"],
                    dur["category_interval_days"],
                    strict=True,
                )
            )
        own = _customer_windows(customer_rebuy, dict(windows), users, customer_prior)
        return cls(windows, window_fraction, floor_hours, durables, own)

    @property
    def rebuyable(self) -> dict[str, float]:
        """category -> median re-buy interval in days."""
        return dict(self.windows)

    @property
    def rebuyable_categories(self) -> frozenset[str]:
        return frozenset(c for c, _ in self.windows)

    @property
    def durable_categories(self) -> frozenset[str]:
        return frozenset(c for c, _ in self.durables)

    @property
    def floor_seconds(self) -> float:
        return float(self.floor_hours) * _HOUR

    # -- the vectorised interface serving and the campaigns call (no frame per call) ----------------
    def window_days(
        self, categories: np.ndarray, user_ids: np.ndarray | None = None, *, by: str = "user_id"
    ) -> np.ndarray:
        """(len(categories),) the learned re-buy interval in days (the customer's own where known,
        `user_ids` given; `by` says whether they are user_id strings or user_idx numbers); NaN where
        the category is never re-bought."""
        cats = _cats(categories)
        days = pd.Series(self.rebuyable, dtype=np.float64)
        out = days.reindex(cats).to_numpy(np.float64, copy=True) if len(days) else np.full(len(cats), np.nan)
        own = self.customer_windows
        if user_ids is not None and own is not None and len(own) and by in own.columns and len(cats):
            keys = pd.MultiIndex.from_arrays([own[by].to_numpy(), own["category"].to_numpy(object)])
            users = np.asarray(user_ids)
            users = users.astype(str).astype(object) if by == "user_id" else users.astype(np.int64)
            at = keys.get_indexer(pd.MultiIndex.from_arrays([users, np.asarray(cats, dtype=object)]))
            hit = (at >= 0) & ~np.isnan(out)
            out[hit] = own["days"].to_numpy(np.float64)[at[hit]]
        return out

    def window_seconds(
        self, categories: np.ndarray, user_ids: np.ndarray | None = None, *, by: str = "user_id"
    ) -> np.ndarray:
        """(len(categories),) seconds after a purchase at which the same item may come back:
        max(floor, window_fraction x window); np.inf where the category is never re-bought."""
        days = self.window_days(categories, user_ids, by=by)
        seconds = np.maximum(self.floor_seconds, days * self.window_fraction * _DAY)
        return np.where(np.isnan(days), np.inf, seconds)

    def back_at(self, user_ids: np.ndarray, categories: np.ndarray, last_ts: np.ndarray) -> np.ndarray:
        """Per past purchase: the epoch second from which that item may be recommended again to
        that customer; np.inf = never."""
        return np.asarray(last_ts, dtype=np.float64) + self.window_seconds(categories, user_ids)

    def durable_until(
        self, user_ids: np.ndarray, categories: np.ndarray, bought_ts: np.ndarray
    ) -> np.ndarray:
        """Per purchase: until when the other items of its category stay out; -np.inf where the
        category is not durable."""
        days = (
            pd.Series(dict(self.durables), dtype=np.float64).reindex(_cats(categories)).to_numpy(np.float64)
        )
        until = np.asarray(bought_ts, dtype=np.float64) + days * _DAY
        return np.where(np.isnan(days), -np.inf, until)

    # -- storage (the model bundle's policy/) --------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "windows": [list(w) for w in self.windows],
            "window_fraction": self.window_fraction,
            "floor_hours": self.floor_hours,
            "durables": [list(d) for d in self.durables],
        }
        (path / "policy.json").write_text(json.dumps(meta))
        own = path / "customers.parquet"
        if self.customer_windows is not None and len(self.customer_windows):
            self.customer_windows.to_parquet(own, index=False)
        elif own.exists():
            own.unlink()
        return path

    @classmethod
    def load(cls, path: str | Path) -> RebuyPolicy:
        """A saved policy; one saved before floors, durables and customer windows were learned
        loads without them (floor 0: as it behaved)."""
        path = Path(path)
        meta = json.loads((path / "policy.json").read_text())
        own = path / "customers.parquet"
        return cls(
            tuple((str(c), float(d)) for c, d in meta["windows"]),
            float(meta["window_fraction"]),
            float(meta.get("floor_hours", 0.0)),
            tuple((str(c), float(d)) for c, d in meta.get("durables", [])),
            pd.read_parquet(own) if own.exists() else None,
        )

    # -- evaluation -----------------------------------------------------------------------------------
    def exclusions(
        self,
        users: np.ndarray,
        last_purchases: pd.DataFrame,
        now: int | float | np.ndarray,
        n_items: int,
        *,
        item_categories: np.ndarray | None = None,
    ) -> sp.csr_matrix:
        """Exclusion CSR (len(users), n_items), 1 = must not be recommended to row i's customer.

        users: training user indices (-1 = unknown: nothing excluded).
        last_purchases: rows user_idx, item_idx, category, last_ts (epoch s) — features'
          last_purchases.parquet or the same columns derived from a split's training part.
        now: epoch seconds, one for all or one per row of `users`.
        item_categories: (n_items,) category per item index; given, the other items of a durable
          category bought within its period are excluded too.
        """
        users = np.asarray(users, dtype=np.int64)
        n = len(users)
        now_arr = np.broadcast_to(np.asarray(now, dtype=np.float64), (n,))
        if last_purchases is None or last_purchases.empty or n == 0:
            return sp.csr_matrix((n, n_items), dtype=np.float32)
        # row position of each user (a user may appear in several rows: each row gets the exclusions)
        pos = pd.DataFrame({"user_idx": users, "row": np.arange(n)})
        lp = last_purchases[["user_idx", "item_idx", "category", "last_ts"]].merge(pos, on="user_idx")
        if lp.empty:
            return sp.csr_matrix((n, n_items), dtype=np.float32)
        rows_of = lp["row"].to_numpy()
        cats = lp["category"].to_numpy(object)
        last = lp["last_ts"].to_numpy(np.float64)
        waited = now_arr[rows_of] - last
        window_s = self.window_seconds(cats, lp["user_idx"].to_numpy(np.int64), by="user_idx")
        excluded = waited < window_s  # inf for categories never re-bought
        rows = [rows_of[excluded]]
        cols = [lp["item_idx"].to_numpy(np.int64)[excluded]]
        if item_categories is not None and self.durables:
            until = self.durable_until(lp["user_idx"].to_numpy(), cats, last)
            live = (now_arr[rows_of] < until) & (last <= now_arr[rows_of])
            if live.any():
                item_cats = np.asarray(_cats(item_categories), dtype=object)
                by_cat = pd.Series(np.arange(len(item_cats))).groupby(item_cats).apply(np.asarray).to_dict()
                # one expansion per (row, category): several purchases in a category exclude it once
                live_pairs = pd.DataFrame(
                    {
                        "r": rows_of[live],
                        "c": np.asarray(_cats(np.asarray(cats, dtype=object)[live]), dtype=object),
                    }
                ).drop_duplicates()
                for r, c in zip(live_pairs["r"].tolist(), live_pairs["c"].tolist(), strict=True):
                    items = by_cat.get("" if c is None or c != c else str(c), np.zeros(0, np.int64))
                    rows.append(np.full(len(items), r))
                    cols.append(items.astype(np.int64))
        r, c = np.concatenate(rows), np.concatenate(cols)
        ok = c < n_items
        M = sp.csr_matrix((np.ones(ok.sum(), np.float32), (r[ok], c[ok])), shape=(n, n_items))
        M.sum_duplicates()
        M.data[:] = 1.0
        return M


def _cats(categories: np.ndarray | pd.Series) -> list[str]:
    """Category keys: a missing category (a data set without a catalogue) is "" on both sides."""
    return [
        "" if c is None or (isinstance(c, float) and np.isnan(c)) or c is pd.NA else str(c)
        for c in categories
    ]


def _durable_days(n_repeaters: object, interval_days: object) -> float:
    """How long the other items of a durable category stay out: the customers' own interval between
    two purchases of the category where enough of them bought twice, else the long default."""
    n = 0 if n_repeaters is None or pd.isna(n_repeaters) else int(n_repeaters)
    if n >= DURABLE_MIN_REPEATERS and interval_days is not None and pd.notna(interval_days):
        return float(min(float(interval_days), DURABLE_DEFAULT_DAYS))
    return DURABLE_DEFAULT_DAYS


def _customer_windows(
    customer_rebuy: pd.DataFrame | None,
    windows: dict[str, float],
    users: pd.DataFrame | None,
    prior: float,
) -> pd.DataFrame | None:
    """Rows user_idx, user_id, category, days for re-buyable categories: each customer's own median
    interval shrunk towards the category's window by `prior` pseudo-intervals."""
    if customer_rebuy is None or customer_rebuy.empty or not windows:
        return None
    own = customer_rebuy.assign(category=_cats(customer_rebuy["category"]))
    own = own[own["category"].isin(windows.keys())]
    if own.empty:
        return None
    n = own["n_intervals"].to_numpy(np.float64)
    cat_days = own["category"].map(windows).to_numpy(np.float64)
    days = (n * own["median_interval_days"].to_numpy(np.float64) + prior * cat_days) / (n + prior)
    out = pd.DataFrame(
        {
            "user_idx": own["user_idx"].to_numpy(np.int64),
            "category": own["category"].to_numpy(object),
            "n_intervals": own["n_intervals"].to_numpy(np.int64),
            "days": days,
        }
    )
    if users is not None and not users.empty:
        ids = users.set_index("user_idx")["user_id"].astype(str)
        out.insert(0, "user_id", out["user_idx"].map(ids).to_numpy(object))
    return out.reset_index(drop=True)


def load_policy(bundle: str | Path) -> RebuyPolicy:
    """The policy a serving bundle carries (`policy/`); bundles written before it was carried
    learn it from their `context/category_rebuy.parquet`; with neither, no category is re-bought."""
    bundle = Path(bundle)
    if (bundle / "policy" / "policy.json").exists():
        return RebuyPolicy.load(bundle / "policy")
    legacy = bundle / "context" / "category_rebuy.parquet"
    if legacy.exists():
        return RebuyPolicy.from_frame(pd.read_parquet(legacy), floor_hours=0.0)
    return RebuyPolicy()
