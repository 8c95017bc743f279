"""The visit's context (device, city, weather) as a boost, only where it was learned to matter.

The bundle's `training.context.ContextLift` holds the (field, value, category) lifts that passed its
significance test; nothing else ever boosts. For a request whose context names such a value
(`weather: rain`), the items under the lifted categories get `strength(lift)` (log2 of the lift,
capped at 1) in normalised score units, times the engine's `context_boost`, and a reason a marketer
reads ("popular on rain days"). The boosted items of one (snapshot structure, context) are found
once and kept in the snapshot's structure cache.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from serving import reasons as R
from training.context import ContextLift, strength

if TYPE_CHECKING:
    from serving import filters as F


def reason(field: str, value: str, category: str) -> str:
    """Why a context-boosted item is shown."""
    if field == "weather":
        return f"{R.label(category)}: popular on {value} days"
    if field == "device":
        return f"{R.label(category)}: popular on {value}"
    return f"{R.label(category)}: popular in {value}"


_tokens = itertools.count()


class ContextBoost:
    """Boosts from one bundle's learned lifts. `token` keys its entries in the caches a snapshot
    shares between the champion's and the challenger's engines."""

    def __init__(self, lift: ContextLift | None) -> None:
        self.token = next(_tokens)
        self.rules = lift.rules if lift else {}
        self.fields = tuple(sorted({f for f, _ in self.rules}))

    def key(self, context: Any) -> tuple:
        """The (field, value) pairs of `context` that have learned lifts (empty: no boost)."""
        if not self.rules:
            return ()
        out = []
        for f in self.fields:
            v = getattr(context, f, None)
            if v is None:
                continue
            v = str(v).strip()
            v = v if f == "city" else v.lower()
            if (f, v) in self.rules:
                out.append((f, v))
        return tuple(out)

    def items(
        self, cat: F.Catalog, structure: dict, key: tuple, popularity: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(item indices ascending, boost strength in [0, 1], reason per item) for a context key.
        With `popularity`, an item's strength is scaled by its popularity relative to the most
        popular item of its category: the context says "more jackets", not which jacket, and the
        jackets people buy are the likely ones."""
        cache_key = ("context_boost", self.token, key)
        got = structure.get(cache_key)
        if got is not None:
            return got
        best: dict[int, tuple[float, str]] = {}
        for f, v in key:
            for category, lift in self.rules[(f, v)]:
                under = cat.prefix_items.get(category)
                if under is None:
                    continue
                s = np.full(len(under), strength(lift))
                if popularity is not None and len(under):
                    pop = np.asarray(popularity, dtype=np.float64)[under]
                    top = pop.max()
                    s = s * (pop / top if top > 0 else 1.0)
                text = reason(f, v, category)
                for i, x in zip(under.tolist(), s.tolist(), strict=True):
                    if x > 0 and (i not in best or best[i][0] < x):
                        best[i] = (x, text)
        ids = np.asarray(sorted(best), dtype=np.int64)
        vals = np.asarray([best[i][0] for i in ids.tolist()], dtype=np.float64)
        texts = [best[i][1] for i in ids.tolist()]
        return structure.setdefault(cache_key, (ids, vals, texts))

    def boost(
        self,
        cat: F.Catalog,
        idx: np.ndarray,
        context: Any,
        structure: dict | None = None,
        popularity: Any = None,
    ) -> tuple[np.ndarray, list[str]]:
        """(strength per item of `idx`, reason per item ('' unboosted)) for a request's context."""
        key = self.key(context)
        out = np.zeros(len(idx))
        texts = [""] * len(idx)
        if not key or not len(idx):
            return out, texts
        ids, vals, reasons = self.items(cat, structure if structure is not None else {}, key, popularity)
        pos = np.searchsorted(ids, idx)
        pos = np.minimum(pos, max(len(ids) - 1, 0))
        hit = (ids[pos] == idx) if len(ids) else np.zeros(len(idx), dtype=bool)
        out[hit] = vals[pos[hit]]
        for j in np.flatnonzero(hit).tolist():
            texts[j] = reasons[int(pos[j])]
        return out, texts
