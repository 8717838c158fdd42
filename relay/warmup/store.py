"""Warm-up state as stored: IpState records in the queue's "warmup" sub-database.

Owns: the key layout (counters.worker_key: one record per IP and worker) and the
merge rules on reading them back, for the delivery shell (relay/delivery/shaper.py),
the admin API and `relay warmup`. Pure: it reads through a store's `read_db` and writes
through an op the caller hands to the store's group committer (`persist_op`); it opens
no environment and never awaits.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.warmup import counters
from relay.warmup.counters import IpState

_dec = msgspec.msgpack.Decoder(IpState)


def stored_records(store: Any) -> list[tuple[str, int, IpState]]:
    """Every stored IpState as (IP, worker index, state) (counters.worker_key), from one
    read of the "warmup" sub-database."""
    return [(*counters.parse_key(k.decode("ascii")), _dec.decode(v))
            for k, v in store.read_db("warmup")]


def load_states(store: Any, worker: tuple[int, int] | None = None,
                records: list[tuple[str, int, IpState]] | None = None) -> dict[str, IpState]:
    """The IpStates `worker` counts in (counters.worker_key). Without `worker`, or for
    worker 0: the IPs' own records, where the operator's changes are. Worker i: its own
    records merged with the operator's later changes, and for an IP it has none of yet
    the IP's own record without its counts. `records`: stored_records() already read."""
    index = worker[0] if worker is not None else 0
    if records is None:
        records = stored_records(store)
    shared = {ip: st for ip, i, st in records if i == 0}
    if index == 0:
        return shared
    states = {ip: counters.plan_only(st) for ip, st in shared.items()}
    for ip, i, st in records:  # with the operator's changes made since it last wrote
        if i == index:
            states[ip] = counters.merge_operator(st, shared[ip]) if ip in shared else st
    return states


def peer_states(records: list[tuple[str, int, IpState]], index: int
                ) -> dict[str, list[IpState]]:
    """IP -> the records of it that workers other than `index` keep (worker 0's is the
    IP's own record)."""
    peers: dict[str, list[IpState]] = {}
    for ip, i, st in records:
        if i != index:
            peers.setdefault(ip, []).append(st)
    return peers


def total_states(store: Any) -> dict[str, IpState]:
    """Every IP's state with all workers' counts added up (`relay warmup status`)."""
    records = stored_records(store)
    totals = {ip: st for ip, i, st in records if i == 0}
    for ip, i, st in records:
        if i != 0:
            counters.add_counts(totals.setdefault(ip, IpState()), st)
    return totals


def persist_op(store: Any, snapshot: dict[str, bytes],
               worker: tuple[int, int] | None = None) -> Any:
    """An op writing `worker`'s IpStates (counters.worker_key); returns the IPs' own
    records that the operator changed meanwhile (a higher op_seq), which are not
    written over but merged first."""
    db = store.named_db("warmup")

    def op(txn: Any) -> dict[str, IpState]:
        newer: dict[str, IpState] = {}
        for ip, blob in snapshot.items():
            raw = txn.get(ip.encode("ascii"), db=db)
            if raw is not None:
                stored = _dec.decode(raw)
                if stored.op_seq > _dec.decode(blob).op_seq:
                    newer[ip] = stored
                    continue
            txn.put(counters.worker_key(ip, worker).encode("ascii"), blob, db=db)
        return newer
    return op
