"""Who engaged lately: recipients who opened or clicked (a person, not a machine).

The warm-up's engaged lane (relay/warmup/lanes.py) sends mail to recently engaged
recipients first, so a cold IP spends its small cap on mail that builds reputation.
Each open or click not flagged automated (relay/tracking/automated.py) writes the
recipient's address and the time to the spool, sub-database "engaged":

    lower-cased address (at most MAX_ADDRESS bytes) -> 8-byte big-endian milliseconds

one key per recipient (a newer hit overwrites), so its size is bounded by the recipients
who engaged within warmup.engaged_window; `prune_op` forgets the older ones. Writes go
through the group commit (no sync of their own), read by every worker process.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable
from typing import Any, Protocol

DB = "engaged"
MAX_ADDRESS = 320            # RFC 5321's longest address; longer ones are never engaged
MAX_CHECKED = 50             # recipients of one message looked at for its lane
PRUNE_KEYS = 100_000         # keys looked at by one prune op (the rest: the next one)
_MS = struct.Struct(">Q")


class Spool(Protocol):
    def named_db(self, name: str) -> Any: ...
    def read(self, fn: Any) -> Any: ...
    def write_soon(self, fn: Any, size: int = 0) -> asyncio.Future[Any]: ...


def _key(address: str) -> bytes | None:
    key = address.strip().lower().encode("utf-8", "replace")
    return key if 0 < len(key) <= MAX_ADDRESS else None


class Engagement:
    """Last engagement time per recipient, in the spool."""

    def __init__(self, spool: Spool, window: Callable[[], float],
                 now: Callable[[], float]) -> None:
        self.spool = spool
        self.window = window   # seconds (warmup.engaged_window, read at each call)
        self.now = now

    def engaged(self, address: str, at: float) -> asyncio.Future[Any] | None:
        """Note that `address` opened or clicked at `at` (queued for the next commit)."""
        key = _key(address)
        if key is None:
            return None
        db = self.spool.named_db(DB)
        value = _MS.pack(max(0, int(at * 1000)))

        def op(txn: Any) -> None:
            old = txn.get(key, db=db)
            if old is None or bytes(old) < value:
                txn.put(key, value, db=db)

        return self.spool.write_soon(op, size=len(key) + 8)

    def last(self, address: str) -> float | None:
        """When `address` last engaged, or None."""
        key = _key(address)
        if key is None:
            return None
        db = self.spool.named_db(DB)
        raw = self.spool.read(lambda txn: txn.get(key, db=db))
        return None if raw is None or len(raw) != 8 else _MS.unpack(bytes(raw))[0] / 1000

    def any_engaged(self, addresses: Iterable[str]) -> bool:
        """Whether one of the (first MAX_CHECKED) `addresses` opened or clicked within
        the window: one read transaction, at most MAX_CHECKED gets."""
        window = self.window()
        if window <= 0:
            return False
        since = _MS.pack(max(0, int((self.now() - window) * 1000)))
        keys = [k for k in (_key(a) for a, _ in zip(addresses, range(MAX_CHECKED),
                                                    strict=False)) if k is not None]
        if not keys:
            return False
        db = self.spool.named_db(DB)

        def read(txn: Any) -> bool:
            for k in keys:
                raw = txn.get(k, db=db)
                if raw is not None and bytes(raw) >= since:
                    return True
            return False

        return bool(self.spool.read(read))


def prune_op(spool: Spool, before: float,
             start: bytes = b"") -> Callable[[Any], bytes]:
    """An op forgetting the recipients whose last engagement is before `before`, looking
    at most PRUNE_KEYS keys from `start`; it returns where the next op goes on (b"": the
    end was reached)."""
    db = spool.named_db(DB)
    bound = _MS.pack(max(0, int(before * 1000)))

    def op(txn: Any) -> bytes:
        old: list[bytes] = []
        resume = b""
        with txn.cursor(db=db) as cur:
            found = cur.set_range(start) if start else cur.first()
            seen = 0
            while found:
                if seen >= PRUNE_KEYS:
                    resume = bytes(cur.key())
                    break
                if bytes(cur.value()) < bound:
                    old.append(bytes(cur.key()))
                seen += 1
                found = cur.next()
        for key in old:
            txn.delete(key, db=db)
        return resume

    return op
