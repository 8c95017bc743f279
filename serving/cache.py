"""One bounded cache for everything the engine keeps between requests.

Context masks, plain popular blocks, neighbour lists, fill orders and page scans all follow the
same rule: computed on first use from data that does not change while they are kept, the oldest
dropped first past a size, safe under the service's threads. A race only computes a value twice,
never returns a wrong one. The cache is owned by whatever its values depend on (a `View` of the
shop state, or the engine for what depends on the model alone), so a state change that makes a
new view starts with fresh caches and nothing has to be invalidated by hand.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Cache(Generic[K, V]):
    """A thread-safe LRU of at most `maxsize` entries; `get(key, compute)` fills it on a miss."""

    __slots__ = ("_data", "_lock", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"cache size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
                return hit
        value = compute()  # outside the lock: a slow computation never blocks other keys
        self.put(key, value)
        return value

    def peek(self, key: K) -> V | None:
        """The kept value, or None (without computing or reordering)."""
        return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
