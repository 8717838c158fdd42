"""The receiving node's record of the transfer ids it has accepted (`relay queue transfer`).

`relay queue transfer` is at least once: a crash between the peer's 250 and the local
removal sends the message again on the next run. Each message it sends carries
X-Relay-Transfer-Id ("<queue id>@<node>", relay/configsets.py); the receiving node writes
that id here in the same write transaction as the message it queued, so the id is durable
exactly when the message is. A second arrival of the same id finds it and is answered 250
without being queued again (relay/smtp/submitter.py), naming the queue id it was first
queued as.

Bounded: "transfers" holds id -> (accepted at, queue id), "transfers_tl" the same ids by
time. Every write also removes up to PRUNE_PER_WRITE of the oldest ids that are older than
KEEP_SECONDS or beyond MAX_ENTRIES, so the record never grows past MAX_ENTRIES plus a few
and pruning costs a bounded amount per accepted transfer. An id forgotten (expired or
pushed out) is only a duplicate no longer recognised: the message is queued again, as
before this record existed.
"""

from __future__ import annotations

import struct
from typing import Any

from relay.queue.ops import Db

DBS = ("transfers", "transfers_tl")
# A re-run of an interrupted transfer comes within hours, or days after an outage; a week
# covers both. The cap bounds the spool space (about 250 bytes an id with LMDB's overhead).
KEEP_SECONDS = 7 * 86400.0
MAX_ENTRIES = 500_000
PRUNE_PER_WRITE = 4

_TS = struct.Struct(">Q")  # milliseconds, big-endian so the time index sorts by time


class AlreadyAccepted(Exception):
    """This transfer id was accepted before, as `queue_id`: nothing was written."""

    def __init__(self, transfer_id: str, queue_id: str) -> None:
        super().__init__(f"transfer {transfer_id} already accepted as {queue_id}")
        self.transfer_id = transfer_id
        self.queue_id = queue_id


class TransferToSelf(Exception):
    """The transfer id names a message of this node's own queue: the sender is this node."""

    def __init__(self, transfer_id: str) -> None:
        super().__init__(f"transfer {transfer_id} is a message of this node's own queue")
        self.transfer_id = transfer_id


def _key(transfer_id: str) -> bytes:
    return transfer_id.encode("ascii")


def accepted_as(txn: Any, db: Db, transfer_id: str) -> str | None:
    """The queue id `transfer_id` was accepted as, or None (not seen, or forgotten)."""
    raw = txn.get(_key(transfer_id), db=db["transfers"])
    if raw is None:
        return None
    return bytes(raw)[_TS.size:].decode("ascii")


def check(txn: Any, db: Db, transfer_id: str, own_hostname: str) -> None:
    """Before anything is written for a transferred message: raise TransferToSelf when its
    id is "<a queue id of ours>@<our hostname>", AlreadyAccepted when it was taken before."""
    qid, _, node = transfer_id.partition("@")
    if node == own_hostname and txn.get(qid.encode("ascii"), db=db["messages"]) is not None:
        raise TransferToSelf(transfer_id)
    first = accepted_as(txn, db, transfer_id)
    if first is not None:
        raise AlreadyAccepted(transfer_id, first)


def record(txn: Any, db: Db, transfer_id: str, queue_id: str, now: float) -> None:
    """Remember `transfer_id` as accepted as `queue_id` at `now` (in the message's own
    transaction), and prune a few of the oldest ids."""
    ms = max(0, int(now * 1000))
    key = _key(transfer_id)
    txn.put(key, _TS.pack(ms) + queue_id.encode("ascii"), db=db["transfers"])
    txn.put(_TS.pack(ms) + key, b"", db=db["transfers_tl"])
    prune(txn, db, now, PRUNE_PER_WRITE)


def prune(txn: Any, db: Db, now: float, budget: int, *, keep: float = KEEP_SECONDS,
          max_entries: int = MAX_ENTRIES) -> int:
    """Remove up to `budget` of the oldest ids that are older than `keep` seconds or
    beyond `max_entries`; how many were removed."""
    cutoff = _TS.pack(max(0, int((now - keep) * 1000)))
    over = int(txn.stat(db["transfers"])["entries"]) - max_entries
    removed = 0
    with txn.cursor(db=db["transfers_tl"]) as cur:
        while removed < budget and cur.first():
            tkey = bytes(cur.key())
            if tkey[:_TS.size] >= cutoff and over <= 0:
                break
            cur.delete()
            id_key = tkey[_TS.size:]
            raw = txn.get(id_key, db=db["transfers"])
            # Only the entry this time key wrote (a later record of the same id stays).
            if raw is not None and bytes(raw)[:_TS.size] == tkey[:_TS.size]:
                txn.delete(id_key, db=db["transfers"])
                over -= 1
            removed += 1
    return removed


def count(txn: Any, db: Db) -> int:
    """How many transfer ids are remembered."""
    return int(txn.stat(db["transfers"])["entries"])
