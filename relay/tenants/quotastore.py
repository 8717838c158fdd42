"""Quota counters as stored: the queue's "quota" sub-database, so a restart keeps them.

Key: the scope (UTF-8), a NUL, then the second as 8 bytes big-endian, so one scope's keys
are together and in time order. Value: the count, 8 bytes big-endian.

Writes are ops for the store's group commit, never a transaction or a sync of their own:
`commit_op()` runs inside the write transaction of the message whose recipients it
counts (relay/queue/store.py `submit_record(also=...)`), so the counts are durable
exactly when the message is. Each op adds to what is stored (read, add, write inside the
transaction), so several processes on one spool never overwrite each other's counts.
This module opens no environment and never awaits: it reads through a store's
`read`/`named_db` and writes through ops (like relay/warmup/store.py).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from typing import Any

from relay.tenants.quota import QuotaBook, Reservation
from relay.tenants.window import WINDOW_SECONDS

DB = "quota"
_SECOND = struct.Struct(">Q")
_SEP = b"\x00"


def key(scope: str, second: int) -> bytes:
    return scope.encode("utf-8") + _SEP + _SECOND.pack(second)


def parse_key(raw: bytes) -> tuple[str, int]:
    return raw[:-9].decode("utf-8"), _SECOND.unpack(raw[-8:])[0]


def counts_of(reservations: Iterable[Reservation]) -> dict[bytes, int]:
    """The stored keys and counts the reservations add (one key per scope and second)."""
    by_second: dict[tuple[str, int], int] = {}
    for r in reservations:
        for scope, second, n in r.entries:
            at = (scope, second)
            by_second[at] = by_second.get(at, 0) + n
    return {key(scope, second): n for (scope, second), n in by_second.items()}


def commit_op(store: Any, reservations: Iterable[Reservation]) -> Callable[[Any], None]:
    """An op adding the reservations' counts, for the accepting message's transaction.
    The counts are gathered now (on the caller's thread), written in the op."""
    db = store.named_db(DB)
    counts = counts_of(reservations)

    def op(txn: Any) -> None:
        for k, n in counts.items():
            raw = txn.get(k, db=db)
            stored = _SECOND.unpack(raw)[0] if raw is not None else 0
            txn.put(k, _SECOND.pack(stored + n), db=db)
    return op


def stored_counts(store: Any, now: float,
                  scope: str | None = None) -> list[tuple[str, int, int]]:
    """(scope, second, count) of every stored count still inside the 24-hour window at
    `now`, of one scope or all, in one read transaction."""
    edge = math.floor(now) - WINDOW_SECONDS
    prefix = scope.encode("utf-8") + _SEP if scope is not None else b""
    out: list[tuple[str, int, int]] = []
    for k, v in store.read_db(DB, prefix):
        s, second = parse_key(k)
        if second > edge:
            out.append((s, second, _SECOND.unpack(v)[0]))
    return out


def load(store: Any, book: QuotaBook, now: float) -> None:
    """Rebuild the book's daily windows from the spool (at start)."""
    book.load(stored_counts(store, now), now)


def sent_last_24h(store: Any, scope: str, now: float) -> int:
    """SentLast24Hours of `scope` as stored (the CLI, which has no QuotaBook)."""
    return sum(n for _, _, n in stored_counts(store, now, scope))


def prune_op(store: Any, now: float, limit: int = 10_000) -> Callable[[Any], int]:
    """An op deleting up to `limit` stored counts that have left the window at `now`;
    returns how many it deleted (run it again while that is `limit`). It visits only
    the old keys and one key per scope (each scope's keys are in time order)."""
    db = store.named_db(DB)
    edge = math.floor(now) - WINDOW_SECONDS

    def op(txn: Any) -> int:
        deleted = 0
        with txn.cursor(db=db) as cur:
            found = cur.first()
            while found and deleted < limit:
                k = bytes(cur.key())
                if parse_key(k)[1] <= edge:
                    cur.delete()  # and moves to the next key (an empty key past the end)
                    deleted += 1
                    found = bool(cur.key())
                else:  # this scope's other keys are newer still: on to the next scope
                    found = cur.set_range(k[:-9] + b"\x01")
        return deleted
    return op
