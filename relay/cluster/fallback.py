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
        """Take back `pending` (a reservation given back while Redis is unreachable) from
        the open counts; False when its batch is already sealed (then it stays counted:
        more than was sent, never less)."""
        slot = (pending.kind, pending.key,
                pending.at_ms // pending.bucket_ms if pending.bucket_ms else 0)
        have = self._open.get(slot)
        if have is None or have.n < pending.n:
            return False
        if have.n == pending.n:
            del self._open[slot]
        else:
            self._open[slot] = Pending(have.kind, have.key, have.n - pending.n, have.at_ms,
                                       have.ttl_ms, have.window_ms, have.bucket_ms)
        return True

    def prune(self, now_ms: int) -> None:
        """Drop the open sliding-window counts whose window has passed (a per-second
        rate's, during a long outage): Redis would drop them at once; only what is still
        inside its window is owed."""
        gone = [slot for slot, p in self._open.items()
                if p.kind == "sliding" and p.at_ms + p.window_ms + p.bucket_ms <= now_ms]
        for slot in gone:
            del self._open[slot]

    def used_since(self, key: str, since_ms: int) -> int:
        """What this node counted for `key` at or after `since_ms` (a sliding window's
        part of the ledger: a per-second rate's counts of a minute ago no longer count)."""
        return (sum(p.n for p in self._open.values() if p.key == key and p.at_ms >= since_ms)
                + sum(p.n for p in self._sealed.values()
                      if p.key == key and p.at_ms >= since_ms))

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

    def confirm(self, batch_id: str) -> None:
        self._sealed.pop(batch_id, None)

    def __len__(self) -> int:
        return len(self._open) + len(self._sealed)
