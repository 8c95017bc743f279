"""The live shop state: everything an answer depends on besides the model.

An answer is model × current shop state × rules (ARCHITECTURE.md). The model bundle holds what was
learned; this module holds what the shop *is* now:

- the catalogue (titles, categories, brands, prices, genders, new items, `active` flags) and the
  stock per size, as the per-item arrays of `serving.filters.Catalog`;
- the customers and their consent (`features.consent`), segments and gender affinity;
- what the last feature build knew of each customer's past (`Histories`: the interaction matrix,
  sequences, last purchases, learned sizes), keyed by the build's user index;
- purchases per item in the last 7 days (`purchases_7d`, serving/social.py: the social proof),
  from the histories and every purchase event the service is told about since (`observe`).

`ShopState.from_workspace(ws)` loads it from a workspace's validated tables and features;
`apply(table, rows)` takes the rows that `POST /catalog`, `/stock` and `/customers` (or the change
log, serving/sync.py) bring, so a change is in effect without a retrain. Requests read
`state.current`, an immutable `Snapshot`: a change builds the next snapshot beside the current one
and swaps it in with one assignment, so a request never sees half an update. Customers are the
exception: a consent or segment update replaces one `Customer` record in place (a dict assignment,
atomic under the GIL), because copying a million-customer table per update would not keep the
one-second promise.

Item indices are the state's own: the feature build's `item_idx` for the items it knew, then items
added later in the order they arrived. They never change while the process runs (an item leaving
the catalogue is marked inactive, not removed), so anything keyed by an item index stays valid.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.consent import consent_given
from serving import filters as F
from serving.cache import Cache
from serving.social import PurchaseCounts

if TYPE_CHECKING:
    from features.workspace import Workspace

log = logging.getLogger(__name__)

LIVE_TABLES: tuple[str, ...] = ("catalog", "stock", "customers")
CATALOG_FIELDS: tuple[str, ...] = ("title", "category", "brand", "price", "gender", "created_at", "active")
CUSTOMER_FIELDS: tuple[str, ...] = (
    "birth_year", "gender", "city", "signup_date", "consent_personalisation", "consent_email",
)  # fmt: skip
_CONTEXT_MASKS = 128  # stock-in-size x gender masks kept per snapshot (n bytes each)
_POPULAR_BLOCKS = 1024  # plain popular blocks kept per snapshot


@dataclass(frozen=True)
class Customer:
    """One customer as the rules see them. `row` is their row in `Histories` (-1: no history)."""

    row: int
    consent: bool  # personalisation (features.consent's rule already applied)
    consent_email: bool
    segment: str | None = None
    gender_affinity: str | None = None


@dataclass(frozen=True)
class Histories:
    """What the last feature build knew of each customer's past, by history row.

    user_items: CSR (rows, items at build time) interaction confidence (state item indices).
    sequences:  row -> state item indices in time order.
    sizes:      row -> {garment category path: learned size}.
    purchases:  the last purchase of each (customer, item), sorted by row: `p_row`, `p_item`,
                `p_category` (the item's category path) and `p_ts` (epoch s).
    """

    user_items: sp.csr_matrix
    sequences: Mapping[int, np.ndarray] = field(default_factory=dict)
    sizes: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    p_row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    p_item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    p_category: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    p_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    # row -> epoch seconds of `sequences[row]` (absent when the build wrote no times)
    sequence_ts: Mapping[int, np.ndarray] = field(default_factory=dict)

    def purchases(self, row: int) -> slice:
        """The positions of `row`'s purchases in the p_* arrays."""
        lo, hi = np.searchsorted(self.p_row, [row, row + 1])
        return slice(int(lo), int(hi))

    def sequence(self, row: int) -> np.ndarray:
        return self.sequences.get(row, _EMPTY)

    def sequence_times(self, row: int) -> np.ndarray | None:
        """Epoch seconds of `sequence(row)`, or None when the build did not record them."""
        return self.sequence_ts.get(row) if self.sequence_ts else None

    @classmethod
    def empty(cls, n_items: int = 0) -> Histories:
        return cls(sp.csr_matrix((0, n_items), dtype=np.float32))


_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)


@dataclass(frozen=True)
class Snapshot:
    """One consistent version of the catalogue and stock, with what is derived from them.

    popularity:  (n,) learned popularity (features' item_stats; 0 for items added since).
    segment_pop: segment -> (n,) interaction mass of that segment's customers.
    interacted:  (n,) bool, the item has interactions in the history (False: a new item).
    masks / popular_blocks: caches of this snapshot (a stock change starts new ones).
    structure:   caches that depend on the catalogue's items and categories only, kept across
                 stock changes (a catalogue change starts new ones).
    """

    version: int
    catalog: F.Catalog
    popularity: np.ndarray
    segment_pop: Mapping[str, np.ndarray]
    interacted: np.ndarray
    created_ts: np.ndarray  # (n,) epoch s of created_at (nan unknown)
    masks: Cache = field(default_factory=lambda: Cache(_CONTEXT_MASKS))
    popular_blocks: Cache = field(default_factory=lambda: Cache(_POPULAR_BLOCKS))
    structure: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.catalog.n


Listener = Callable[[str, Snapshot], None]


class ShopState:
    """The shop as it is now; `current` is what a request reads. Thread-safe `apply`."""

    def __init__(
        self,
        items: pd.DataFrame,
        *,
        stock: pd.DataFrame | None = None,
        customers: Mapping[str, Customer] | None = None,
        histories: Histories | None = None,
        has_customers_table: bool = False,
        extra_customers: pd.DataFrame | None = None,
    ) -> None:
        """items: one row per state item index (0..n-1 in order): item_id and the catalogue
        columns, `popularity` / `n_users` when learned. stock: item_id, size, quantity.
        customers: user_id -> Customer. extra_customers: the raw customers table's other columns
        (birth_year, city, ...) for the inspection pages."""
        items = items.reset_index(drop=True).copy()
        items["item_id"] = items["item_id"].astype(str)
        if "active" not in items.columns:
            items["active"] = True
        self.has_customers_table = has_customers_table
        self.histories = histories if histories is not None else Histories.empty(len(items))
        self.customers: dict[str, Customer] = dict(customers or {})
        self.customer_details = extra_customers
        self._items = items
        self._stock: dict[str, dict[str, int]] = _stock_dict(stock)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._version = 0
        self.forgotten: set[str] = set()
        self.source = "frames"  # where the state was loaded from, for /readyz
        self._erasures: Callable[[str], bool] | None = None
        self.purchases_7d = PurchaseCounts()
        self._count_history_purchases()
        self.current = self._snapshot(items, new_structure=True)

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_workspace(cls, ws: Workspace) -> ShopState:
        """The state of a workspace after its last `features build` (validated tables + features)."""
        feat = ws.features_dir
        if not (feat / "items.parquet").exists():
            raise FileNotFoundError(
                f"{ws.root} has no features: run `shoprec features build --data {ws.root}`"
            )
        items = pd.read_parquet(ws.feature("items")).sort_values("item_idx").reset_index(drop=True)
        stats = _read(ws.feature("item_stats"))
        if stats is not None and "item_idx" in stats:
            keep = [c for c in ("item_idx", "n_users", "popularity", "trend") if c in stats.columns]
            items = items.merge(stats[keep], on="item_idx", how="left")
        validated_catalog = _read(ws.validated("catalog"))
        if validated_catalog is not None and "active" in validated_catalog.columns:
            items = items.merge(validated_catalog[["item_id", "active"]], on="item_id", how="left")
            items["active"] = items["active"].fillna(True).astype(bool)
        stock = _read(ws.validated("stock"))
        raw_customers = _read(ws.validated("customers"))
        users = _read(ws.feature("users"))
        n_rows = len(users) if users is not None else 0
        histories = _histories_from_features(ws, n_rows, len(items))
        profiles = _read(ws.feature("profiles"))
        customers = _customers(profiles, raw_customers)
        return cls(
            items.drop(columns=["item_idx"]),
            stock=stock,
            customers=customers,
            histories=histories,
            has_customers_table=raw_customers is not None,
            extra_customers=raw_customers,
        )

    @classmethod
    def from_model_items(cls, items: pd.DataFrame) -> ShopState:
        """A state that knows only a model's own item table (no stock, no customers, no history):
        for a bundle served without a workspace."""
        items = items.sort_values("item_idx").drop(columns=["item_idx"]).reset_index(drop=True)
        return cls(items)

    def ensure_items(self, item_ids: Iterable[str]) -> int:
        """Give every id in `item_ids` a place in the state; the ones the catalogue lacks come in
        inactive (a model may know items the shop no longer sells). Returns how many were added."""
        index = self.current.catalog.index
        missing = list(dict.fromkeys(str(i) for i in item_ids if str(i) not in index))
        if missing:
            self.apply("catalog", [{"item_id": i, "active": False} for i in missing])
        return len(missing)

    def _count_history_purchases(self) -> None:
        """Start the 7-day purchase counts from the histories' last purchase of each (customer,
        item): a customer who bought an item in the window has their last purchase of it there."""
        h = self.histories
        if not len(h.p_ts):
            return
        import time

        recent = np.flatnonzero(h.p_ts > time.time() - self.purchases_7d.window_s)
        if not len(recent):
            return
        row_user = {c.row: uid for uid, c in self.customers.items() if c.row >= 0}
        ids = self._items["item_id"].to_numpy(dtype=object)
        self.purchases_7d.add_many(
            (row_user.get(int(h.p_row[j]), f"#row{int(h.p_row[j])}"), ids[int(h.p_item[j])], float(h.p_ts[j]))
            for j in recent.tolist()
            if int(h.p_item[j]) < len(ids)
        )

    def observe(self, events: Iterable[Any]) -> int:
        """Count the purchases among `events` (serving.store.Event records) of customers not erased
        (consent does not matter: a count over customers is not personal); returns how many
        (customer, item) pairs are new in the 7-day window."""
        return self.purchases_7d.add_many(
            (e.user_id, e.item_id, e.timestamp)
            for e in events
            if e.event_type == "purchase" and not self.is_forgotten(e.user_id)
        )

    # -- reading --------------------------------------------------------------------------------
    @property
    def items(self) -> pd.DataFrame:
        """The catalogue as a frame, one row per state item index (a copy: for reports, not requests)."""
        return self._items.copy()

    def stock_of(self, item_id: str) -> dict[str, int]:
        """{size ('' unsized): quantity} of one item (empty when the stock table says nothing)."""
        return dict(self._stock.get(str(item_id), {}))

    def customer(self, user_id: str | None) -> Customer | None:
        return None if user_id is None else self.customers.get(str(user_id))

    def is_forgotten(self, user_id: str) -> bool:
        """Erased in this process (`forget`) or in the workspace (`shoprec forget`, any process)."""
        if user_id in self.forgotten:
            return True
        return self._erasures is not None and self._erasures(user_id)

    def may_personalise(self, user_id: str) -> bool:
        """Whether the customer's events may shape their answers: not erased, and consent given
        (a visitor the shop does not know has refused nothing: their session still counts)."""
        if self.is_forgotten(user_id):
            return False
        c = self.customers.get(user_id)
        return c is None or c.consent

    def watch_erasures(self, check: Callable[[str], bool]) -> None:
        """`check(user_id)` says whether the workspace's forget log erased the customer (cheap:
        features.privacy keeps the salted hashes and re-reads them only when the log grew)."""
        self._erasures = check

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(kind, snapshot)` after every applied change (kind: catalog|stock|customers)."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # -- changes ----------------------------------------------------------------------------------
    def apply(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Upsert rows of a live table; returns how many rows were applied. Fields a row leaves out
        keep their values (a price update needs only item_id and price). Raises ValueError naming
        the first bad row, before anything is applied."""
        rows = [dict(r) for r in rows]
        if not rows:
            return 0
        self.check(table, rows)
        with self._lock:
            if table == "catalog":
                self._apply_catalog(rows)
            elif table == "stock":
                self._apply_stock(rows)
            else:
                self._apply_customers(rows)
            listeners = list(self._listeners)
            snap = self.current
        for listener in listeners:
            try:
                listener(table, snap)
            except Exception:  # one engine's refresh must not stop the others'
                log.exception("shop state listener failed after a %s change", table)
        return len(rows)

    @staticmethod
    def check(table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Raise ValueError naming the first row of `table` that `apply` would refuse."""
        if table not in LIVE_TABLES:
            raise ValueError(f"unknown live table {table!r}; known: {', '.join(LIVE_TABLES)}")
        check = {"catalog": _check_catalog_row, "stock": _check_stock_row, "customers": _check_customer_row}
        for n, row in enumerate(rows):
            try:
                check[table](row)
            except ValueError as e:
                raise ValueError(f"{table} row {n}: {e}") from None

    def forget(self, user_id: str) -> None:
        """Drop the customer: from now on they are unknown (non-personal answers only)."""
        with self._lock:
            self.forgotten.add(str(user_id))
            self.customers.pop(str(user_id), None)

    def _apply_catalog(self, rows: list[dict[str, Any]]) -> None:
        items = self._items
        index = self.current.catalog.index
        new_rows = []
        items = items.copy()
        for row in rows:
            iid = str(row["item_id"])
            i = index.get(iid)
            if i is None:
                new_rows.append({"item_id": iid, "active": True, **_catalog_values(row)})
                index = {**index, iid: -1}  # a repeat of the same new id in this batch updates it
                continue
            if i < 0:
                target = next(r for r in new_rows if r["item_id"] == iid)
                target.update(_catalog_values(row))
                continue
            for key, value in _catalog_values(row).items():
                if key not in items.columns:
                    items[key] = None
                items.at[i, key] = value
        if new_rows:
            items = pd.concat([items, pd.DataFrame(new_rows)], ignore_index=True)
        items["active"] = items["active"].fillna(True).astype(bool)
        self._items = items
        self.current = self._snapshot(items, new_structure=True)

    def _apply_stock(self, rows: list[dict[str, Any]]) -> None:
        changed: dict[str, dict[str, int]] = {}
        for row in rows:
            iid = str(row["item_id"])
            sizes = changed.setdefault(iid, dict(self._stock.get(iid, {})))
            sizes[_size(row.get("size"))] = int(row["quantity"])
        self._stock.update(changed)
        snap = self.current
        catalog = F.with_stock(snap.catalog, {iid: sizes for iid, sizes in changed.items()})
        self._version += 1
        self.current = dataclasses.replace(
            snap, version=self._version, catalog=catalog,
            masks=Cache(_CONTEXT_MASKS), popular_blocks=Cache(_POPULAR_BLOCKS),
        )  # fmt: skip

    def _apply_customers(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            uid = str(row["user_id"])
            old = self.customers.get(uid)
            given = {k: row[k] for k in ("consent_personalisation", "consent_email") if k in row}
            rule = {"has_customers_table": True}  # a shop that sends customers keeps a customers table
            self.customers[uid] = Customer(
                row=old.row if old is not None else -1,
                consent=consent_given(given["consent_personalisation"], **rule)
                if "consent_personalisation" in given
                else (old.consent if old is not None else consent_given(None, **rule)),
                consent_email=consent_given(given["consent_email"], **rule)
                if "consent_email" in given
                else (old.consent_email if old is not None else consent_given(None, **rule)),
                segment=old.segment if old is not None else None,
                gender_affinity=old.gender_affinity if old is not None else None,
            )
        if not self.has_customers_table:
            # From the first customer row on, the shop keeps a customers table: everyone else has
            # not given consent either (features.consent).
            self.has_customers_table = True
            for uid, c in list(self.customers.items()):
                if uid not in {str(r["user_id"]) for r in rows}:
                    self.customers[uid] = dataclasses.replace(c, consent=False, consent_email=False)
        self._version += 1
        self.current = dataclasses.replace(self.current, version=self._version)

    # -- snapshots --------------------------------------------------------------------------------
    def _snapshot(self, items: pd.DataFrame, *, new_structure: bool) -> Snapshot:
        catalog = F.build_catalog(items, _stock_frame(self._stock))
        catalog = F.with_active(catalog, items["active"].to_numpy(dtype=bool))
        n = catalog.n
        h = self.histories
        ui = h.user_items
        n_hist = ui.shape[1]
        mass = np.zeros(n)
        interacted = np.zeros(n, dtype=bool)
        if ui.nnz:
            mass[:n_hist] = np.asarray(ui.sum(axis=0)).ravel()[:n]
            interacted[:n_hist] = (np.diff(ui.tocsc().indptr) > 0)[:n]
        popularity = catalog.popularity if catalog.popularity.any() else mass
        segment_pop: dict[str, np.ndarray] = {}
        rows_by_segment: dict[str, list[int]] = {}
        for c in self.customers.values():
            if c.segment and 0 <= c.row < ui.shape[0]:
                rows_by_segment.setdefault(c.segment, []).append(c.row)
        for s, rows in rows_by_segment.items():
            seg = np.zeros(n)
            seg[:n_hist] = np.asarray(ui[np.asarray(rows)].sum(axis=0)).ravel()[:n]
            segment_pop[s] = seg
        created = pd.to_datetime(_col(items, "created_at"), utc=True, errors="coerce")
        created_ts = (created.astype("int64") / 1e9).where(created.notna()).to_numpy(dtype=np.float64)
        for a in (popularity, interacted, created_ts):
            a.setflags(write=False)
        self._version += 1
        return Snapshot(
            version=self._version,
            catalog=catalog,
            popularity=popularity,
            segment_pop=segment_pop,
            interacted=interacted,
            created_ts=created_ts,
        )


# -- helpers ------------------------------------------------------------------------------------
def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series([None] * len(frame), dtype=object)


def _size(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _stock_dict(stock: pd.DataFrame | None) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    if stock is None or stock.empty:
        return out
    qty = pd.to_numeric(stock["quantity"], errors="coerce").fillna(0).astype(np.int64)
    sizes = stock["size"].astype(object).where(stock["size"].notna(), "") if "size" in stock else None
    for i, (iid, q) in enumerate(zip(stock["item_id"].astype(str), qty, strict=True)):
        s = "" if sizes is None else str(sizes.iat[i])
        out.setdefault(iid, {})[s] = int(q)
    return out


def _stock_frame(stock: Mapping[str, Mapping[str, int]]) -> pd.DataFrame:
    rows = [(iid, s, q) for iid, sizes in stock.items() for s, q in sizes.items()]
    return pd.DataFrame(rows, columns=["item_id", "size", "quantity"])


def _catalog_values(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in CATALOG_FIELDS if k in row}


def _check_catalog_row(row: Mapping[str, Any]) -> None:
    _need_id(row, "item_id")
    price = row.get("price")
    if price is not None and (not isinstance(price, int | float) or isinstance(price, bool) or price < 0):
        raise ValueError(f"price must be a number >= 0, got {price!r}")
    if row.get("gender") not in (None, "", "women", "men", "unisex"):
        raise ValueError(f"gender must be women, men, unisex or empty, got {row.get('gender')!r}")
    if "active" in row and not isinstance(row["active"], bool):
        raise ValueError(f"active must be true or false, got {row['active']!r}")


def _check_stock_row(row: Mapping[str, Any]) -> None:
    _need_id(row, "item_id")
    q = row.get("quantity")
    if isinstance(q, bool) or not isinstance(q, int | np.integer) or q < 0:
        raise ValueError(f"quantity must be an integer >= 0, got {q!r}")
    if row.get("size") is not None and not isinstance(row["size"], str):
        raise ValueError(f"size must be a string (empty for unsized items), got {row['size']!r}")


def _check_customer_row(row: Mapping[str, Any]) -> None:
    _need_id(row, "user_id")
    for key in ("consent_personalisation", "consent_email"):
        if row.get(key) is not None and not isinstance(row[key], bool):
            raise ValueError(f"{key} must be true, false or null, got {row[key]!r}")


def _need_id(row: Mapping[str, Any], key: str) -> None:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a non-empty string")


def _customers(profiles: pd.DataFrame | None, raw: pd.DataFrame | None) -> dict[str, Customer]:
    """user_id -> Customer from features' profiles (history rows, segments, affinity) and the
    validated customers table (consent: features.consent's rule, from the raw table itself so a
    customer without events is known too)."""
    has_table = raw is not None
    out: dict[str, Customer] = {}
    consent: dict[str, tuple[Any, Any]] = {}
    if raw is not None:
        cp = _col(raw, "consent_personalisation").astype(object)
        ce = _col(raw, "consent_email").astype(object)
        consent = dict(zip(raw["user_id"].astype(str), zip(cp, ce, strict=True), strict=True))
    if profiles is not None and len(profiles):
        seg = _col(profiles, "segment").astype(object)
        aff = _col(profiles, "gender_affinity").astype(object)
        for uid, row, s, a in zip(
            profiles["user_id"].astype(str), profiles["user_idx"], seg, aff, strict=True
        ):
            cp, ce = consent.get(uid, (None, None))
            out[uid] = Customer(
                int(row),
                consent_given(cp, has_customers_table=has_table),
                consent_given(ce, has_customers_table=has_table),
                s if isinstance(s, str) else None,
                a if isinstance(a, str) else None,
            )
    for uid, (cp, ce) in consent.items():  # customers without any event yet
        if uid not in out:
            out[uid] = Customer(
                -1, consent_given(cp, has_customers_table=True), consent_given(ce, has_customers_table=True)
            )
    return out


def _histories_from_features(ws: Workspace, n_rows: int, n_items: int) -> Histories:
    inter = _read(ws.feature("interactions"))
    if inter is not None and len(inter):
        ui = sp.csr_matrix(
            (
                inter["value"].to_numpy(np.float32),
                (inter["user_idx"].to_numpy(np.int64), inter["item_idx"].to_numpy(np.int64)),
            ),
            shape=(max(n_rows, int(inter["user_idx"].max()) + 1), n_items),
        )
    else:
        ui = sp.csr_matrix((n_rows, n_items), dtype=np.float32)
    sequences: dict[int, np.ndarray] = {}
    times: dict[int, np.ndarray] = {}
    seq = _read(ws.feature("sequences"))
    if seq is not None:
        for u, items in zip(seq["user_idx"].to_numpy(), seq["item_idx"], strict=True):
            a = np.asarray(items, dtype=np.int64)
            a.setflags(write=False)
            sequences[int(u)] = a
        if "ts" in seq.columns:  # next-basket models group a history into baskets by time
            for u, ts in zip(seq["user_idx"].to_numpy(), seq["ts"], strict=True):
                t = np.asarray(ts, dtype=np.int64)
                t.setflags(write=False)
                times[int(u)] = t
    sizes: dict[int, dict[str, str]] = {}
    sz = _read(ws.feature("sizes"))
    if sz is not None:
        for u, g, s in zip(sz["user_idx"], sz["garment"], sz["size"], strict=True):
            sizes.setdefault(int(u), {})[str(g)] = str(s)
    histories = histories_from_purchases(ui, sequences, sizes, _read(ws.feature("last_purchases")))
    return dataclasses.replace(histories, sequence_ts=times) if times else histories


def histories_from_purchases(
    user_items: sp.csr_matrix,
    sequences: Mapping[int, np.ndarray],
    sizes: Mapping[int, Mapping[str, str]],
    last_purchases: pd.DataFrame | None,
) -> Histories:
    """Histories from the features' tables (last_purchases: user_idx, item_idx, category, last_ts)."""
    if last_purchases is None or last_purchases.empty:
        return Histories(sp.csr_matrix(user_items, dtype=np.float32), sequences, sizes)
    lp = last_purchases
    order = np.argsort(lp["user_idx"].to_numpy(), kind="stable")
    cats = _col(lp, "category").astype(object).where(_col(lp, "category").notna(), "")
    return Histories(
        sp.csr_matrix(user_items, dtype=np.float32),
        sequences,
        sizes,
        lp["user_idx"].to_numpy(np.int64)[order],
        lp["item_idx"].to_numpy(np.int64)[order],
        cats.astype(str).str.strip("/").to_numpy(dtype=object)[order],
        lp["last_ts"].to_numpy(np.float64)[order],
    )
