"""LMDB queue store: the only module that imports lmdb.

Theory of operation
-------------------
Rule 1 (acknowledge after commit): `submit()` returns a queue id only after the
LMDB transaction holding the message has committed with sync; the SMTP server
answers 250 only then (RFC 5321 §6.1, Postfix mail_stream.c).

Rule 2 (group commit): every write (submissions, leases, delivery results,
operator actions) is an operation queued to one committer. The committer runs
a batch of operations in one write transaction on one dedicated OS thread
(py-lmdb binds the write lock to a thread, #465) and resolves each caller's
future after the commit returns. While one fsync is in flight the next batch
gathers, so concurrent sessions share fsyncs instead of paying one each.

Rule 3 (durable, visible schedule): each recipient not yet final has exactly
one key in a schedule index, `due_new` (never attempted) or `due_retry`
(attempted, or leased), keyed by due time. The scheduler finds due work with a
cursor from the start of an index, never by scanning messages. A leased
(in-flight) recipient stays in `due_retry` at its lease expiry, so a lease that
is never settled comes back by itself; `recover()` at start makes every
in-flight recipient due at once, found through the `inflight` index (one key per
INFLIGHT recipient, kept in step by `_move`), so start-up does not read the queue.

Rule 4: a message whose recipients are all final is removed (record, body and
recipients); its history lives in the event log.

Failure mapping: MapFullError grows the map (twice the size, bounded by free
disk) and retries the batch; if it cannot grow, StoreFull (452 4.3.1). Any
other LMDB/OS error on commit fails the whole batch with StoreUnavailable
(451 4.3.0), or StoreFull when the disk is (nearly) full. Nothing is half
written: a failed transaction is aborted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec

from relay.clock import Clock
from relay.events.headers import header_fields
from relay.queue.mailbox import LoopMailbox
from relay.queue.records import (
    FINAL_STATES,
    TRANSITIONS,
    Action,
    MessageRecord,
    RecipientRecord,
    State,
    recipient_domain,
    transition,
)
from relay.statedir import StateError

T = TypeVar("T")
log = logging.getLogger(__name__)


class StoreFull(Exception):
    """The LMDB map or the disk is full: answer 452 4.3.1, keep serving."""


class StoreUnavailable(Exception):
    """Any other failure to commit: answer 451 4.3.0, never 250."""


class NewMessage(msgspec.Struct):
    sender: str
    recipients: list[str]
    body: bytes
    client_ip: str = ""
    helo: str = ""
    auth_user: str = ""
    headers: dict[str, str] = {}
    tags: dict[str, list[str]] = {}
    configuration_set: str = ""
    # The header fields of `body` as relay.events.headers.read_fields reads them, when
    # already read (at DATA); None: read from `body`. Whoever changes body's header
    # section changes this too.
    header_fields: list[tuple[str, str]] | None = None


@dataclass(frozen=True)
class DueItem:
    message_id: str
    index: int


@dataclass(frozen=True)
class Leased:
    message: MessageRecord
    index: int
    recipient: RecipientRecord


@dataclass(frozen=True)
class Result:
    """A settled delivery attempt (or operator action) for one recipient."""

    message_id: str
    index: int
    action: Action
    response: str = ""
    remote_mta: str = ""
    next_attempt_at: float = 0.0   # for DEFER/RECOVER/RETRY/RELEASE


@dataclass
class Settled:
    """What a Result did, for events: the record after the change."""

    message: MessageRecord
    index: int
    recipient: RecipientRecord
    message_done: bool = False


_enc = msgspec.msgpack.Encoder()
_msg_dec = msgspec.msgpack.Decoder(MessageRecord)
_rcpt_dec = msgspec.msgpack.Decoder(RecipientRecord)

ID_LEN = 20
_IDX = struct.Struct(">H")
_TS = struct.Struct(">Q")
MAX_RECIPIENTS = 0xFFFF


def shard_of(mid: str | bytes, count: int) -> int:
    """The worker (0..count-1) that delivers message `mid`: read from the id itself (its
    first random byte), so every process agrees without a lookup. `new_message_id` gives
    the accepting worker's messages its own index, so each worker delivers what it
    accepted (its own submissions wake it) and the load splits as connections do."""
    if count <= 1:
        return 0
    text = mid.decode("ascii") if isinstance(mid, bytes) else mid
    return int(text[12:14], 16) % count


class _RandomPool:
    """OS randomness fetched 4 KB at a time: one getrandom() per 1,024 message ids instead
    of one per message (each is a syscall that releases the GIL on the accept path)."""

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)  # a child never reuses ours

    def _forget(self) -> None:
        self._buf, self._at = b"", 0
        self._lock = threading.Lock()  # the parent's may have been held at the fork

    def __call__(self) -> bytes:
        with self._lock:
            if self._at + 4 > len(self._buf):
                self._buf, self._at = secrets.token_bytes(4096), 0
            out = self._buf[self._at:self._at + 4]
            self._at += 4
            return out


_random4 = _RandomPool()


def new_message_id(now: float, shard: tuple[int, int] | None = None) -> str:
    """Time-sortable, 20 characters: 12 hex digits of milliseconds + 8 random hex. With
    `shard` (i, N) the first random byte is chosen so that `shard_of(id, N) == i`."""
    rand = _random4()
    if shard is not None and shard[1] > 1:
        i, n = shard
        first = rand[0] - rand[0] % n + i
        if first > 0xFF:
            first -= n
        rand = bytes([first]) + rand[1:]
    return f"{int(now * 1000):012x}{rand.hex()}"


def _rcpt_key(mid: str, idx: int) -> bytes:
    return mid.encode("ascii") + _IDX.pack(idx)


def _sig_key(mid: str, tag: str) -> bytes:
    return mid.encode("ascii") + b"\x00" + tag.encode("utf-8")


def _due_key(at: float, mid: str, idx: int) -> bytes:
    return _TS.pack(max(0, int(at * 1000))) + mid.encode("ascii") + _IDX.pack(idx)


def _parse_due_key(key: bytes) -> tuple[float, DueItem]:
    (ms,) = _TS.unpack_from(key)
    mid = key[8:8 + ID_LEN].decode("ascii")
    (idx,) = _IDX.unpack_from(key, 8 + ID_LEN)
    return ms / 1000.0, DueItem(mid, idx)


@dataclass
class _Op:
    fn: Callable[[Any], Any]
    future: asyncio.Future[Any]
    size: int = 0
    # Called on the loop with the op's result the moment its commit is durable, before
    # the future's waiter resumes (which is one loop turn later).
    on_durable: Callable[[Any], None] | None = None


@dataclass
class StoreStats:
    commits: int = 0
    committed_ops: int = 0
    last_batch: int = 0
    last_fsync_seconds: float = 0.0
    map_grows: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class QueueStore:
    """The queue spool. Open once per process (never across fork)."""

    # "warmup": per-IP warm-up counters (relay/delivery/shaper.py), committed with the queue.
    # "suppression": the account-level suppression list (relay/suppression/store.py);
    # "sent": message records kept after delivery for matching late bounces/complaints;
    # "sent_from": the source IP and provider of each delivery, by message id and domain
    # (relay/delivery/sentfrom.py), for the same feedback; pruned with "sent".
    # "outbox": events waiting for their webhook (relay/events/destinations.py);
    # "event_outbox": events staged with the state change they report
    # (relay/events/journal.py), so a crash cannot separate the two.
    # "dkim": DKIM-Signature header bytes per (message id, "domain/generation"), so a
    # retry after a restart reuses the signature already sent (relay/dkim/sign.py);
    # removed with the message.
    # "inflight": one key per INFLIGHT recipient (its recipients key; value: its domain),
    # so recover_op() at start reads only what was in flight, not every recipient. The
    # key INFLIGHT_COMPLETE says the index is complete (written by the first recovery,
    # which scans the recipients once on a spool from before the index).
    DBS = ("messages", "bodies", "recipients", "due_new", "due_retry", "warmup",
           "suppression", "sent", "outbox", "event_outbox", "dkim", "inflight", "sent_from")
    INFLIGHT_COMPLETE = b"~complete"  # sorts after every queue id (hex digits)

    def __init__(self, path: Path | str, clock: Clock, *, map_size: int = 1 << 30,
                 commit_window: float = 0.002, commit_batch_max: int = 256,
                 lease_seconds: float = 1800.0) -> None:
        self.path = Path(path)
        self.clock = clock
        self.commit_window = commit_window
        self.commit_batch_max = commit_batch_max
        self.lease_seconds = lease_seconds
        self.stats = StoreStats()
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = self._open(map_size)
        # Ops waiting for the writer thread (deque appends and pops are thread-safe).
        self._pending: collections.deque[_Op] = collections.deque()
        self._signal = threading.Event()          # ops queued, or closing
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mailbox = LoopMailbox()  # the writer thread's calls to the loop
        self._writer: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False
        self.on_commit: list[Callable[[], None]] = []
        # Multi-process mode (server.workers = N): (i, N) makes due()/next_due_at() see
        # only recipients whose domain is shard i, so no two processes lease one recipient.
        self.shard: tuple[int, int] | None = None

    def _open(self, map_size: int) -> Any:
        """The environment, its stale reader slots cleared and every sub-database open; a
        file that is not a readable LMDB spool is a StateError naming it (relay refuses
        to start on it rather than end in a traceback)."""
        env = None
        try:
            env = lmdb.open(
                str(self.path), map_size=map_size, subdir=True, max_dbs=len(self.DBS) + 2,
                sync=True, metasync=True, writemap=False, max_readers=512, lock=True,
                readahead=False)
            # Clear reader slots left by a process killed with -9.
            env.reader_check()
            self._db = {name: env.open_db(name.encode()) for name in self.DBS}
        except lmdb.Error as e:
            if env is not None:
                env.close()
            reason = str(e).removeprefix(f"{self.path}: ")
            raise StateError(
                f"{self.path / 'data.mdb'}: not a usable queue ({reason}); restore it from "
                "a backup, or move the queue directory aside to start with an empty queue"
            ) from None
        return env

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._mailbox.open(self._loop)
        self._stopped = self._loop.create_future()
        self._writer = threading.Thread(target=self._writer_main, name="lmdb-writer",
                                        daemon=True)
        self._writer.start()

    @property
    def running(self) -> bool:
        """Started and not closed: write() may be used."""
        return self._writer is not None

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._signal.set()
            assert self._stopped is not None
            await self._stopped  # every queued op committed (or failed) first
            self._writer.join()
            self._writer = None
            self._mailbox.close()
        self.env.close()

    def close_sync(self) -> None:
        """Close a store used only for reads and direct writes (the CLI)."""
        self.env.close()

    # ------------------------------------------------------------------ writing

    async def write(self, fn: Callable[[Any], T], size: int = 0) -> T:
        """Run `fn(txn)` inside the next group commit; return its result after the sync."""
        return await self.write_soon(fn, size)

    def write_soon(self, fn: Callable[[Any], T], size: int = 0,
                   on_durable: Callable[[T], None] | None = None) -> asyncio.Future[T]:
        """Queue `fn(txn)` for the next group commit now (not when a coroutine first
        runs) and return the future of its result. Ops commit in the order they were
        queued, so an op queued before another is durable no later than it.
        `on_durable(result)` runs on the loop as soon as the commit is synced, a loop
        turn before whoever awaits the future resumes (not if the op fails)."""
        if self._writer is None:
            raise RuntimeError("store not started")
        if self._closing:
            raise StoreUnavailable("queue is shutting down")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Op(fn, fut, size, on_durable))
        self._signal.set()
        return fut

    def write_now(self, fn: Callable[[Any], T]) -> T:
        """A synchronous write transaction on the calling thread (CLI, tests, recovery)."""
        if self._writer is not None and self._loop is not None and _on_loop(self._loop):
            # The writer thread may hold the write lock while it waits for this very
            # thread to run a batch's ops (_run_batch_split): that would never return.
            raise RuntimeError("write_now() on the event loop of a started store; "
                               "use await write()")
        result: T = self._run_batch_sync([fn])[0]
        if isinstance(result, _OpFailed):
            raise result.error
        return result

    async def submit(self, msg: NewMessage,
                     on_durable: Callable[[str], None] | None = None) -> str:
        """Queue a message durably; return its id only after the synced commit (a
        Submitter, relay/smtp/session.py: `on_durable(id)` when the commit syncs)."""
        return (await self.submit_record(msg, on_durable=on_durable)).id

    async def submit_record(
            self, msg: NewMessage,
            also: Callable[[Any, MessageRecord], object] | None = None,
            on_durable: Callable[[str], None] | None = None) -> MessageRecord:
        """Queue a message durably; `also(txn, record)` runs in the same transaction
        (the Send event is staged there, so it is committed with the message);
        `on_durable(queue id)` as in write_soon()."""
        if not msg.recipients:
            raise ValueError("a message needs at least one recipient")
        if len(msg.recipients) > MAX_RECIPIENTS:
            raise ValueError("too many recipients")
        now = self.clock.now()
        mid = new_message_id(now, self.shard)
        fields, truncated = header_fields(msg.body, known=msg.header_fields)  # mail.headers
        record = MessageRecord(
            id=mid, sender=msg.sender, recipients=list(msg.recipients), received_at=now,
            size=len(msg.body), client_ip=msg.client_ip, helo=msg.helo,
            auth_user=msg.auth_user, headers=dict(msg.headers), tags=dict(msg.tags),
            configuration_set=msg.configuration_set, header_fields=fields,
            headers_truncated=truncated)
        body = msg.body

        def op(txn: Any) -> MessageRecord:
            self._put_message(txn, record, body)
            if also is not None:
                also(txn, record)
            return record

        durable = None if on_durable is None else (lambda rec: on_durable(rec.id))
        return await self.write_soon(op, len(body), durable)

    def _put_message(self, txn: Any, record: MessageRecord, body: bytes) -> None:
        mid = record.id
        key = mid.encode("ascii")
        txn.put(key, _enc.encode(record), db=self._db["messages"])
        txn.put(key, body, db=self._db["bodies"])
        txn.put(key, _enc.encode(record), db=self._db["sent"])  # for late feedback
        for idx, addr in enumerate(record.recipients):
            rr = RecipientRecord(address=addr, domain=recipient_domain(addr),
                                 state=State.QUEUED, next_attempt_at=record.received_at,
                                 updated_at=record.received_at)
            txn.put(_rcpt_key(mid, idx), _enc.encode(rr), db=self._db["recipients"])
            txn.put(_due_key(rr.next_attempt_at, mid, idx), b"", db=self._db["due_new"])

    def _writer_main(self) -> None:
        """The writer thread: one write transaction (one sync) per batch, a batch being
        whatever was queued while the previous one committed, so under load batches form
        by themselves and the next starts the moment the last is durable, with no trip
        through the event loop between them. The thread opens and commits each write
        transaction; the ops run on the loop in between (_run_batch_split). Results go
        back to the loop in one callback per batch. A map-full batch waits while the
        loop grows the map (set_mapsize needs no transaction open anywhere in the
        process, which only the loop thread can know). Both crossings to the loop go
        through `LoopMailbox`, which runs them between rounds of task steps."""
        while True:
            self._signal.wait()
            self._signal.clear()
            # Ops that arrive just after an idle spell: let concurrent sessions join them.
            # I/O batching, not policy: real time, not the injected Clock.
            if (self.commit_window > 0 and not self._closing
                    and len(self._pending) < self.commit_batch_max):
                time.sleep(self.commit_window)
            while self._pending:
                batch: list[_Op] = []
                while self._pending and len(batch) < self.commit_batch_max:
                    batch.append(self._pending.popleft())
                outcome = self._commit_batch(batch)
                if not self._mailbox.post(self._settle_batch, batch, outcome):
                    return  # the loop is closed: nobody is waiting any more
            if self._closing and not self._pending:
                self._mailbox.post(self._writer_stopped)
                return

    def _commit_batch(self, batch: list[_Op]) -> list[Any] | Exception:
        """Run one batch (in the writer thread): its results, or one error for all."""
        fns = [op.fn for op in batch]
        try:
            return self._run_batch_split(fns)
        except _MapFull:
            if not self._grow_map_from_writer():
                return StoreFull("queue storage is full")
            try:
                return self._run_batch_split(fns)
            except _MapFull:
                return StoreFull("queue storage is full")
            except Exception as e:
                return self._map_error(e)
        except Exception as e:  # mapped for every caller
            return self._map_error(e)

    def _grow_map_from_writer(self) -> bool:
        assert self._loop is not None
        done = threading.Event()
        grown: list[bool] = []

        def grow() -> None:
            try:
                grown.append(self._grow_map())
            finally:
                done.set()

        try:
            self._loop.call_soon_threadsafe(grow)
        except RuntimeError:
            return False
        done.wait()
        return bool(grown and grown[0])

    def _settle_batch(self, batch: list[_Op], outcome: list[Any] | Exception) -> None:
        """On the loop: hand each op its result (or the batch's error)."""
        if isinstance(outcome, Exception):
            self._fail(batch, outcome)
            return
        for op, res in zip(batch, outcome, strict=True):
            if op.future.done():
                continue
            if isinstance(res, _OpFailed):
                op.future.set_exception(res.error)
                continue
            if op.on_durable is not None:
                try:
                    op.on_durable(res)
                except Exception:  # the waiter still gets its result
                    log.exception("queue: on_durable callback failed")
            op.future.set_result(res)
        for cb in self.on_commit:
            cb()

    def _writer_stopped(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _fail(self, batch: list[_Op], error: Exception) -> None:
        for op in batch:
            if not op.future.done():
                op.future.set_exception(error)

    def _map_error(self, e: BaseException) -> Exception:
        disk_full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        if isinstance(e, lmdb.Error) and ("No space" in str(e) or "MDB_MAP_FULL" in str(e)):
            disk_full = True
        if not disk_full:
            # LMDB reports a short write as EIO; call it "full" when the disk nearly is.
            with contextlib.suppress(OSError):
                usage = shutil.disk_usage(self.path)
                disk_full = usage.free < max(64 << 20, usage.total // 100)
        if disk_full:
            return StoreFull(f"queue storage is full ({e})")
        return StoreUnavailable(f"queue commit failed ({e})")

    @staticmethod
    def _apply(txn: Any, fns: list[Callable[[Any], Any]]) -> list[Any]:
        """Run a batch's ops in one write transaction: each op's result, or _OpFailed
        for an op that raised (one bad op must not sink the batch); LMDB and OS errors
        sink the whole batch."""
        results: list[Any] = []
        for fn in fns:
            try:
                results.append(fn(txn))
            except (lmdb.MapFullError, lmdb.Error, OSError):
                raise
            except Exception as e:
                results.append(_OpFailed(e))
        return results

    def _run_batch_split(self, fns: list[Callable[[Any], Any]]) -> list[Any]:
        """The writer thread's batch: it opens the write transaction (waiting out another
        process's writer) and commits it (the fsyncs), but the ops themselves run on the
        event loop thread in between. Why: py-lmdb releases the GIL around every get and
        put, and a writer thread running the ops had to win the GIL back from the busy
        loop after each call, which made the ops' few hundred microseconds of work take
        10-60 ms and was the tail of end-of-DATA → 250. The transaction is used by one
        thread at a time (the handoff orders it), and begun and ended on the same thread,
        as LMDB's write lock requires.

        The meeting (see _Handoff): the loop comes to the mailbox first and waits there,
        GIL released, while this thread takes the write lock; it runs the ops at once and
        waits again until this thread is inside commit. So the write lock is held for the
        ops and the sync only, not also for a loop turn and two waits for the GIL (up to
        the 5 ms switch interval each) as when the transaction was opened first and the
        ops posted after: with `server.workers = 2` the other process waited out all of
        that (write-lock wait p50 4.7 ms, p90 18 ms). A loop that waited PARK_MAX without
        getting the transaction (another process's writer held the lock that long) goes
        back to its sessions, and the ops are posted to it the old way."""
        assert self._loop is not None
        t0 = self.clock.monotonic()
        hand = _Handoff(fns)
        if not self._mailbox.post(self._meet_on_loop, hand):
            raise StoreUnavailable("queue is shutting down")  # nobody will run the ops
        hand.parked.acquire()  # the loop is at the mailbox
        try:
            txn = self.env.begin(write=True)
        except lmdb.MapResizedError:
            hand.offer(None)
            self.env.set_mapsize(0)
            raise _MapFull() from None
        except BaseException:
            hand.offer(None)
            raise
        try:
            if not hand.offer(txn) and not self._mailbox.post(self._apply_on_loop, txn, hand):
                raise StoreUnavailable("queue is shutting down")
            hand.done.acquire()
            hand.committing.release()  # the parked loop resumes as commit drops the GIL
            if hand.error is not None:
                raise hand.error
            txn.commit()
        except lmdb.MapFullError:
            txn.abort()
            raise _MapFull() from None
        except lmdb.MapResizedError:
            txn.abort()
            self.env.set_mapsize(0)
            raise _MapFull() from None
        except BaseException:
            txn.abort()
            raise
        self._count_commit(len(fns), t0)
        return hand.results

    # How long the loop waits at the mailbox for the write transaction (the other
    # process's commit, with workers = N) or for the writer to reach commit. Real time:
    # I/O scheduling like commit_window, not policy.
    PARK_MAX = 0.005

    @classmethod
    def _meet_on_loop(cls, hand: _Handoff) -> None:
        """On the loop (a mailbox call): wait for the transaction, run the ops, and wait
        for the writer to take them to commit; see _run_batch_split."""
        hand.parked.release()
        hand.txn_ready.acquire(timeout=cls.PARK_MAX)
        txn = hand.take()
        if txn is None:
            return  # not offered in time (posted later), or begin failed
        cls._apply_on_loop(txn, hand)
        hand.committing.acquire(timeout=cls.PARK_MAX)

    @staticmethod
    def _apply_on_loop(txn: Any, hand: _Handoff) -> None:
        try:
            hand.results = QueueStore._apply(txn, hand.fns)
        except BaseException as e:  # handed to the writer thread, which aborts
            hand.error = e
        finally:
            hand.done.release()

    def _count_commit(self, ops: int, t0: float) -> None:
        self.stats.commits += 1
        self.stats.committed_ops += ops
        self.stats.last_batch = ops
        self.stats.last_fsync_seconds = self.clock.monotonic() - t0

    def _run_batch_sync(self, fns: list[Callable[[Any], Any]]) -> list[Any]:
        t0 = self.clock.monotonic()
        try:
            with self.env.begin(write=True) as txn:
                results = self._apply(txn, fns)
        except lmdb.MapFullError:
            raise _MapFull() from None
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            raise _MapFull() from None
        self._count_commit(len(fns), t0)
        return results

    def _grow_map(self) -> bool:
        """Double the map if the disk can hold it. Called with no transaction open."""
        current = self.env.info()["map_size"]
        try:
            free = shutil.disk_usage(self.path).free
        except OSError:
            return False
        used = os.path.getsize(self.path / "data.mdb") if (self.path / "data.mdb").exists() else 0
        target = min(current * 2, used + free)
        if target <= current:
            return False
        try:
            self.env.set_mapsize(target)
        except lmdb.Error:
            return False
        self.stats.map_grows += 1
        return True

    def named_db(self, name: str) -> Any:
        """A sub-database handle for ops run through write()/write_now() (one of DBS)."""
        return self._db[name]

    def read_db(self, name: str) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of a small sub-database, in one read transaction."""
        with self._read() as txn, txn.cursor(db=self._db[name]) as cur:
            return [(bytes(k), bytes(v)) for k, v in cur.iternext()]

    def read(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(txn)` in one read transaction (sub-databases through named_db)."""
        with self._read() as txn:
            return fn(txn)

    def sent_message(self, mid: str) -> MessageRecord | None:
        """A message record kept for feedback matching (see DBS "sent")."""
        with self._read() as txn:
            raw = txn.get(mid.encode("ascii"), db=self._db["sent"])
        return _msg_dec.decode(raw) if raw is not None else None

    def prune_sent_op(self, before: float) -> Callable[[Any], int]:
        """Forget sent records (and delivery attributions, "sent_from") of messages received
        before `before` (ids sort by time); at most 10,000 of each per op. The count of
        sent records forgotten."""
        bound = f"{max(0, int(before * 1000)):012x}".encode("ascii")

        def prune(txn: Any, db: str) -> int:
            old: list[bytes] = []
            with txn.cursor(db=self._db[db]) as cur:
                for key in cur.iternext(keys=True, values=False):
                    if bytes(key[:12]) >= bound or len(old) >= 10000:
                        break
                    old.append(bytes(key))
            for key in old:
                txn.delete(key, db=self._db[db])
            return len(old)

        def op(txn: Any) -> int:
            prune(txn, "sent_from")
            return prune(txn, "sent")
        return op

    # ------------------------------------------------------------------ reading

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        try:
            txn = self.env.begin(write=False, buffers=False)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            txn = self.env.begin(write=False, buffers=False)
        try:
            yield txn
        finally:
            txn.abort()

    def _mine(self, rcpt_key: bytes) -> bool:
        """In multi-process mode: is this recipient's message in this process's shard?"""
        if self.shard is None:
            return True
        return shard_of(rcpt_key[:ID_LEN], self.shard[1]) == self.shard[0]

    def due(self, now: float, *, lane: str, limit: int) -> list[DueItem]:
        """Up to `limit` recipients due at `now` from lane "new" or "retry", oldest first.

        With a shard set, other shards' keys are skipped; at most max(2000, 8 × limit)
        keys are looked at per call (the other workers lease theirs meanwhile)."""
        db = self._db["due_new" if lane == "new" else "due_retry"]
        out: list[DueItem] = []
        bound = _TS.pack(int(now * 1000) + 1)
        budget = max(2000, 8 * limit)
        with self._read() as txn, txn.cursor(db=db) as cur:
            if not cur.first():
                return out
            for key in cur.iternext(keys=True, values=False):
                if key >= bound or len(out) >= limit:
                    break
                if self.shard is not None:
                    budget -= 1
                    if budget < 0:
                        break
                    if not self._mine(bytes(key[8:])):
                        continue
                out.append(_parse_due_key(key)[1])
        return out

    def next_due_at(self) -> float | None:
        """The earliest due time in either lane (for sleeping until then); with a shard
        set, of this shard's recipients among the first 200 keys of each lane."""
        best: float | None = None
        with self._read() as txn:
            for lane in ("due_new", "due_retry"):
                with txn.cursor(db=self._db[lane]) as cur:
                    if not cur.first():
                        continue
                    for n, key in enumerate(cur.iternext(keys=True, values=False)):
                        if n >= 200:
                            break
                        if self._mine(bytes(key[8:])):
                            at, _ = _parse_due_key(key)
                            best = at if best is None else min(best, at)
                            break
        return best

    def message(self, mid: str) -> MessageRecord | None:
        with self._read() as txn:
            raw = txn.get(mid.encode("ascii"), db=self._db["messages"])
        return _msg_dec.decode(raw) if raw is not None else None

    def body(self, mid: str) -> bytes | None:
        with self._read() as txn:
            raw = txn.get(mid.encode("ascii"), db=self._db["bodies"])
        return bytes(raw) if raw is not None else None

    def recipients(self, mid: str) -> list[RecipientRecord]:
        with self._read() as txn:
            return [r for _, r in self._recipients_in(txn, mid)]

    def _recipients_in(self, txn: Any, mid: str) -> list[tuple[int, RecipientRecord]]:
        prefix = mid.encode("ascii")
        out: list[tuple[int, RecipientRecord]] = []
        with txn.cursor(db=self._db["recipients"]) as cur:
            if not cur.set_range(prefix):
                return out
            for key, val in cur.iternext():
                if not key.startswith(prefix) or len(key) != ID_LEN + 2:
                    break
                (idx,) = _IDX.unpack_from(key, ID_LEN)
                out.append((idx, _rcpt_dec.decode(val)))
        return out

    def messages(self) -> Iterator[tuple[MessageRecord, list[RecipientRecord]]]:
        """Every queued message with its recipients, oldest first (ids sort by time)."""
        with self._read() as txn, txn.cursor(db=self._db["messages"]) as cur:
            for key, val in cur.iternext():
                mid = bytes(key).decode("ascii")
                yield _msg_dec.decode(val), [r for _, r in self._recipients_in(txn, mid)]

    def count_by_state(self) -> dict[str, int]:
        counts = {s.value: 0 for s in State}
        with self._read() as txn, txn.cursor(db=self._db["recipients"]) as cur:
            for val in cur.iternext(keys=False, values=True):
                counts[_rcpt_dec.decode(val).state.value] += 1
        return counts

    def message_count(self) -> int:
        with self._read() as txn:
            return int(txn.stat(self._db["messages"])["entries"])

    # ------------------------------------------------------------------ state changes (ops)

    def _move(self, txn: Any, mid: str, idx: int, old: RecipientRecord,
              new: RecipientRecord) -> None:
        """Rewrite a recipient record and keep its single schedule-index key in step."""
        old_db = "due_new" if old.state is State.QUEUED else "due_retry"
        if old.state not in FINAL_STATES:
            txn.delete(_due_key(old.next_attempt_at, mid, idx), db=self._db[old_db])
        if new.state not in FINAL_STATES:
            new_db = "due_new" if new.state is State.QUEUED else "due_retry"
            txn.put(_due_key(new.next_attempt_at, mid, idx), b"", db=self._db[new_db])
        key = _rcpt_key(mid, idx)
        if old.state is State.INFLIGHT and new.state is not State.INFLIGHT:
            txn.delete(key, db=self._db["inflight"])
        elif new.state is State.INFLIGHT and old.state is not State.INFLIGHT:
            txn.put(key, new.domain.encode("utf-8", "surrogateescape"),
                    db=self._db["inflight"])
        txn.put(key, _enc.encode(new), db=self._db["recipients"])

    def lease_op(self, items: list[DueItem], now: float) -> Callable[[Any], list[Leased]]:
        """An op that marks due recipients in flight and returns what it leased.

        Items whose state changed since they were read (delivered, deleted, retried by
        the operator in another process) are skipped, so the in-memory queue never
        holds work the spool no longer has.
        """
        def op(txn: Any) -> list[Leased]:
            out: list[Leased] = []
            messages: dict[str, MessageRecord | None] = {}
            for item in items:
                raw = txn.get(_rcpt_key(item.message_id, item.index), db=self._db["recipients"])
                if raw is None:
                    continue
                rr = _rcpt_dec.decode(raw)
                # Compare at the index's millisecond precision.
                if (rr.state not in (State.QUEUED, State.DEFERRED)
                        or int(rr.next_attempt_at * 1000) > int(now * 1000)):
                    continue
                if item.message_id not in messages:
                    mraw = txn.get(item.message_id.encode("ascii"), db=self._db["messages"])
                    messages[item.message_id] = (
                        _msg_dec.decode(mraw) if mraw is not None else None)
                msg = messages[item.message_id]
                if msg is None:
                    continue
                new = msgspec.structs.replace(
                    rr, state=transition(rr.state, Action.LEASE),
                    next_attempt_at=now + self.lease_seconds, updated_at=now)
                self._move(txn, item.message_id, item.index, rr, new)
                out.append(Leased(msg, item.index, new))
            return out
        return op

    def settle_op(self, results: list[Result], now: float) -> Callable[[Any], list[Settled]]:
        """An op applying delivery results; removes messages whose recipients are all final."""
        def op(txn: Any) -> list[Settled]:
            out: list[Settled] = []
            touched: dict[str, MessageRecord] = {}
            for res in results:
                raw = txn.get(_rcpt_key(res.message_id, res.index), db=self._db["recipients"])
                mraw = txn.get(res.message_id.encode("ascii"), db=self._db["messages"])
                if raw is None or mraw is None:
                    continue
                rr = _rcpt_dec.decode(raw)
                if (rr.state, res.action) not in TRANSITIONS:
                    continue  # settled elsewhere meanwhile (operator, recovery): skip
                state = transition(rr.state, res.action)
                attempted = res.action in (Action.DELIVER, Action.DEFER, Action.BOUNCE,
                                           Action.EXPIRE) and rr.state is State.INFLIGHT
                new = msgspec.structs.replace(
                    rr, state=state,
                    attempts=rr.attempts + (1 if attempted else 0),
                    next_attempt_at=(res.next_attempt_at if state not in FINAL_STATES
                                     else rr.next_attempt_at),
                    last_attempt_at=now if attempted else rr.last_attempt_at,
                    last_response=res.response or rr.last_response,
                    remote_mta=res.remote_mta or rr.remote_mta,
                    updated_at=now)
                self._move(txn, res.message_id, res.index, rr, new)
                msg = _msg_dec.decode(mraw)
                touched[res.message_id] = msg
                out.append(Settled(msg, res.index, new))
            final: dict[str, list[tuple[int, RecipientRecord]]] = {}
            for s in out:
                if s.recipient.state in FINAL_STATES:
                    final.setdefault(s.message.id, []).append((s.index, s.recipient))
            done = {mid for mid, msg in touched.items()
                    if self._remove_if_done(txn, mid, msg, final.get(mid, []))}
            for s in out:
                s.message_done = s.message.id in done
            return out
        return op

    def _remove_if_done(self, txn: Any, mid: str, msg: MessageRecord | None = None,
                        settled_final: list[tuple[int, RecipientRecord]] | None = None,
                        ) -> bool:
        """Delete the message if every recipient is final. `settled_final`: recipients
        this op just made final; when they are all of the message's (the usual
        one-recipient case) the recipient scan is skipped."""
        if (msg is not None and settled_final
                and {i for i, _ in settled_final} == set(range(len(msg.recipients)))):
            self._delete_message(txn, mid, settled_final)
            return True
        rcpts = self._recipients_in(txn, mid)
        if any(r.state not in FINAL_STATES for _, r in rcpts):
            return False
        self._delete_message(txn, mid, rcpts)
        return True

    def _delete_message(self, txn: Any, mid: str,
                        rcpts: list[tuple[int, RecipientRecord]]) -> None:
        for idx, r in rcpts:
            if r.state not in FINAL_STATES:
                db = "due_new" if r.state is State.QUEUED else "due_retry"
                txn.delete(_due_key(r.next_attempt_at, mid, idx), db=self._db[db])
            if r.state is State.INFLIGHT:
                txn.delete(_rcpt_key(mid, idx), db=self._db["inflight"])
            txn.delete(_rcpt_key(mid, idx), db=self._db["recipients"])
        key = mid.encode("ascii")
        txn.delete(key, db=self._db["messages"])
        txn.delete(key, db=self._db["bodies"])
        self._delete_signatures(txn, key)

    def _delete_signatures(self, txn: Any, key: bytes) -> None:
        with txn.cursor(db=self._db["dkim"]) as cur:
            found = cur.set_range(key)
            while found and bytes(cur.key()[:ID_LEN]) == key:
                found = cur.delete()

    def dkim_signature(self, mid: str, tag: str) -> bytes | None:
        """The DKIM-Signature header(s) stored for a message and "domain/generation"."""
        with self._read() as txn:
            raw = txn.get(_sig_key(mid, tag), db=self._db["dkim"])
        return bytes(raw) if raw is not None else None

    def save_dkim_signature(self, mid: str, tag: str,
                            signature: bytes) -> asyncio.Future[None]:
        """Store a message's signature (queued for the next group commit at once; await
        the result for durability); ignored once the message is gone."""
        key = _sig_key(mid, tag)

        def op(txn: Any) -> None:
            if txn.get(mid.encode("ascii"), db=self._db["messages"]) is not None:
                txn.put(key, signature, db=self._db["dkim"])

        return self.write_soon(op, size=len(signature))

    def recover_op(self, now: float,
                   shard: tuple[int, int] | None = None) -> Callable[[Any], int]:
        """An op run once at start: every in-flight recipient becomes due now.

        A crash between a remote 250 and our commit of DELIVERED means one duplicate
        delivery; that is the price of never losing a message. With `shard` (i, N), only
        recipients of shard i: a restarted worker recovers what it had in flight while
        the other workers keep delivering theirs.

        Reads the "inflight" index: O(in flight), whatever the queue depth. On a spool
        from before the index (no INFLIGHT_COMPLETE key) it scans the recipients once,
        indexes the in-flight ones it leaves (other shards'), and marks the index complete.
        """
        def mine(key: bytes) -> bool:
            return shard is None or shard_of(key[:ID_LEN], shard[1]) == shard[0]

        def op(txn: Any) -> int:
            index = self._db["inflight"]
            moved: list[tuple[str, int, RecipientRecord]] = []
            if txn.get(self.INFLIGHT_COMPLETE, db=index) is None:
                with txn.cursor(db=self._db["recipients"]) as cur:
                    for key, val in cur.iternext():
                        rr = _rcpt_dec.decode(val)
                        if rr.state is not State.INFLIGHT:
                            continue
                        if mine(bytes(key)):
                            mid = bytes(key[:ID_LEN]).decode("ascii")
                            (idx,) = _IDX.unpack_from(key, ID_LEN)
                            moved.append((mid, idx, rr))
                        txn.put(bytes(key), rr.domain.encode("utf-8", "surrogateescape"),
                                db=index)
                txn.put(self.INFLIGHT_COMPLETE, b"", db=index)
            else:
                stale: list[bytes] = []
                with txn.cursor(db=index) as cur:
                    for key in cur.iternext(keys=True, values=False):
                        if len(key) != ID_LEN + 2:
                            continue  # INFLIGHT_COMPLETE
                        if not mine(bytes(key)):
                            continue
                        raw = txn.get(key, db=self._db["recipients"])
                        held = _rcpt_dec.decode(raw) if raw is not None else None
                        if held is None or held.state is not State.INFLIGHT:
                            stale.append(bytes(key))
                            continue
                        rr = held
                        mid = bytes(key[:ID_LEN]).decode("ascii")
                        (idx,) = _IDX.unpack_from(key, ID_LEN)
                        moved.append((mid, idx, rr))
                for key in stale:
                    txn.delete(key, db=index)
            for mid, idx, rr in moved:
                new = msgspec.structs.replace(
                    rr, state=transition(rr.state, Action.RECOVER), next_attempt_at=now,
                    updated_at=now)
                self._move(txn, mid, idx, rr, new)
            return len(moved)
        return op

    def operator_op(self, mid: str, action: Action, now: float,
                    response: str = "") -> Callable[[Any], list[Settled]]:
        """retry / bounce for every non-final, not in-flight recipient of a message."""
        def op(txn: Any) -> list[Settled]:
            mraw = txn.get(mid.encode("ascii"), db=self._db["messages"])
            if mraw is None:
                raise KeyError(mid)
            msg = _msg_dec.decode(mraw)
            out: list[Settled] = []
            for idx, rr in self._recipients_in(txn, mid):
                if rr.state in FINAL_STATES or rr.state is State.INFLIGHT:
                    continue
                new = msgspec.structs.replace(
                    rr, state=transition(rr.state, action),
                    next_attempt_at=now if action is Action.RETRY else rr.next_attempt_at,
                    last_response=response or rr.last_response, updated_at=now)
                self._move(txn, mid, idx, rr, new)
                out.append(Settled(msg, idx, new))
            done = self._remove_if_done(txn, mid)
            for s in out:
                s.message_done = done
            return out
        return op

    def delete_op(self, mid: str) -> Callable[[Any], MessageRecord]:
        def op(txn: Any) -> MessageRecord:
            mraw = txn.get(mid.encode("ascii"), db=self._db["messages"])
            if mraw is None:
                raise KeyError(mid)
            self._delete_message(txn, mid, self._recipients_in(txn, mid))
            return _msg_dec.decode(mraw)
        return op


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _MapFull(Exception):
    pass


class _Handoff:
    """A batch's ops on their way from the writer thread to the loop and back, and the
    meeting of the two threads around the write transaction (_run_batch_split). Each
    signal is a lock created held and released once: the cheapest wait that releases
    the GIL."""

    __slots__ = ("_guard", "_txn", "_withdrawn", "committing", "done", "error", "fns",
                 "parked", "results", "txn_ready")

    def __init__(self, fns: list[Callable[[Any], Any]]) -> None:
        self.fns = fns
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self.parked = _signal()      # loop → writer: waiting at the mailbox
        self.txn_ready = _signal()   # writer → loop: the transaction is offered
        self.done = _signal()        # loop → writer: the ops ran
        self.committing = _signal()  # writer → loop: going into commit
        self._guard = threading.Lock()
        self._txn: Any = None
        self._withdrawn = False      # the loop stopped waiting; nothing is taken now

    def offer(self, txn: Any) -> bool:
        """Writer: hand `txn` (None: there is none) to the waiting loop. False if the
        loop has stopped waiting: the ops must be posted to it instead."""
        with self._guard:
            if self._withdrawn:
                return False
            self._txn = txn
            self.txn_ready.release()
            return txn is not None

    def take(self) -> Any:
        """Loop: the offered transaction, or None, and then no offer is taken."""
        with self._guard:
            self._withdrawn = self._txn is None
            return self._txn


def _signal() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _OpFailed:
    error: Exception
