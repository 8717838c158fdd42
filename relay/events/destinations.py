"""Event destinations: where each event goes besides the event log.

Routing: an event goes to every enabled [[event_destination]] with configuration_set ""
(account-level) and to those of the message's configuration set (mail.tags
"ses:configuration-set"), filtered by event_types; a destination owned by a tenant
(`tenant = "NAME"`) gets only that tenant's events. A set with
include_original_headers = false gets events without mail.headers.

- file: one JSON object per line, appended as it comes (relay/events/linefile.py, the
  event log's writer: a full disk keeps the lines in memory, bounded, and never raises
  into the publisher).
- webhook: at least once, in order. `EventRouter` is an EventLog subscriber (sync); it
  queues the encoded event, and a task commits queued events to the store's "outbox"
  sub-database (group commit). One worker per webhook POSTs the outbox head, in key
  order, and deletes an entry only after a 2xx: head-of-line order keeps every
  message's events in order. A failure backs off (doubling from webhook_retry_min up to
  webhook_retry_max, on the injected Clock) and retries the same entry; a receiver that
  is down for an hour loses nothing, and the outbox survives restarts. Each POST is
  signed: `X-Relay-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, and carries
  `X-Relay-Event-Id` (stable across retries, for de-duplication).

With server.workers = N every process shares one outbox: sequence numbers come from a
counter kept in the outbox itself and read in the committing transaction (LMDB's one
writer at a time makes them unique and in commit order), and only one process (worker
0, `drain=True`) POSTs, looking at the outbox every `poll` seconds because the others'
events do not wake it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from relay.backoff import doubling
from relay.clock import Clock
from relay.config import Config, EventDestination
from relay.events.linefile import LineFile
from relay.events.model import Event, configuration_set_of, encoded
from relay.queue.store import QueueStore

log = logging.getLogger("relay.events")

_json = msgspec.json.Encoder()
_enc = msgspec.msgpack.Encoder()
_SEQ = struct.Struct(">Q")
SIGNATURE_HEADER = "X-Relay-Signature"
FILE_MAX_UNWRITTEN = 8 << 20  # bytes a file destination keeps while its disk is full
RESPONSE_READ_LIMIT = 4096  # bytes of a webhook receiver's answer read at most


class OutboxItem(msgspec.Struct, array_like=True, tag=1):
    body: bytes
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""


_dec = msgspec.msgpack.Decoder(OutboxItem)


def event_type_key(event: Event) -> str:
    """"DeliveryDelay" → "deliveryDelay", "Rendering Failure" → "renderingFailure", as
    written in event_types."""
    kind = event.eventType.replace(" ", "")
    return kind[:1].lower() + kind[1:]


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _delete_op(db: Any, key: bytes) -> Callable[[Any], bool]:
    return lambda txn: bool(txn.delete(key, db=db))


def _put_op(db: Any, key: bytes, value: bytes) -> Callable[[Any], bool]:
    return lambda txn: bool(txn.put(key, value, db=db))


def _key(dest: str, seq: int) -> bytes:
    return dest.encode("utf-8") + b"\0" + _SEQ.pack(seq)


# The outbox's next sequence number. 0xFF never occurs in UTF-8, so the key sorts after
# every destination's entries and matches no destination prefix.
SEQ_KEY = b"\xffnext-seq"


def _next_seq(txn: Any, db: Any) -> int:
    """Inside a write transaction: the next free sequence number of the outbox. An outbox
    from before the counter is scanned once."""
    raw = txn.get(SEQ_KEY, db=db)
    if raw is not None:
        return int(_SEQ.unpack(bytes(raw))[0])
    best = 0
    with txn.cursor(db=db) as cur:
        for key in cur.iternext(keys=True, values=False):
            if bytes(key) != SEQ_KEY:
                best = max(best, _SEQ.unpack(bytes(key)[-8:])[0])
    return best + 1


class EventRouter:
    def __init__(self, config: Callable[[], Config], store: QueueStore, clock: Clock,
                 state_dir: Path, *, drain: bool = True, poll: float = 0.0) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.state_dir = state_dir
        self.drain = drain  # this process POSTs the outbox (one per spool)
        self.poll = poll    # > 0: look at the outbox this often even when not woken
        self._files: dict[str, LineFile] = {}
        self._queued: list[tuple[str, bytes]] = []
        self._wake_persist = asyncio.Event()
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._stopping = False
        self.delivered: dict[str, int] = {}   # per destination, for tests and metrics

    # ------------------------------------------------------------------ routing (sync)

    def destinations(self, event: Event) -> list[EventDestination]:
        cfg = self.config()
        cs_name = configuration_set_of(event).lower()
        kind = event_type_key(event)
        tenant = event.tenant
        return [d for d in cfg.event_destination
                if d.enabled and kind in d.event_types
                and (not d.configuration_set or d.configuration_set.lower() == cs_name)
                and (not d.tenant or d.tenant == tenant)]

    def _encode(self, event: Event) -> bytes:
        cs_name = configuration_set_of(event)
        if cs_name:
            cs = self.config().configuration_set_named(cs_name)
            if cs is not None and not cs.include_original_headers:
                return _json.encode(msgspec.structs.replace(
                    event, mail=msgspec.structs.replace(event.mail, headers=[])))
        return encoded(event)  # the event log's bytes when it is publishing this event

    def __call__(self, event: Event) -> None:
        dests = self.destinations(event)
        if not dests:
            return
        body = self._encode(event)
        for d in dests:
            if d.type == "file":
                self._write_file(d, body)
            else:
                self._queued.append((d.name, body))
                self._wake_persist.set()

    def _write_file(self, d: EventDestination, body: bytes) -> None:
        out = self._files.get(d.name)
        if out is None:
            path = Path(d.path or f"{d.name}.jsonl")
            path = path if path.is_absolute() else self.state_dir / path
            out = self._files[d.name] = LineFile(path, self.clock,
                                                 max_unwritten=FILE_MAX_UNWRITTEN)
        out.write(body)

    @property
    def files(self) -> list[LineFile]:
        """The file destinations written so far (their write health is a metric)."""
        return list(self._files.values())

    # ------------------------------------------------------------------ outbox (async)

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        self._tasks.append(asyncio.create_task(self._persist_loop(), name="outbox-persist"))
        if not self.drain:
            return
        for d in self.config().event_destination:
            if d.type == "webhook" and d.enabled:
                self._wake[d.name] = asyncio.Event()
                self._tasks.append(asyncio.create_task(self._worker(d), name=f"hook:{d.name}"))

    async def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(Exception):
            await self.flush()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        if self._http is not None:
            await self._http.close()
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    async def flush(self) -> None:
        """Commit every queued webhook event to the outbox now."""
        if not self._queued:
            return
        batch, self._queued = self._queued, []
        now = self.clock.now()
        items = [(name, _enc.encode(OutboxItem(body, now))) for name, body in batch]
        db = self.store.named_db("outbox")

        def op(txn: Any) -> int:
            seq = _next_seq(txn, db)
            for name, value in items:
                txn.put(_key(name, seq), value, db=db)
                seq += 1
            txn.put(SEQ_KEY, _SEQ.pack(seq), db=db)
            return len(items)

        await self.store.write(op)
        for name, _ in batch:
            ev = self._wake.get(name)
            if ev is not None:
                ev.set()

    async def _persist_loop(self) -> None:
        while True:
            await self._wake_persist.wait()
            self._wake_persist.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("events: could not commit webhook events to the outbox; "
                              "retrying")
                await self.clock.sleep(1.0)
                self._wake_persist.set()

    def backlog(self) -> dict[str, int]:
        """Events not yet delivered, per webhook destination (outbox plus not yet committed);
        every configured webhook is listed, 0 when it is caught up."""
        out = {d.name: 0 for d in self.config().event_destination if d.type == "webhook"}
        db = self.store.named_db("outbox")

        def read(txn: Any) -> None:
            with txn.cursor(db=db) as cur:
                for k in cur.iternext(keys=True, values=False):
                    if bytes(k) == SEQ_KEY:
                        continue
                    name = bytes(k).split(b"\0", 1)[0].decode("utf-8", "replace")
                    out[name] = out.get(name, 0) + 1
        self.store.read(read)
        for name, _ in self._queued:
            out[name] = out.get(name, 0) + 1
        return out

    def pending(self, dest: str) -> list[tuple[bytes, OutboxItem]]:
        prefix = dest.encode("utf-8") + b"\0"
        return [(k, _dec.decode(v)) for k, v in self.store.read_db("outbox")
                if k.startswith(prefix)]

    def _head(self, dest: str, limit: int = 50) -> list[tuple[bytes, OutboxItem]]:
        prefix = dest.encode("utf-8") + b"\0"
        db = self.store.named_db("outbox")

        def read(txn: Any) -> list[tuple[bytes, OutboxItem]]:
            out: list[tuple[bytes, OutboxItem]] = []
            with txn.cursor(db=db) as cur:
                if not cur.set_range(prefix):
                    return out
                for k, v in cur.iternext():
                    if not bytes(k).startswith(prefix) or len(out) >= limit:
                        break
                    out.append((bytes(k), _dec.decode(v)))
            return out
        return self.store.read(read)

    async def _sleep_or_wake(self, name: str, seconds: float) -> None:
        wake = self._wake[name]
        if wake.is_set():
            wake.clear()
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waker = asyncio.ensure_future(wake.wait())
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        for t in (sleeper, waker):
            t.cancel()
        wake.clear()

    async def _worker(self, d: EventDestination) -> None:
        while not self._stopping:
            try:
                waited = await self._drain(d)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("events: webhook %s worker failed; retrying", d.name)
                waited = 5.0
            await self._sleep_or_wake(d.name, waited)

    async def _drain(self, d: EventDestination) -> float:
        """POST the head of the outbox in order; return how long to wait before more."""
        cfg = self.config().events
        db = self.store.named_db("outbox")
        while not self._stopping:
            head = self._head(d.name)
            if not head:
                return self.poll if self.poll > 0 else 3600.0
            for key, item in head:
                now = self.clock.now()
                if now - item.created_at > cfg.webhook_max_age:
                    log.error("events: dropping an event for webhook %s after %d attempts "
                              "(older than webhook_max_age): %s", d.name, item.attempts,
                              item.last_error)
                    await self.store.write(_delete_op(db, key))
                    continue
                if item.next_at > now:
                    return item.next_at - now
                error = await self._post(d, key, item)
                if error is None:
                    await self.store.write(_delete_op(db, key))
                    self.delivered[d.name] = self.delivered.get(d.name, 0) + 1
                    continue
                attempts = item.attempts + 1
                delay = doubling(attempts, cfg.webhook_retry_min, cfg.webhook_retry_max)
                retry = msgspec.structs.replace(item, attempts=attempts, next_at=now + delay,
                                                last_error=error[:200])
                await self.store.write(_put_op(db, key, _enc.encode(retry)))
                log.warning("events: webhook %s failed (%s); retry %d in %.0fs", d.name,
                            error, attempts, delay)
                return delay
        return 0.0

    async def _post(self, d: EventDestination, key: bytes, item: OutboxItem) -> str | None:
        assert self._http is not None
        seq = _SEQ.unpack(key[-8:])[0]
        headers = {"Content-Type": "application/json", "User-Agent": "relay-events/1",
                   "X-Relay-Event-Id": f"{d.name}-{seq}",
                   "X-Relay-Delivery-Attempt": str(item.attempts + 1)}
        if d.secret:
            headers[SIGNATURE_HEADER] = signature(d.secret, item.body)
        timeout = aiohttp.ClientTimeout(total=float(self.config().events.webhook_timeout))
        try:
            async with self._http.post(d.url, data=item.body, headers=headers,
                                       timeout=timeout, allow_redirects=False) as resp:
                # Only the status matters. A receiver's body is read up to a few KB, never
                # whole (a 300 MB answer would be held in memory); a longer one is cut off
                # by closing the connection rather than drained.
                head = await resp.content.read(RESPONSE_READ_LIMIT)
                if not resp.content.at_eof():
                    resp.close()
                if 200 <= resp.status < 300:
                    return None
                text = " ".join(head[:100].decode("ascii", "replace").split())
                return f"HTTP {resp.status}" + (f": {text}" if text else "")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return f"{type(e).__name__}: {e}"
