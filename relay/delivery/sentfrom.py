"""Which source IP and provider delivered a message to a domain, for feedback that comes later.

A complaint (an ARF report from a feedback loop) or a late bounce names a message and a
recipient; the warm-up gate (a complaint or a reputation refusal backs off the IP that
sent) and the complaints metric need the source IP that delivered it. The process that
delivered knows it; that is not enough when

- another process gets the feedback: with `server.workers = N` the feedback listener runs
  in worker 0 only, and every worker delivers the messages it accepted;
- relay restarted since the delivery (feedback loops report hours or days later).

So each delivery is also written to the spool (sub-database "sent_from", keyed by message
id like the "sent" records and pruned with them by `prune_sent_op`). The writes of one
loop turn go as one op into the next group commit: no sync of their own, and a crash
loses at most the attribution of deliveries in that commit, never a message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

log = logging.getLogger(__name__)

DB = "sent_from"
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(tuple[str, str])


class _Store(Protocol):
    def named_db(self, name: str) -> Any: ...
    def read(self, fn: Any) -> Any: ...
    def write_soon(self, fn: Any, size: int = 0) -> asyncio.Future[Any]: ...


def key_of(queue_id: str, domain: str) -> bytes:
    """The spool key: message id first, so keys sort by the time the message came in."""
    return f"{queue_id}/{domain.lower()}".encode()


def _bound(before: float) -> bytes:
    return f"{max(0, int(before * 1000)):012x}".encode("ascii")


def prune_sent_op(store: _Store, before: float,
                  links_before: float | None = None) -> Callable[[Any], int]:
    """An op (for the store's write()) that forgets the "sent" records (message records
    the queue keeps after delivery for matching late bounces and complaints) and the
    delivery attributions ("sent_from") of messages received before `before` (ids sort
    by time), and the tracked links ("tracking", relay/tracking/links.py) of those
    received before `links_before` (default: `before`); at most 10,000 of each per op.
    The count of sent records forgotten."""
    bound = _bound(before)
    links_bound = _bound(before if links_before is None else links_before)
    sent, sent_from = store.named_db("sent"), store.named_db(DB)
    tracking = store.named_db("tracking")  # relay/tracking/links.py, keyed the same way

    def prune(txn: Any, db: Any, bound: bytes = bound) -> int:
        old: list[bytes] = []
        with txn.cursor(db=db) as cur:
            for key in cur.iternext(keys=True, values=False):
                if bytes(key[:12]) >= bound or len(old) >= 10000:
                    break
                old.append(bytes(key))
        for key in old:
            txn.delete(key, db=db)
        return len(old)

    def op(txn: Any) -> int:
        prune(txn, sent_from)
        prune(txn, tracking, links_bound)
        return prune(txn, sent)
    return op


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("delivery attributions not persisted (feedback about those messages "
                    "will not name their source IP): %s", fut.exception())


# Attributions kept in memory besides the spool: the last deliveries, which a lookup finds
# before their write has committed (and refusals, which are not written). Feedback comes
# seconds to days later and reads the spool (a point read). ~315 B each: 10,000 hold
# 3 MiB; the 100,000 kept before held 33 MiB, full after 100,000 deliveries.
MEMORY_MAX = 10_000


class SentFrom:
    """(message id, recipient domain) -> (source IP, provider): memory first, then the spool."""

    def __init__(self, store: _Store | None, *, memory_max: int = MEMORY_MAX) -> None:
        self.store = store
        self.memory_max = memory_max
        self._recent: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        self._pending: list[tuple[bytes, bytes]] = []
        self._flush_handle: asyncio.Handle | None = None

    def remember(self, queue_id: str, domain: str, source_ip: str, provider: str, *,
                 durable: bool) -> None:
        """Note an attempt; `durable` (a delivery the remote accepted, which feedback may
        follow) also goes to the spool with the next commit."""
        if not queue_id:
            return
        key = (queue_id, domain.lower())
        self._recent[key] = (source_ip, provider)
        self._recent.move_to_end(key)
        while len(self._recent) > self.memory_max:
            self._recent.popitem(last=False)
        if durable and self.store is not None:
            self._pending.append((key_of(queue_id, domain), _enc.encode((source_ip, provider))))
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> asyncio.Future[Any] | None:
        """Queue the pending writes for the next group commit (the loop calls this once per
        turn; stop() calls it before the store closes). The future of that commit, if any."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending or self.store is None:
            return None
        items, self._pending = self._pending, []
        db = self.store.named_db(DB)

        def op(txn: Any) -> None:
            for k, v in items:
                txn.put(k, v, db=db)

        fut = self.store.write_soon(op)
        fut.add_done_callback(_log_failure)
        return fut

    def lookup(self, queue_id: str, domain: str) -> tuple[str, str] | None:
        """(source IP, provider) of the delivery of `queue_id` to `domain`, or None."""
        found = self._recent.get((queue_id, domain.lower()))
        if found is not None or self.store is None:
            return found
        db = self.store.named_db(DB)
        raw = self.store.read(lambda txn: txn.get(key_of(queue_id, domain), db=db))
        if raw is None:
            return None
        try:
            return _dec.decode(raw)
        except msgspec.DecodeError:
            log.warning("unreadable delivery attribution for %s/%s", queue_id, domain)
            return None
