"""TtlCache on a FakeClock: expiry after the TTL, zero TTL, LRU bound."""

from __future__ import annotations

import pytest

from relay.clock import FakeClock
from relay.dns.cache import TtlCache


def test_entry_expires_after_its_ttl() -> None:
    clock = FakeClock()
    cache: TtlCache[str, int] = TtlCache(clock)
    cache.put("a", 1, ttl=60)
    clock.advance(59.9)
    assert cache.get("a") == 1
    assert cache.remaining("a") == pytest.approx(0.1)
    clock.advance(0.1)
    assert cache.get("a") is None
    assert len(cache) == 0
    assert (cache.hit_count, cache.miss_count) == (1, 1)


def test_zero_ttl_is_not_cached_and_replaces_an_old_entry() -> None:
    clock = FakeClock()
    cache: TtlCache[str, int] = TtlCache(clock)
    cache.put("a", 1, ttl=60)
    cache.put("a", 2, ttl=0)
    assert cache.get("a") is None


def test_put_refreshes_value_and_ttl() -> None:
    clock = FakeClock()
    cache: TtlCache[str, int] = TtlCache(clock)
    cache.put("a", 1, ttl=10)
    clock.advance(8)
    cache.put("a", 2, ttl=10)
    clock.advance(8)
    assert cache.get("a") == 2


def test_bounded_size_drops_least_recently_used() -> None:
    cache: TtlCache[str, int] = TtlCache(FakeClock(), max_entries=2)
    cache.put("a", 1, 60)
    cache.put("b", 2, 60)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3, 60)
    assert len(cache) == 2
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TtlCache(FakeClock(), max_entries=0)
