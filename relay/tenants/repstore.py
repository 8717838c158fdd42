"""Reputation counts as stored: the queue's "reputation" sub-database, so a restart keeps
the figures a status is decided on.

Key: the scope (UTF-8), a NUL, then the hour (epoch seconds // 3600) as 8 bytes
big-endian. Value: sends, bounces and complaints, 8 bytes big-endian each. Writes are
ops for the store's group commit (never a sync of their own): `record_op()` adds to what
is stored, so it can run inside the transaction that accepts the message (sends) or
settles the bounce or complaint, and several processes on one spool add up.
`reset_op()` runs with the operator's resume. Opens no environment, never awaits.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from typing import Any

from relay.tenants.reputation import HOUR, ReputationBook

DB = "reputation"
_HOUR = struct.Struct(">Q")
_COUNTS = struct.Struct(">QQQ")
_SEP = b"\x00"

Entry = tuple[str, int, int, int, int]  # scope, hour, sends, bounces, complaints


def key(scope: str, hour: int) -> bytes:
    return scope.encode("utf-8") + _SEP + _HOUR.pack(hour)


def parse_key(raw: bytes) -> tuple[str, int]:
    return raw[:-9].decode("utf-8"), _HOUR.unpack(raw[-8:])[0]


def record_op(store: Any, entries: Iterable[Entry]) -> Callable[[Any], None]:
    """An op adding the entries (ReputationBook.record()'s results) to the stored counts."""
    db = store.named_db(DB)
    merged: dict[bytes, list[int]] = {}
    for scope, hour, s, b, c in entries:
        m = merged.setdefault(key(scope, hour), [0, 0, 0])
        m[0] += s
        m[1] += b
        m[2] += c

    def op(txn: Any) -> None:
        for k, (s, b, c) in merged.items():
            raw = txn.get(k, db=db)
            s0, b0, c0 = _COUNTS.unpack(raw) if raw is not None else (0, 0, 0)
            txn.put(k, _COUNTS.pack(s0 + s, b0 + b, c0 + c), db=db)
    return op


def stored(store: Any, scope: str | None = None, since: float = 0.0) -> list[Entry]:
    """Stored counts of one scope or all, of the hours ending after `since`."""
    prefix = scope.encode("utf-8") + _SEP if scope is not None else b""
    first_hour = math.floor(since / HOUR)
    out: list[Entry] = []
    for k, v in store.read_db(DB, prefix):
        s, hour = parse_key(k)
        if hour >= first_hour:
            out.append((s, hour, *_COUNTS.unpack(v)))
    return out


def load(store: Any, book: ReputationBook, now: float) -> None:
    """Rebuild the book's counts from the spool (at start)."""
    book.load(stored(store, since=now - book.lines.max_window), now)


def refresh(store: Any, book: ReputationBook, scope: str, now: float) -> None:
    """One scope's counts as all processes on the spool stored them (multi-process mode:
    before evaluating after a bounce or complaint)."""
    book.replace(scope, stored(store, scope, now - book.lines.max_window), now)


def reset_op(store: Any, scope: str) -> Callable[[Any], int]:
    """An op deleting a scope's counts (the operator's resume); returns how many."""
    db = store.named_db(DB)
    prefix = scope.encode("utf-8") + _SEP

    def op(txn: Any) -> int:
        deleted = 0
        with txn.cursor(db=db) as cur:
            found = cur.set_range(prefix)
            while found and bytes(cur.key()).startswith(prefix):
                cur.delete()
                deleted += 1
                found = bool(cur.key())
        return deleted
    return op


def prune_op(store: Any, now: float, max_window: float,
             limit: int = 10_000) -> Callable[[Any], int]:
    """An op deleting up to `limit` stored hours older than `max_window`."""
    db = store.named_db(DB)
    oldest = math.floor((now - max_window) / HOUR)

    def op(txn: Any) -> int:
        deleted = 0
        with txn.cursor(db=db) as cur:
            found = cur.first()
            while found and deleted < limit:
                k = bytes(cur.key())
                if parse_key(k)[1] < oldest:
                    cur.delete()
                    deleted += 1
                    found = bool(cur.key())
                else:
                    found = cur.set_range(k[:-9] + b"\x01")
        return deleted
    return op
