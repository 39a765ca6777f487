"""A small bounded TTL cache for the authentication hot path (one event loop, no locking needed)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """Entries expire after their own TTL; past ``max_entries`` the least recently stored one goes.

    The bound matters: unknown keys are cached too (negative caching), and anyone can send unknown keys.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float) -> tuple[bool, V | None]:
        """(hit, value); a hit can carry None (a cached "not found")."""
        item = self._data.get(key)
        if item is None:
            return False, None
        expires, value = item
        if expires <= now:
            del self._data[key]
            return False, None
        return True, value

    def put(self, key: K, value: V, ttl: float, now: float) -> None:
        self._data[key] = (now + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def drop_where(self, predicate: Callable[[V], bool]) -> int:
        """Remove every entry whose value matches (admin changes: rare, so a scan is fine)."""
        doomed = [k for k, (_, v) in self._data.items() if predicate(v)]
        for k in doomed:
            del self._data[k]
        return len(doomed)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
