"""The group committer: every write to the queue spool goes through one writer thread.

Rule (group commit): every write (submissions, leases, delivery results, operator
actions) is an operation queued to one committer. The committer runs a batch of
operations in one write transaction on one dedicated OS thread (py-lmdb binds the write
lock to a thread, #465) and resolves each caller's future after the commit returns.
While one fsync is in flight the next batch gathers, so concurrent sessions share fsyncs
instead of paying one each.

Failure mapping: MapFullError grows the map (twice the size, bounded by free disk) and
retries the batch; if it cannot grow, StoreFull (452 4.3.1). Any other LMDB/OS error on
commit fails the whole batch with StoreUnavailable (451 4.3.0), or StoreFull when the
disk is (nearly) full. Nothing is half written: a failed transaction is aborted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from relay.clock import Clock
from relay.queue.mailbox import LoopMailbox

T = TypeVar("T")
log = logging.getLogger(__name__)


class StoreFull(Exception):
    """The LMDB map or the disk is full: answer 452 4.3.1, keep serving."""


class StoreUnavailable(Exception):
    """Any other failure to commit: answer 451 4.3.0, never 250."""


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


class GroupCommitter:
    """The writer thread of one LMDB environment and the queue of ops waiting for it."""

    def __init__(self, env: Any, path: Path, clock: Clock, *, commit_window: float = 0.002,
                 commit_batch_max: int = 256) -> None:
        self.env = env
        self.path = path
        self.clock = clock
        self.commit_window = commit_window
        self.commit_batch_max = commit_batch_max
        self.stats = StoreStats()
        # Ops waiting for the writer thread (deque appends and pops are thread-safe).
        self._pending: collections.deque[_Op] = collections.deque()
        self._signal = threading.Event()          # ops queued, or closing
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mailbox = LoopMailbox()  # the writer thread's calls to the loop
        self._writer: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False
        self.on_commit: list[Callable[[], None]] = []

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
        """Refuse new ops, commit (or fail) every queued one, stop the writer thread."""
        self._closing = True
        if self._writer is not None:
            self._signal.set()
            assert self._stopped is not None
            await self._stopped  # every queued op committed (or failed) first
            self._writer.join()
            self._writer = None
            self._mailbox.close()

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
        goes back to its sessions, and this thread commits as soon as it holds the GIL
        again. So the write lock is held for the ops and the sync only, not also for a
        loop turn and a wait for the GIL as when the transaction was opened first and the
        ops posted after: with `server.workers = 2` the other process waited out all of
        that (write-lock wait p50 4.7 ms, p90 18 ms). The loop no longer waits a second
        time, until this thread is inside commit: that stopped every session for one more
        thread wake-up per commit (0.3-0.4 ms of loop time a message, its p99 6-9 ms, on
        the loaded bench machine), more than handing this thread the GIL at once gained.
        A loop that waited PARK_MAX without getting the transaction (another process's
        writer held the lock that long) goes back to its sessions, and the ops are posted
        to it the old way."""
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
    # process's commit, with workers = N). Real time: I/O scheduling like
    # commit_window, not policy.
    PARK_MAX = 0.005

    @classmethod
    def _meet_on_loop(cls, hand: _Handoff) -> None:
        """On the loop (a mailbox call): wait for the transaction and run the ops; the
        writer thread commits them (see _run_batch_split)."""
        hand.parked.release()
        hand.txn_ready.acquire(timeout=cls.PARK_MAX)
        txn = hand.take()
        if txn is None:
            return  # not offered in time (posted later), or begin failed
        cls._apply_on_loop(txn, hand)

    @staticmethod
    def _apply_on_loop(txn: Any, hand: _Handoff) -> None:
        try:
            hand.results = GroupCommitter._apply(txn, hand.fns)
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

    __slots__ = ("_guard", "_txn", "_withdrawn", "done", "error", "fns", "parked",
                 "results", "txn_ready")

    def __init__(self, fns: list[Callable[[Any], Any]]) -> None:
        self.fns = fns
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self.parked = _signal()      # loop → writer: waiting at the mailbox
        self.txn_ready = _signal()   # writer → loop: the transaction is offered
        self.done = _signal()        # loop → writer: the ops ran
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
