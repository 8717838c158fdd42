"""Scheduler decisions on a real LMDB spool: cost per decision and memory vs queue depth.

A decision here is the whole path the running relay takes for a queued recipient:
`Scheduler.promote()` (QueueStore.due() on the `new` and `retry` lanes, one
group-committed lease_op, grouping into tasks on the per-destination LaneQueues),
then, per task, the site classification, the site throttle and `WarmupGate.acquire`
with the task's priority lane (16 IPs warming on ses-standard, overflow to 4 warm IPs).
The spool (bench/queue_fixture.py) holds `queued` recipients over `domains` domains
at gmail/microsoft/yahoo/other sites. Each round promotes `batch` recipients
(delivery.active_limit = batch) and decides them (timed); then, untimed, settles them
delivered and queues as many new ones, so the depth stays at `queued`.

Start-up is timed as the relay does it: QueueStore open + recover_op (every in-flight
recipient made due again; the fixture leaves `inflight` of them). RSS is the process's
resident set: the Python heap plus the LMDB pages touched (file-backed, mmap).

    .venv/bin/python bench/scheduler_scale.py --queued 1000000 --domains 1000
    .venv/bin/python bench/scheduler_scale.py --path /tmp/q1m --queued 1000000  # reuse a spool
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from queue_fixture import BODY, T0, build

from relay.clock import FakeClock
from relay.config import Delivery
from relay.delivery.scheduler import Scheduler
from relay.queue.ops import Result, put_message
from relay.queue.records import Action, MessageRecord
from relay.queue.store import QueueStore
from relay.warmup.counters import DayClock
from relay.warmup.gate import IpSpec, PoolSpec, WarmupGate
from relay.warmup.lanes import BULK, ENGAGED
from relay.warmup.plans import SES_STANDARD
from relay.warmup.providers import ProviderMap
from relay.warmup.shaping import SiteThrottle


def mx_of(i: int) -> list[str]:
    kind = i % 4
    if kind == 0:
        return ["aspmx.l.google.com", "alt1.aspmx.l.google.com"]
    if kind == 1:
        return [f"d{i}-test.mail.protection.outlook.com"]
    if kind == 2:
        return ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"]
    return [f"mx1.d{i}.test", f"mx2.d{i}.test"]


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _lane(msg: MessageRecord) -> int:
    return ENGAGED if msg.id.endswith("0") else BULK


async def measure(path: Path, queued: int, domains: int, *, rounds: int = 20,
                  batch: int = 1000) -> dict[str, float]:
    """Decide `rounds` × `batch` recipients off the spool at `path` (built beforehand)."""
    now = T0 + 60.0
    clock = FakeClock(now)
    gc.collect()
    rss0 = rss_mib()
    t = time.perf_counter()
    store = QueueStore(path, clock, map_size=8 << 30, commit_window=0.0,
                       lease_seconds=1800.0)
    recovered = store.write_now(store.recover_op(now))
    startup = time.perf_counter() - t
    rss_started = rss_mib()
    await store.start()
    days = DayClock()
    gate = WarmupGate({
        "dedicated": PoolSpec("dedicated", tuple(IpSpec(f"10.0.0.{i}", "") for i in range(16)),
                              SES_STANDARD, days.day_of(T0), "shared"),
        "shared": PoolSpec("shared", tuple(IpSpec(f"10.0.1.{i}", "") for i in range(4))),
    }, days, "hourly", 2.0)
    providers = ProviderMap()
    throttle = SiteThrottle()
    mx = {f"d{i}.test": mx_of(i) for i in range(domains)}
    sched = Scheduler(store, router=Any, sender=Any, events=Any, clock=clock,  # type: ignore[arg-type]
                      cfg=Delivery(active_limit=batch, ready_queue_limit=batch),
                      hostname="bench")
    sched.lane_of = _lane
    promote_s = gate_s = cpu_s = 0.0
    decided = max_held = refill = 0
    try:
        for _ in range(rounds):
            c = time.process_time()
            t = time.perf_counter()
            await sched.promote()
            t1 = time.perf_counter()
            max_held = max(max_held, sched.held)
            tasks = []
            for dest in list(sched.ready):
                q = sched.ready.pop(dest)
                while q:
                    task = q.popleft()
                    site = providers.site(mx[dest])
                    want = throttle.allowed(site.key, site.limits, now, len(task.items))
                    decision = gate.acquire("dedicated", site.provider, want, now,
                                            task.priority)
                    throttle.take(site.key, site.limits, now,
                                  sum(g.count for g in decision.grants))
                    tasks.append(task)
            t2 = time.perf_counter()
            cpu_s += time.process_time() - c
            promote_s += t1 - t
            gate_s += t2 - t1
            n = sum(len(task.items) for task in tasks)
            decided += n
            sched.held = 0
            # Untimed: deliver what was decided, queue as many new recipients.
            await store.write(store.settle_op(
                [Result(task.message.id, it.index, Action.DELIVER, "250 ok")
                 for task in tasks for it in task.items], now))
            first = refill
            refill += n

            def op(txn: Any, first: int = first, last: int = refill) -> None:
                # Due at T0 (behind the fixture's, ahead of `now` in any later run).
                msgs = store.named_db("messages")
                for m in range(first, last):
                    dom = f"d{m % domains}.test"
                    for _ in range(10):  # a fresh id; a clash with a queued one is rare
                        mid = f"{int(T0 * 1000):012x}{secrets.token_hex(4)}"
                        if txn.get(mid.encode(), db=msgs) is None:
                            break
                    put_message(txn, store.dbs, MessageRecord(
                        mid, "app@example.com", [f"r{m}@{dom}"], T0, len(BODY)), BODY)

            await store.write(op)
            clock.advance(0.5)
            now = clock.now()
    finally:
        await store.close()
    total = promote_s + gate_s
    return {"queued": queued, "domains": domains, "decided": decided,
            "us_per_decision": total / max(1, decided) * 1e6,
            "promote_us": promote_s / max(1, decided) * 1e6,
            "gate_us": gate_s / max(1, decided) * 1e6,
            "decisions_per_s": decided / total if total else 0.0,
            "cpu_us": cpu_s / max(1, decided) * 1e6,
            "startup_s": startup, "recovered": recovered, "max_held": max_held,
            "rss_start_mib": rss_started - rss0, "rss_mib": rss_mib() - rss0,
            "rss_abs_mib": rss_mib(),
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(queued: int, domains: int, *, rounds: int = 20, batch: int = 1000,
        inflight: int = 200, path: Path | None = None) -> dict[str, float]:
    """Build a spool under /tmp (unless `path` is given), measure, delete it."""
    tmp: str | None = None
    if path is None:
        tmp = tempfile.mkdtemp(prefix="relay-bench-q-", dir="/tmp")
        path = Path(tmp) / "queue"
    try:
        built = build(path, queued, domains, inflight=inflight) if tmp else 0.0
        r = asyncio.run(measure(path, queued, domains, rounds=rounds, batch=batch))
        r["build_s"] = built
        r["spool_mib"] = (path / "data.mdb").stat().st_size / 2**20
        return r
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def describe(r: dict[str, float]) -> str:
    return (f"{int(r['queued']):,} queued over {int(r['domains']):,} domains: "
            f"{r['us_per_decision']:.2f} µs/decision (promote {r['promote_us']:.2f} + gate "
            f"{r['gate_us']:.2f}; CPU {r['cpu_us']:.2f}), {r['decisions_per_s']:,.0f} "
            f"decisions/s over "
            f"{int(r['decided']):,}; start-up {r['startup_s']:.3f} s "
            f"({int(r['recovered'])} recovered); ready tier max {int(r['max_held']):,}; "
            f"RSS +{r['rss_start_mib']:.1f} MiB after start-up, +{r['rss_mib']:.1f} MiB after "
            f"decisions ({r['rss_abs_mib']:.0f} MiB total, peak {r['maxrss_mib']:.0f}); "
            f"spool {r['spool_mib']:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--domains", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--path", type=Path, help="an existing spool (bench/queue_fixture.py)")
    a = ap.parse_args()
    print(describe(run(a.queued, a.domains, rounds=a.rounds, batch=a.batch, path=a.path)))


if __name__ == "__main__":
    main()
