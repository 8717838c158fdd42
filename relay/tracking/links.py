"""What a tracked message's tokens lead to, kept in the spool after its body is gone.

The queue removes a message's body once it is delivered, but its click tokens must still
lead to the links that were in it (and only to them: no open redirect) for as long as
the message is remembered. So when a recipient's copy is rewritten (relay/identity/
outbound.py), the message's trackable links (relay.tracking.rewrite numbering: the link
index of a click token) and the time of that recipient's copy (the delivery, for the
"right after delivery" rule of relay/tracking/automated.py) go to the spool, sub-database
"tracking":

    "<queue id>"            -> msgpack [[url, [[tag name, value], ...]], ...]
    "<queue id>/<index>"    -> msgpack float: when recipient `index`'s copy was last made

Keys start with the queue id (its first 12 hex digits are its time), like the "sent"
records: `relay.delivery.sentfrom.prune_sent_op` forgets them after
[admin] tracked_link_retention (a year by default: a link in an old newsletter keeps
working), long after the message record a hit's event needs ([suppression]
feedback_window); a hit in between is redirected and publishes nothing. The writes
of one loop turn go as one op into the next group commit (no sync of their own, never in
an SMTP reply's path); a crash loses at most the links of copies made in that commit
window, and their hits then answer 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from relay.tracking.rewrite import Link

log = logging.getLogger(__name__)

DB = "tracking"
MAX_RECORD = 4 * 1024 * 1024   # bytes of one message's link list read back (a bound)
_enc = msgspec.msgpack.Encoder()
_links_dec = msgspec.msgpack.Decoder(list[tuple[str, list[tuple[str, str]]]])
_time_dec = msgspec.msgpack.Decoder(float)


class Spool(Protocol):
    def named_db(self, name: str) -> Any: ...
    def read(self, fn: Any) -> Any: ...
    def write_soon(self, fn: Any, size: int = 0) -> asyncio.Future[Any]: ...


def links_key(queue_id: str) -> bytes:
    return queue_id.encode("ascii")


def copy_key(queue_id: str, index: int) -> bytes:
    return f"{queue_id}/{index}".encode("ascii")


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("tracked links not persisted (hits on those copies will answer 404): "
                    "%s", fut.exception())


class TrackedLinks:
    """The links and copy times of tracked messages: written with the group commit, read
    by the public /t/o/ and /t/c/ routes."""

    def __init__(self, spool: Spool, *, memory_max: int = 10_000) -> None:
        self.spool = spool
        # Message ids whose link list is written (or pending): written once per process.
        self._known: OrderedDict[str, None] = OrderedDict()
        self.memory_max = memory_max
        self._pending: list[tuple[bytes, bytes, bool]] = []  # key, value, overwrite
        self._flush_handle: asyncio.Handle | None = None

    def remember(self, queue_id: str, index: int, links: Sequence[Link], now: float) -> None:
        """Recipient `index`'s tracked copy of `queue_id` was made at `now` (on the loop):
        queued for the next group commit."""
        if queue_id not in self._known:
            self._known[queue_id] = None
            while len(self._known) > self.memory_max:
                self._known.popitem(last=False)
            value = _enc.encode([(link.url, list(link.tags)) for link in links])
            self._pending.append((links_key(queue_id), value, False))
        else:
            self._known.move_to_end(queue_id)
        self._pending.append((copy_key(queue_id, index), _enc.encode(float(now)), True))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> asyncio.Future[Any] | None:
        """Queue the pending writes for the next group commit (once per loop turn; stop()
        calls it before the store closes)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return None
        items, self._pending = self._pending, []
        db = self.spool.named_db(DB)

        def op(txn: Any) -> None:
            for key, value, overwrite in items:
                txn.put(key, value, db=db, overwrite=overwrite)

        fut = self.spool.write_soon(op, size=sum(len(v) for _, v, _ in items))
        fut.add_done_callback(_log_failure)
        return fut

    def lookup(self, queue_id: str, index: int) -> tuple[list[Link], float] | None:
        """(the message's links, when recipient `index`'s copy was made), or None when
        that copy was never tracked (or is forgotten). One read transaction, two gets."""
        db = self.spool.named_db(DB)

        def read(txn: Any) -> tuple[bytes | None, bytes | None]:
            links = txn.get(links_key(queue_id), db=db)
            made = txn.get(copy_key(queue_id, index), db=db)
            return (bytes(links) if links is not None and len(links) <= MAX_RECORD
                    else None, bytes(made) if made is not None else None)

        raw_links, raw_made = self.spool.read(read)
        if raw_links is None or raw_made is None:
            return None
        try:
            pairs = _links_dec.decode(raw_links)
            made = _time_dec.decode(raw_made)
        except msgspec.DecodeError:
            log.warning("unreadable tracked links of message %s", queue_id)
            return None
        return [Link(i, url, tuple(tags)) for i, (url, tags) in enumerate(pairs)], made
