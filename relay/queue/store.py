"""LMDB queue store: the environment, its sub-databases and the reads. It and
relay/queue/committer.py (which writes to the environment opened here) are the only
modules that import lmdb; relay/queue/ops.py runs on the transaction it is given.

Theory of operation
-------------------
Rule 1 (acknowledge after commit): `submit()` returns a queue id only after the
LMDB transaction holding the message has committed with sync; the SMTP server
answers 250 only then (RFC 5321 §6.1, Postfix mail_stream.c).

Rule 2 (group commit): every write goes through the one GroupCommitter of the store
(relay/queue/committer.py), as an op of one write transaction; the ops that change
queue state are in relay/queue/ops.py, bound here to this store's sub-databases.

Rule 3 (reads): reads run in their own read transactions, never blocking the writer;
the scheduler finds due work with a cursor from the start of a schedule index
(relay/queue/ops.py, Rule 2), never by scanning messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from relay.clock import Clock
from relay.events.headers import header_fields
from relay.queue import ops
from relay.queue.committer import GroupCommitter, StoreStats
from relay.queue.keys import (
    ID_LEN,
    MAX_RECIPIENTS,
    TS,
    DueItem,
    msg_dec,
    new_message_id,
    parse_due_key,
    rcpt_dec,
    shard_of,
)
from relay.queue.ops import Leased, NewMessage, Result, Settled
from relay.queue.records import Action, MessageRecord, RecipientRecord, State
from relay.statedir import StateError

T = TypeVar("T")


class QueueStore:
    """The queue spool. Open once per process (never across fork)."""

    # "warmup": per-IP warm-up counters (relay/delivery/shaper.py), committed with the queue.
    # "suppression": the account-level suppression list (relay/suppression/store.py);
    # "sent": message records kept after delivery for matching late bounces/complaints
    # (pruned by relay/delivery/sentfrom.py);
    # "sent_from": the source IP and provider of each delivery, by message id and domain
    # (relay/delivery/sentfrom.py), for the same feedback; pruned with "sent".
    # "outbox": events waiting for their webhook (relay/events/destinations.py);
    # "event_outbox": events staged with the state change they report
    # (relay/events/journal.py), so a crash cannot separate the two.
    # "dkim": DKIM-Signature header bytes per (message id, "domain/generation"), so a
    # retry after a restart reuses the signature already sent (relay/dkim/sigcache.py);
    # removed with the message.
    # "suppression_tenant": the tenants' own suppression lists (relay/suppression/store.py).
    # "inflight": one key per INFLIGHT recipient (its recipients key; value: its domain),
    # so recover_op() at start reads only what was in flight, not every recipient. The
    # key INFLIGHT_COMPLETE says the index is complete (written by the first recovery,
    # which scans the recipients once on a spool from before the index).
    # "quota": recipients counted per scope and second for the rolling 24-hour quota
    # (relay/tenants/quotastore.py), committed with the message they count;
    # "reputation": sends, bounces and complaints per scope and hour for the reputation
    # status (relay/tenants/repstore.py).
    # "tenants": the tenants by name and "status": the reputation status of each tenant
    # and configuration set (relay/tenants/store.py).
    # "templates": the SES API's email templates by name (relay/sesapi/templates.py).
    # "history", "history_tl", "history_ix": each message's history, its timeline entries
    # and their inverted index; "stats": sending statistics per 15-minute bucket
    # (relay/history/keys.py has the keys; pruned by relay/history/retention.py).
    # "tracking": the links and copy times of tracked messages, for the open and click
    # routes (relay/tracking/links.py; pruned with "sent"); "engaged": when each recipient
    # last opened or clicked (relay/tracking/engagement.py; pruned by the engaged window).
    # "transfers", "transfers_tl": the X-Relay-Transfer-Id of each message accepted from
    # `relay queue transfer`, and the same by time, so a message sent twice is queued once
    # (relay/queue/transferlog.py; bounded, pruned as ids are added).
    DBS = ("messages", "bodies", "recipients", "due_new", "due_retry", "warmup",
           "suppression", "sent", "outbox", "event_outbox", "dkim", "inflight", "sent_from",
           "suppression_tenant", "quota", "reputation", "tenants", "status", "templates",
           "history", "history_tl", "history_ix", "stats", "tracking", "engaged",
           "transfers", "transfers_tl")
    INFLIGHT_COMPLETE = ops.INFLIGHT_COMPLETE

    def __init__(self, path: Path | str, clock: Clock, *, map_size: int = 1 << 30,
                 commit_window: float = 0.002, commit_batch_max: int = 256,
                 lease_seconds: float = 1800.0, shard: tuple[int, int] | None = None,
                 commit_observers: Iterable[Callable[[StoreStats], None]] = ()) -> None:
        self.path = Path(path)
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = self._open(map_size)
        self.committer = GroupCommitter(self.env, self.path, clock,
                                        commit_window=commit_window,
                                        commit_batch_max=commit_batch_max)
        self.stats: StoreStats = self.committer.stats
        # Called on the loop after every group commit (relay/admin/metrics.py).
        self.on_commit: list[Callable[[], None]] = self.committer.on_commit
        # Given the store's figures after every group commit (relay/admin/metrics.py).
        self.on_commit.extend(functools.partial(observe, self.stats)
                              for observe in commit_observers)
        # Multi-process mode (server.workers = N): (i, N) makes due()/next_due_at() see
        # only recipients whose domain is shard i, so no two processes lease one recipient.
        self.shard = shard

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
        await self.committer.start()

    @property
    def running(self) -> bool:
        """Started and not closed: write() may be used."""
        return self.committer.running

    async def close(self) -> None:
        await self.committer.close()
        self.env.close()

    def close_sync(self) -> None:
        """Close a store used only for reads and direct writes (the CLI)."""
        self.env.close()

    # ------------------------------------------------------------------ writing

    async def write(self, fn: Callable[[Any], T], size: int = 0) -> T:
        """Run `fn(txn)` inside the next group commit; return its result after the sync."""
        return await self.committer.write_soon(fn, size)

    def write_soon(self, fn: Callable[[Any], T], size: int = 0,
                   on_durable: Callable[[T], None] | None = None) -> asyncio.Future[T]:
        """Queue `fn(txn)` for the next group commit (GroupCommitter.write_soon)."""
        return self.committer.write_soon(fn, size, on_durable)

    def write_now(self, fn: Callable[[Any], T]) -> T:
        """A synchronous write transaction on the calling thread (CLI, tests, recovery)."""
        return self.committer.write_now(fn)

    async def submit(self, msg: NewMessage,
                     on_durable: Callable[[str], None] | None = None,
                     account: object = None) -> str:
        """Queue a message durably; return its id only after the synced commit (a
        Submitter, relay/smtp/session.py: `on_durable(id)` when the commit syncs). The
        bare store keeps no account model: `account` (a tenants transaction) is the
        business of relay/smtp/submitter.py, and is None where the store is used alone."""
        return (await self.submit_record(msg, on_durable=on_durable)).id

    async def submit_record(
            self, msg: NewMessage,
            also: Callable[[Any, MessageRecord], object] | None = None,
            on_durable: Callable[[str], None] | None = None,
            before: Callable[[Any], object] | None = None) -> MessageRecord:
        """Queue a message durably; `also(txn, record)` runs in the same transaction
        (the Send event is staged there, so it is committed with the message);
        `on_durable(queue id)` as in write_soon(); `before(txn)` runs in it first, and
        what it raises is raised here with nothing written."""
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
            headers_truncated=truncated, tenant=msg.tenant, tracking=msg.tracking)
        durable = None if on_durable is None else (lambda rec: on_durable(rec.id))
        return await self.committer.write_soon(
            ops.submit_op(self._db, record, msg.body, also, before), len(msg.body), durable)

    # The state-changing ops (relay/queue/ops.py) bound to this store, for write() or
    # write_now().

    def lease_op(self, items: list[DueItem], now: float) -> Callable[[Any], list[Leased]]:
        return ops.lease_op(self._db, items, now, self.lease_seconds)

    def settle_op(self, results: list[Result], now: float) -> Callable[[Any], list[Settled]]:
        return ops.settle_op(self._db, results, now)

    def recover_op(self, now: float,
                   shard: tuple[int, int] | None = None) -> Callable[[Any], int]:
        return ops.recover_op(self._db, now, shard)

    def operator_op(self, mid: str, action: Action, now: float,
                    response: str = "") -> Callable[[Any], list[Settled]]:
        return ops.operator_op(self._db, mid, action, now, response)

    def delete_op(self, mid: str) -> Callable[[Any], MessageRecord]:
        return ops.delete_op(self._db, mid)

    def domain_op(self, mids: list[str], domain: str, action: Action, now: float,
                  response: str = "") -> Callable[[Any], list[Settled]]:
        return ops.domain_op(self._db, mids, domain, action, now, response)

    def drop_domain_op(self, mids: list[str], domain: str, now: float,
                       response: str) -> Callable[[Any], list[Settled]]:
        return ops.drop_domain_op(self._db, mids, domain, now, response)

    # ------------------------------------------------------------------ reading

    def named_db(self, name: str) -> Any:
        """A sub-database handle for ops run through write()/write_now() (one of DBS)."""
        return self._db[name]

    @property
    def dbs(self) -> dict[str, Any]:
        """Every sub-database handle by name (for relay/queue/ops.py functions)."""
        return self._db

    def read_db(self, name: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Every (key, value) of a small sub-database, or of its keys starting with
        `prefix`, in key order, in one read transaction."""
        with self._read() as txn, txn.cursor(db=self._db[name]) as cur:
            if not prefix:
                return [(bytes(k), bytes(v)) for k, v in cur.iternext()]
            out: list[tuple[bytes, bytes]] = []
            if cur.set_range(prefix):
                for k, v in cur.iternext():
                    key = bytes(k)
                    if not key.startswith(prefix):
                        break
                    out.append((key, bytes(v)))
            return out

    def read(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(txn)` in one read transaction (sub-databases through named_db)."""
        with self._read() as txn:
            return fn(txn)

    def sent_message(self, mid: str) -> MessageRecord | None:
        """A message record kept for feedback matching (see DBS "sent")."""
        with self._read() as txn:
            raw = txn.get(mid.encode("ascii"), db=self._db["sent"])
        return msg_dec.decode(raw) if raw is not None else None

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
        bound = TS.pack(int(now * 1000) + 1)
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
                out.append(parse_due_key(key)[1])
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
                            at, _ = parse_due_key(key)
                            best = at if best is None else min(best, at)
                            break
        return best

    def message(self, mid: str) -> MessageRecord | None:
        with self._read() as txn:
            raw = txn.get(mid.encode("ascii"), db=self._db["messages"])
        return msg_dec.decode(raw) if raw is not None else None

    def body(self, mid: str) -> bytes | None:
        with self._read() as txn:
            raw = txn.get(mid.encode("ascii"), db=self._db["bodies"])
        return bytes(raw) if raw is not None else None

    def recipients(self, mid: str) -> list[RecipientRecord]:
        with self._read() as txn:
            return [r for _, r in ops.recipients_in(txn, self._db, mid)]

    def messages(self) -> Iterator[tuple[MessageRecord, list[RecipientRecord]]]:
        """Every queued message with its recipients, oldest first (ids sort by time)."""
        with self._read() as txn, txn.cursor(db=self._db["messages"]) as cur:
            for key, val in cur.iternext():
                mid = bytes(key).decode("ascii")
                rcpts = ops.recipients_in(txn, self._db, mid)
                yield msg_dec.decode(val), [r for _, r in rcpts]

    def pending_at(self, domain: str) -> list[str]:
        """Ids of the messages with a recipient not yet final at `domain`, oldest first."""
        with self._read() as txn:
            return ops.pending_at(txn, self._db, domain)

    def count_by_state(self) -> dict[str, int]:
        counts = {s.value: 0 for s in State}
        with self._read() as txn, txn.cursor(db=self._db["recipients"]) as cur:
            for val in cur.iternext(keys=False, values=True):
                counts[rcpt_dec.decode(val).state.value] += 1
        return counts

    def message_count(self) -> int:
        with self._read() as txn:
            return int(txn.stat(self._db["messages"])["entries"])
