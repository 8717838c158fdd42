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


class Ledger:
    """Counts made while Redis was unreachable, by key, until Redis confirmed each."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._open: dict[tuple[str, str, int], Pending] = {}
        self._sealed: dict[str, Pending] = {}
        self._ids = itertools.count(1)
        self._epoch = ""

    def record(self, pending: Pending) -> None:
        slot = (pending.kind, pending.key,
                pending.at_ms // pending.bucket_ms if pending.bucket_ms else 0)
        have = self._open.get(slot)
        if have is not None:
            pending = Pending(have.kind, have.key, have.n + pending.n, have.at_ms,
                              have.ttl_ms, have.window_ms, have.bucket_ms)
        self._open[slot] = pending

    def forget(self, pending: Pending) -> bool:
        """Take back `pending` (a reservation given back while it is owed to Redis): from
        the open counts of its slot, else from a sealed batch of that slot (lowering a
        sealed batch never undercounts: a retry of a batch Redis already applied adds
        nothing, one it did not apply adds the lower figure). False when nothing of its
        slot is owed any more (Redis has it: give it back there)."""
        slot = self._slot(pending)
        have = self._open.get(slot)
        if have is not None and have.n >= pending.n:
            self._open[slot] = _less(have, pending.n)
            if not self._open[slot].n:
                del self._open[slot]
            return True
        for batch_id, sealed in self._sealed.items():
            if self._slot(sealed) == slot and sealed.n >= pending.n:
                self._sealed[batch_id] = _less(sealed, pending.n)
                return True
        return False

    @staticmethod
    def _slot(p: Pending) -> tuple[str, str, int]:
        return (p.kind, p.key, p.at_ms // p.bucket_ms if p.bucket_ms else 0)

    def prune(self, now_ms: int) -> None:
        """Drop the open sliding-window counts whose window has passed (a per-second
        rate's, during a long outage): Redis would drop them at once; only what is still
        inside its window is owed."""
        gone = [slot for slot, p in self._open.items() if passed(p, now_ms)]
        for slot in gone:
            del self._open[slot]

    def used_since(self, key: str, since_ms: int) -> int:
        """What this node counted for `key` in buckets not wholly before `since_ms` (a
        sliding window's part of the ledger, with Redis's rule: a count leaves when its
        whole bucket is older than the window, never early; a per-second rate's counts of
        a minute ago no longer count)."""
        def inside(p: Pending) -> bool:
            return p.key == key and (p.at_ms // p.bucket_ms + 1) * p.bucket_ms > since_ms \
                if p.bucket_ms else p.key == key
        return (sum(p.n for p in self._open.values() if inside(p))
                + sum(p.n for p in self._sealed.values() if inside(p)))

    def used(self, key: str) -> int:
        """What this node counted for `key` since Redis was last reachable."""
        return (sum(p.n for p in self._open.values() if p.key == key)
                + sum(p.n for p in self._sealed.values() if p.key == key))

    def seal(self, epoch: str) -> list[Batch]:
        """Every count not yet confirmed, as batches with ids that never change: what was
        open is sealed now (later counts open new entries), so a retry sends the same
        batch under the same id. `epoch`: unique to this process (ids never repeat)."""
        for pending in self._open.values():
            self._sealed[f"{self.node_id}:{epoch}:{next(self._ids)}"] = pending
        self._open.clear()
        return [Batch(i, p) for i, p in self._sealed.items()]

    def current(self, batch_id: str) -> Pending | None:
        """A sealed batch as it is now (`forget` may have lowered it since `seal`)."""
        return self._sealed.get(batch_id)

    def confirm(self, batch_id: str) -> None:
        self._sealed.pop(batch_id, None)

    def __len__(self) -> int:
        return len(self._open) + len(self._sealed)
