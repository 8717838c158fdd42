"""PURE: what a node may do alone while Redis is unreachable, and what it owes Redis after.

The local share of a cluster limit is what was left of it when this node last heard from
Redis, divided by the live nodes it last saw, rounded down, and nothing more: every node
doing the same cannot together pass the limit (a node that never saw the count assumes
none was used). A limit smaller than the live node count leaves a share of 0: that node
holds (defers, never loses) the work until Redis answers again: the cluster limit holds.

Counts a node makes meanwhile go into the Ledger; when Redis returns each is added once
(a batch id the script guards), so none is lost and a retried batch is not doubled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


def local_share(limit: int, last_count: int, live_nodes: int) -> int:
    """This node's share of `limit` while Redis is unreachable (see the module doc)."""
    if limit <= 0:
        return 0
    left = limit - max(0, last_count)
    return max(0, left) // max(1, live_nodes)


@dataclass(frozen=True)
class Pending:
    """`n` counted locally for one Redis key: a fixed window's counter (`ttl_ms` its
    life) or a sliding window (`at_ms` the time it was counted, `window_ms`/`bucket_ms`)."""

    kind: str  # "fixed" | "sliding"
    key: str
    n: int
    at_ms: int = 0
    ttl_ms: int = 0
    window_ms: int = 0
    bucket_ms: int = 0


@dataclass(frozen=True)
class Batch:
    batch_id: str
    pending: Pending


def passed(p: Pending, now_ms: int) -> bool:
    """A sliding window's count whose whole bucket is older than its window at `now_ms`
    (Redis has dropped it, or would at once)."""
    return p.kind == "sliding" and p.bucket_ms > 0 \
        and (p.at_ms // p.bucket_ms + 1) * p.bucket_ms + p.window_ms <= now_ms


def _less(p: Pending, n: int) -> Pending:
    return Pending(p.kind, p.key, p.n - n, p.at_ms, p.ttl_ms, p.window_ms, p.bucket_ms)


def _bucket(p: Pending) -> int:
    return p.at_ms // p.bucket_ms if p.bucket_ms else 0


class _Entry:
    """One count owed for one bucket of one key: open (more may be added) until sealed
    into a batch with an id."""

    __slots__ = ("batch_id", "pending")

    def __init__(self, pending: Pending) -> None:
        self.pending = pending
        self.batch_id: str | None = None


class _KeyLedger:
    """What is owed for one Redis key: its entries oldest first, the open entry of each
    bucket, and their total (so the local share's check costs no scan)."""

    __slots__ = ("entries", "open", "total")

    def __init__(self) -> None:
        self.entries: dict[int, _Entry] = {}  # by serial: insertion order is time order
        self.open: dict[int, int] = {}  # bucket -> serial of its open entry
        self.total = 0


class Ledger:
    """Counts made while Redis was unreachable, by key, until Redis confirmed each.
    Indexed by key with a running total per key: a node that runs for hours on its local
    shares checks a recipient without scanning what every tenant owes."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._keys: dict[str, _KeyLedger] = {}
        self._sealed: dict[str, tuple[str, int]] = {}  # batch id -> (key, serial)
        self._serial = itertools.count(1)
        self._ids = itertools.count(1)
        self._count = 0

    def record(self, pending: Pending) -> None:
        kl = self._keys.setdefault(pending.key, _KeyLedger())
        kl.total += pending.n
        serial = kl.open.get(_bucket(pending))
        if serial is not None:
            entry = kl.entries[serial]
            entry.pending = _less(entry.pending, -pending.n)
            return
        serial = next(self._serial)
        kl.entries[serial] = _Entry(pending)
        kl.open[_bucket(pending)] = serial
        self._count += 1

    def _remove(self, key: str, kl: _KeyLedger, serial: int) -> None:
        entry = kl.entries.pop(serial)
        kl.total -= entry.pending.n
        self._count -= 1
        if entry.batch_id is not None:
            self._sealed.pop(entry.batch_id, None)
        elif kl.open.get(_bucket(entry.pending)) == serial:
            del kl.open[_bucket(entry.pending)]
        if not kl.entries:
            del self._keys[key]

    def forget(self, pending: Pending) -> bool:
        """Take back `pending` (a reservation given back while it is owed to Redis): from
        the open count of its bucket, else from a sealed batch of that bucket (lowering a
        sealed batch never undercounts: a retry of a batch Redis already applied adds
        nothing, one it did not apply adds the lower figure). False when nothing of its
        bucket is owed any more (Redis has it: give it back there)."""
        kl = self._keys.get(pending.key)
        if kl is None:
            return False
        bucket = _bucket(pending)
        serials = ([kl.open[bucket]] if bucket in kl.open else []) + \
            [s for s, e in kl.entries.items()
             if e.batch_id is not None and _bucket(e.pending) == bucket]
        for serial in serials:
            entry = kl.entries[serial]
            if entry.pending.kind == pending.kind and entry.pending.n >= pending.n:
                entry.pending = _less(entry.pending, pending.n)
                kl.total -= pending.n
                return True
        return False

    def used_at(self, key: str, now_ms: int) -> int:
        """What this node owes for `key` still inside its window at `now_ms` (counts
        whose whole bucket is older than the window leave, as in Redis: never early)."""
        kl = self._keys.get(key)
        if kl is None:
            return 0
        while kl.entries:
            serial, entry = next(iter(kl.entries.items()))
            if not passed(entry.pending, now_ms):
                break
            self._remove(key, kl, serial)
            if key not in self._keys:
                return 0
        return kl.total

    def prune(self, now_ms: int) -> None:
        """Drop, for every key, the counts whose window has passed (Redis would drop them
        at once: only what is still inside its window is owed)."""
        for key in list(self._keys):
            self.used_at(key, now_ms)

    def used(self, key: str) -> int:
        """What this node counted for `key` since Redis was last reachable."""
        kl = self._keys.get(key)
        return kl.total if kl is not None else 0

    def seal(self, epoch: str) -> list[Batch]:
        """Every count not yet confirmed, as batches with ids that never change: what was
        open is sealed now (later counts open new entries), so a retry sends the same
        batch under the same id. `epoch`: unique to this process (ids never repeat)."""
        for key, kl in self._keys.items():
            for serial in kl.open.values():
                batch_id = f"{self.node_id}:{epoch}:{next(self._ids)}"
                kl.entries[serial].batch_id = batch_id
                self._sealed[batch_id] = (key, serial)
            kl.open.clear()
        return [Batch(i, self._keys[key].entries[serial].pending)
                for i, (key, serial) in self._sealed.items()]

    def current(self, batch_id: str) -> Pending | None:
        """A sealed batch as it is now (`forget` may have lowered it since `seal`); None
        once confirmed or dropped (its window passed)."""
        where = self._sealed.get(batch_id)
        if where is None:
            return None
        return self._keys[where[0]].entries[where[1]].pending

    def confirm(self, batch_id: str) -> None:
        where = self._sealed.get(batch_id)
        if where is not None:
            key, serial = where
            self._remove(key, self._keys[key], serial)

    def __len__(self) -> int:
        return self._count
