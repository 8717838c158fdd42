"""Build a large LMDB queue spool directly (not through SMTP), for the scale benches.

Messages are written with the store's own record layout (`relay.queue.ops.put_message`:
message, body, sent record, one recipient record and one `due_new` key per recipient)
in large write transactions, so a 1M-recipient spool takes tens of seconds, not hours.
Recipient n goes to domain `d{n % domains}.test`; message ids sort by time like real
ones. `inflight` recipients (the first ones) are left INFLIGHT, as a crash leaves them.

    .venv/bin/python bench/queue_fixture.py /tmp/q1m --recipients 1000000 --domains 1000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import msgspec

from relay.clock import FakeClock
from relay.queue.ops import move, put_message, recipients_in
from relay.queue.records import Action, MessageRecord, State, transition
from relay.queue.store import QueueStore

T0 = 1_790_035_200.0
BODY = b"Subject: bench\r\n\r\n" + b"x" * 64 + b"\r\n"


def build(path: Path, recipients: int, domains: int, *, per_message: int = 1,
          inflight: int = 0, now: float = T0, batch: int = 50_000,
          map_size: int = 8 << 30) -> float:
    """Write the spool at `path`; return the seconds it took. Every recipient is due at
    or before `now` (received over the hour before it)."""
    t = time.perf_counter()
    store = QueueStore(path, FakeClock(now), map_size=map_size)
    messages = (recipients + per_message - 1) // per_message
    try:
        # What the relay's first start does on an empty spool (marks the in-flight index
        # complete, so later recoveries read only that index).
        store.write_now(store.recover_op(now))
        for first in range(0, messages, batch):
            last = min(messages, first + batch)

            def op(txn: Any, first: int = first, last: int = last) -> None:
                for m in range(first, last):
                    at = now - 3600.0 + 3600.0 * m / messages
                    n0 = m * per_message
                    rcpts = [f"u{n}@d{n % domains}.test"
                             for n in range(n0, min(recipients, n0 + per_message))]
                    mid = f"{int(at * 1000):012x}{m:08x}"
                    put_message(txn, store.dbs, MessageRecord(
                        mid, "app@example.com", rcpts, at, len(BODY)), BODY)
                    if n0 < inflight:
                        _mark_inflight(store, txn, mid, len(rcpts), at)

            store.write_now(op)
    finally:
        store.close_sync()
    return time.perf_counter() - t


def _mark_inflight(store: QueueStore, txn: Any, mid: str, count: int, at: float) -> None:
    """Lease the message's recipients the way lease_op does (state and index together)."""
    for idx, rr in recipients_in(txn, store.dbs, mid)[:count]:
        new = msgspec.structs.replace(rr, state=transition(State.QUEUED, Action.LEASE),
                                      next_attempt_at=at + store.lease_seconds, updated_at=at)
        move(txn, store.dbs, mid, idx, rr, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--domains", type=int, default=1_000)
    ap.add_argument("--per-message", type=int, default=1)
    ap.add_argument("--inflight", type=int, default=0)
    a = ap.parse_args()
    took = build(a.path, a.recipients, a.domains, per_message=a.per_message,
                 inflight=a.inflight)
    size = (a.path / "data.mdb").stat().st_size
    print(f"{a.recipients:,} recipients over {a.domains:,} domains in {took:.1f} s, "
          f"data.mdb {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
