"""A bounded TTL cache on an injected Clock.

Owns: expiry (by `clock.monotonic()`, never time.time()) and size bounding (least recently
used first). Knows nothing about DNS: the resolver decides each entry's TTL (record TTL capped
by dns.max_cache_ttl, negative answers by dns.negative_cache_ttl) and what is cacheable.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from relay.clock import Clock

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, clock: Clock, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.hit_count = 0
        self.miss_count = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.miss_count += 1
            return None
        expires_at, value = entry
        if self._clock.monotonic() >= expires_at:
            del self._entries[key]
            self.miss_count += 1
            return None
        self._entries.move_to_end(key)
        self.hit_count += 1
        return value

    def put(self, key: K, value: V, ttl: float) -> None:
        """Keep `value` for `ttl` seconds; a TTL of zero or less is not cached (RFC 1035 §3.2.1)."""
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (self._clock.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)  # least recently used

    def remaining(self, key: K) -> float | None:
        """Seconds left before `key` expires, or None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry[0] - self._clock.monotonic()
        return left if left > 0 else None

    def clear(self) -> None:
        self._entries.clear()
