"""The request's hard rules, over the current shop state: what may be shown at all.

- `context_mask`: in stock (in the customer's size: the request's, else their learned sizes),
  active, and of their gender (the request's preference, else the learned affinity); one (n,) bool
  array per (size, learned sizes, gender), kept in the snapshot's cache and copied per request.
- `PurchaseRules`: what a customer bought, against the learned re-buy policy
  (`training.policy.RebuyPolicy`, shared with evaluation; docs/policy.md): an item stays out until
  the policy lets it back (never, for a category nobody re-buys; for a re-buyable one after the
  customer's own or the category's window, and never within the policy's floor); a purchase a
  moment ago (the online store's newest events) stays out on every channel; after a durable
  purchase (a laptop) the other items of that category stay out for the learned period, while its
  accessories (other leaves) may come. `kept_out` is what every block takes out, the shared
  non-personal block of a customer without consent included.

The individual rules are the plain functions of serving/filters.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from serving import filters as F
from serving.ranking import sorted_unique

if TYPE_CHECKING:
    from serving.state import Histories, Snapshot


def context_key(
    size: str | None, learned_sizes: Mapping[str, str] | None, gender: str | None, affinity: str | None
) -> tuple[tuple, Mapping[str, str] | None, str | None]:
    """(cache key, the sizes that apply, the gender that applies) of a context mask: the request's
    size wins over learned ones, the request's gender over the learned affinity."""
    sizes = learned_sizes if not size else None
    g = F.resolve_gender(gender, affinity)
    if g not in ("women", "men"):
        g = None
    # Learned sizes keyed in their own order: nested garment paths apply one after another.
    return (size or None, tuple(sizes.items()) if sizes else (), g), sizes, g


def context_mask(
    snap: Snapshot, key: tuple, sizes: Mapping[str, str] | None, gender: str | None
) -> np.ndarray:
    """A fresh (n,) bool array the caller may change: stock (in size) and gender, from the
    snapshot's cache (`context_key` gives the arguments)."""

    def build() -> np.ndarray:
        mask = F.stock_mask(snap.catalog, size=key[0], sizes_by_garment=dict(sizes) if sizes else None)
        if gender is not None:
            mask &= F.gender_mask(snap.catalog, gender)
        mask.setflags(write=False)
        return mask

    return snap.masks.get(key, build).copy()


class Purchased(NamedTuple):
    """A customer's purchases as the rules see them now (item indices, ascending)."""

    keep_out: np.ndarray  # bought, and not yet (or never) allowed back
    due: np.ndarray  # bought before, window passed: "buy it again"
    durable: list[str]  # categories whose other items stay out (a durable bought recently)
    # the durables themselves (history and the online store), inside their window: (item, bought at
    # epoch s), for the accessory boost ("a laptop bought: its bag")
    durable_items: tuple[tuple[int, float], ...] = ()


class PurchaseRules:
    """One policy over the history's last purchases: when each may come back, precomputed at load
    (the policy is vectorised; a request only compares timestamps)."""

    def __init__(self, policy: Any, histories: Histories, row_user: np.ndarray) -> None:
        """row_user: (history rows,) the customer id of each row (for per-customer windows)."""
        self.policy = policy
        self.histories = histories
        users = row_user[histories.p_row] if len(histories.p_row) else np.zeros(0, dtype=object)
        self.back_at = policy.back_at(users, histories.p_category, histories.p_ts)
        self.durable_until = policy.durable_until(users, histories.p_category, histories.p_ts)

    def split(
        self, snap: Snapshot, row: int, user_id: str, fresh: list[tuple[int, float]], now: float
    ) -> Purchased:
        """row: the customer's history row (-1 none); fresh: (item, timestamp) of the online
        store's newest purchases."""
        cat = snap.catalog
        bought: list[int] = []
        excluded: set[int] = set()
        durable: list[str] = []
        durable_items: list[tuple[int, float]] = []
        if row >= 0:
            at = self.histories.purchases(row)
            if at.stop > at.start:
                items = self.histories.p_item[at]
                inside = items < cat.n
                items = items[inside]
                back = self.back_at[at][inside]
                bought = items.tolist()
                excluded = set(items[now < back].tolist())
                until = self.durable_until[at][inside]
                durable = [cat.categories[i] for i in items[now < until].tolist()]
                ts = self.histories.p_ts[at][inside]
                durable_items = list(zip(items[now < until].tolist(), ts[now < until].tolist(), strict=True))
        if fresh:
            f_items = np.asarray([i for i, _ in fresh], dtype=np.int64)
            f_ts = np.asarray([t for _, t in fresh], dtype=np.float64)
            f_cats = cat.categories[f_items]
            users = np.full(len(fresh), user_id, dtype=object)
            back = self.policy.back_at(users, f_cats, f_ts)
            # Never the item bought this very second, whatever the policy says (its floor is the
            # policy's to learn; this only guards a policy without one).
            back = np.maximum(back, f_ts + 1.0)
            bought += f_items.tolist()
            excluded |= set(f_items[now < back].tolist())
            until = self.policy.durable_until(users, f_cats, f_ts)
            durable += [c for c, u in zip(f_cats.tolist(), until.tolist(), strict=True) if now < u]
            durable_items += [
                (i, t)
                for i, t, u in zip(f_items.tolist(), f_ts.tolist(), until.tolist(), strict=True)
                if now < u
            ]
        keep_out, due = F.rebuy_split(
            np.asarray(bought, dtype=np.int64), np.asarray(sorted(excluded), dtype=np.int64)
        )
        return Purchased(keep_out, due, list(dict.fromkeys(c for c in durable if c)), tuple(durable_items))


def durable_block(cat: F.Catalog, categories: list[str]) -> np.ndarray:
    """Item indices under the durable categories just bought (the other laptops)."""
    parts = [cat.prefix_items[c] for c in categories if c in cat.prefix_items]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return parts[0] if len(parts) == 1 else sorted_unique(np.concatenate(parts))


def kept_out(cat: F.Catalog, bought: Purchased) -> np.ndarray:
    """Item indices a customer's purchases keep out of every block: the bought items not yet (or
    never) allowed back, and the other items of a durable category bought recently."""
    block = durable_block(cat, bought.durable)
    if not len(block):
        return bought.keep_out
    # np.union1d hashes: ~0.4 ms for a 5,000-item category of a big catalogue, ~13x this sort
    return sorted_unique(np.concatenate([bought.keep_out, block]))
