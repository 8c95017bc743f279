"""Social proof: how many customers bought an item in the last 7 days, kept current as events arrive.

`PurchaseCounts` holds one count per item, "purchases in the window" counted once per customer and
item (a customer who buys the same item twice in a week counts once, so one bulk buyer cannot make
an item look popular). It starts from the feature build's last purchase of each (customer, item)
(`serving.state.Histories`) and takes every purchase the service is told about afterwards
(`POST /events`, the change log replayed at start, `/merge`), so a purchase posted a moment ago
counts in the next answer. Reading a count is a dict lookup; purchases leave the window through a
heap ordered by time, popped lazily when a count is read (amortised O(log n) per purchase, never a
scan per request).

The contract shows a count only from `SHOW_FROM` on ("5 customers bought this this week"): smaller
numbers say nothing and could point at a single customer.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterable

WINDOW_S = 7 * 86_400.0
SHOW_FROM = 5


class PurchaseCounts:
    """Purchases per item in the last `window_s` seconds, once per (customer, item). Thread-safe:
    the state's sync thread adds while requests read."""

    def __init__(self, window_s: float = WINDOW_S, show_from: int = SHOW_FROM) -> None:
        self.window_s = float(window_s)
        self.show_from = int(show_from)
        self._counts: dict[str, int] = {}
        self._last: dict[tuple[str, str], float] = {}  # (user, item) -> newest purchase in the window
        self._heap: list[tuple[float, str, str]] = []  # (timestamp, user, item), oldest first
        self._lock = threading.Lock()

    def add_many(self, purchases: Iterable[tuple[str, str, float]], now: float | None = None) -> int:
        """Count purchases given as (user_id, item_id, epoch seconds); those already out of the
        window are ignored. Returns how many (customer, item) pairs are new in the window."""
        now = time.time() if now is None else float(now)
        horizon = now - self.window_s
        new = 0
        with self._lock:
            self._expire(horizon)
            for user, item, ts in purchases:
                ts = float(ts)
                if ts <= horizon:
                    continue
                key = (str(user), str(item))
                prev = self._last.get(key)
                if prev is None:
                    self._counts[key[1]] = self._counts.get(key[1], 0) + 1
                    new += 1
                elif ts <= prev:
                    continue  # an older (or the same) purchase of a pair already counted
                self._last[key] = ts
                heapq.heappush(self._heap, (ts, key[0], key[1]))
        return new

    def count(self, item_id: str, now: float | None = None) -> int:
        """Customers who bought `item_id` in the window ending at `now` (default: the wall clock)."""
        self.expire(now)
        return self._counts.get(item_id, 0)

    def social_proof(self, item_id: str) -> dict[str, int] | None:
        """{"purchases_7d": N} when N >= `show_from`, else None (call `expire` first: a response
        expires once, then reads each of its items)."""
        n = self._counts.get(item_id, 0)
        return {"purchases_7d": n} if n >= self.show_from else None

    def expire(self, now: float | None = None) -> None:
        """Drop the purchases that left the window (nothing to do in most calls: one comparison)."""
        horizon = (time.time() if now is None else float(now)) - self.window_s
        if self._heap and self._heap[0][0] <= horizon:
            with self._lock:
                self._expire(horizon)

    def _expire(self, horizon: float) -> None:
        heap, last, counts = self._heap, self._last, self._counts
        while heap and heap[0][0] <= horizon:
            ts, user, item = heapq.heappop(heap)
            if last.get((user, item)) != ts:
                continue  # a newer purchase of the pair replaced this entry
            del last[(user, item)]
            left = counts[item] - 1
            if left:
                counts[item] = left
            else:
                del counts[item]

    def __len__(self) -> int:
        """Items with at least one purchase in the window."""
        return len(self._counts)
