"""Reasons a marketer can read, one per shown item ("bought together with Litter box Deluxe").

The specific reasons (bought together, because you viewed, buy it again, new in your category)
come from the rule or boost that put the item there; a personal pick without one gets the recent
history item nearest to it in the category tree, else the category it was picked in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from serving import filters as F

BUY_AGAIN = "buy it again"


def label(category: str) -> str:
    """A category path as a marketer reads it: the leaf, words not slugs ('litter boxes')."""
    leaf = category.strip("/").rsplit("/", 1)[-1]
    return leaf.replace("-", " ").replace("_", " ") or "the shop"


def bought_together_with(title: str) -> str:
    return f"bought together with {title}"


def because_you_viewed(title: str) -> str:
    return f"because you viewed {title}"


def popular_in(category: str) -> str:
    return f"popular in {label(category)}"


def new_in(category: str) -> str:
    return f"new in {label(category)}"


@functools.lru_cache(maxsize=4096)
def _parts(path: str) -> tuple[str, ...]:
    """A category path's levels (a shop has few distinct paths; split once each)."""
    return tuple(path.split("/")) if path else ()


def history_reasons(cat: F.Catalog, tail: list[int]) -> Callable[[int], str]:
    """Reason for a personal pick without a more specific one, as a function of the item: "because
    you viewed <title>" of the recent history item (`tail`, newest first) sharing the deepest part
    of the category tree with it (the most recent on ties), else "picked for you in <category>".
    The history items' levels are split once and one answer is kept per category path (it depends
    on nothing else), so it costs nothing per catalogue item."""
    history = [(j, _parts(cat.categories[j])) for j in tail]
    by_path: dict[str, str] = {}

    def reason(i: int) -> str:
        path = cat.categories[i]
        got = by_path.get(path)
        if got is not None:
            return got
        parts = _parts(path)
        best, best_depth = None, 0
        for j, other in history:
            depth = 0
            for a, b in zip(parts, other, strict=False):
                if a != b:
                    break
                depth += 1
            if depth > best_depth:
                best, best_depth = j, depth
        got = because_you_viewed(cat.titles[best]) if best is not None else f"picked for you in {label(path)}"
        by_path[path] = got
        return got

    return reason
