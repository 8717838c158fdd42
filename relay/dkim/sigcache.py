"""DKIM signatures kept in the queue spool, so a retry after a restart reuses the
signature already sent rather than signing the message again.

Sub-database "dkim" of the queue (relay/queue/store.py): key = message id, NUL,
"domain/generation"; value = the DKIM-Signature header field(s). Keys start with the
message id, so the queue removes a message's signatures with the message
(relay/queue/ops.py delete_message). relay/dkim/sign.py keeps an LRU in front of it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

DB = "dkim"


class Spool(Protocol):
    """The parts of the queue store (relay/queue/store.py) the cache uses."""

    def named_db(self, name: str) -> Any: ...
    def read(self, fn: Any) -> Any: ...
    def write_soon(self, fn: Any, size: int = 0) -> asyncio.Future[Any]: ...


def key_of(mid: str, tag: str) -> bytes:
    """The spool key of message `mid`'s signature for `tag` ("domain/generation")."""
    return mid.encode("ascii") + b"\x00" + tag.encode("utf-8")


class SignatureCache:
    """Durable signatures per (message id, "domain/generation")."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def get(self, mid: str, tag: str) -> bytes | None:
        """The DKIM-Signature header(s) stored for a message and "domain/generation"."""
        db = self.spool.named_db(DB)
        raw = self.spool.read(lambda txn: txn.get(key_of(mid, tag), db=db))
        return bytes(raw) if raw is not None else None

    def save(self, mid: str, tag: str, signature: bytes) -> asyncio.Future[None]:
        """Store a message's signature (queued for the next group commit at once; await
        the result for durability); ignored once the message is gone."""
        key = key_of(mid, tag)
        messages, db = self.spool.named_db("messages"), self.spool.named_db(DB)

        def op(txn: Any) -> None:
            if txn.get(mid.encode("ascii"), db=messages) is not None:
                txn.put(key, signature, db=db)

        fut: asyncio.Future[None] = self.spool.write_soon(op, size=len(signature))
        return fut
