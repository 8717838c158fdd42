"""Warm-up scheduling decisions per second, as the queue grows.

A decision is what the scheduler asks for every transaction: classify the
destination's MX hosts into a provider/site, ask the site throttle, and let the
WarmupGate pick source IPs and reserve capacity (relay.warmup, pure). Queued
recipients are spread over 1,000 domains hosted at gmail, microsoft, yahoo and
"other" sites; each decision takes the next recipient in queue order. The cost
must not grow with the queue: no decision scans it.

    .venv/bin/pytest bench/test_bench_warmup.py -s                 # smoke: 10k, fast
    BENCH_FULL=1 .venv/bin/pytest bench/test_bench_warmup.py -s    # 100k and 1M

`test_bench_warmup_queued_memory` holds the queued recipients as the scheduler's
ready tier holds them (a Task with its Leased record per recipient, in a
per-destination LaneQueue, one message in ten in the engaged lane) and reports
the memory that takes (tracemalloc peak and RSS delta), then drains it through
lane-ordered decisions with the priority passed to the gate.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest

from relay.delivery.scheduler import LaneQueue, Task
from relay.queue.records import MessageRecord, RecipientRecord
from relay.queue.store import Leased
from relay.warmup.counters import DayClock
from relay.warmup.gate import IpSpec, PoolSpec, WarmupGate
from relay.warmup.lanes import BULK, ENGAGED
from relay.warmup.plans import SES_STANDARD
from relay.warmup.providers import ProviderMap
from relay.warmup.shaping import SiteThrottle

FULL = bool(os.environ.get("BENCH_FULL"))
SIZES = [100_000, 1_000_000] if FULL else [10_000]
DOMAINS = 1_000
T0 = 1_790_035_200.0


def _mx(i: int) -> list[str]:
    kind = i % 4
    if kind == 0:
        return ["aspmx.l.google.com", "alt1.aspmx.l.google.com"]
    if kind == 1:
        return [f"d{i}-test.mail.protection.outlook.com"]
    if kind == 2:
        return ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"]
    return [f"mx1.d{i}.test", f"mx2.d{i}.test"]


def run(queued: int) -> dict[str, float]:
    days = DayClock()
    pools = {
        "dedicated": PoolSpec("dedicated", tuple(IpSpec(f"10.0.0.{i}", "") for i in range(16)),
                              SES_STANDARD, days.day_of(T0), "shared"),
        "shared": PoolSpec("shared", tuple(IpSpec(f"10.0.1.{i}", "") for i in range(4))),
    }
    gate = WarmupGate(pools, days, "hourly", 2.0)
    providers = ProviderMap()
    throttle = SiteThrottle()
    mx = [_mx(i) for i in range(DOMAINS)]

    def decide(count: int, now: float) -> None:
        for n in range(count):
            site = providers.site(mx[n % DOMAINS])
            want = throttle.allowed(site.key, site.limits, now, 1)
            decision = gate.acquire("dedicated", site.provider, want, now)
            throttle.take(site.key, site.limits, now, sum(g.count for g in decision.grants))
            now += 0.001

    t = time.perf_counter()
    decide(queued, T0 + 3600)
    elapsed = time.perf_counter() - t
    # Memory the decision state grows by on a second, shorter run (it must stay flat:
    # counters are per IP and provider, never per queued recipient).
    tracemalloc.start()
    decide(min(queued, 10_000), T0 + 7200)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"queued": queued, "decisions_per_s": queued / elapsed,
            "peak_mib": peak / 2**20, "seconds": elapsed}


@pytest.mark.parametrize("queued", SIZES)
def test_bench_warmup_decisions(queued: int) -> None:
    r = run(queued)
    print(f"\nwarmup decisions: {r['queued']:,} queued over {DOMAINS} domains: "
          f"{r['decisions_per_s']:,.0f} decisions/s, state growth {r['peak_mib']:.2f} MiB")
    assert r["decisions_per_s"] > 5_000


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_queued(queued: int) -> dict[str, float]:
    days = DayClock()
    pools = {
        "dedicated": PoolSpec("dedicated", tuple(IpSpec(f"10.0.0.{i}", "") for i in range(16)),
                              SES_STANDARD, days.day_of(T0), "shared"),
        "shared": PoolSpec("shared", tuple(IpSpec(f"10.0.1.{i}", "") for i in range(4))),
    }
    gate = WarmupGate(pools, days, "hourly", 2.0)
    providers = ProviderMap()
    throttle = SiteThrottle()
    mx = {f"d{i}.test": _mx(i) for i in range(DOMAINS)}
    rss0 = _rss_mib()
    tracemalloc.start()
    ready: dict[str, LaneQueue] = {}
    for n in range(queued):
        dom = f"d{n % DOMAINS}.test"
        msg = MessageRecord(f"m{n:09d}", "app@example.com", [f"u{n}@{dom}"], T0, 2000)
        lease = Leased(msg, 0, RecipientRecord(f"u{n}@{dom}", dom))
        q = ready.get(dom)
        if q is None:
            q = ready[dom] = LaneQueue()
        q.append(Task(msg, dom, [lease], ENGAGED if n % 10 == 0 else BULK))
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = _rss_mib() - rss0
    now = T0 + 3600
    t = time.perf_counter()
    decided = 0
    while ready and decided < queued:
        for dom in list(ready):
            q = ready[dom]
            task = q.popleft()
            if not q:
                del ready[dom]
            site = providers.site(mx[dom])
            want = throttle.allowed(site.key, site.limits, now, len(task.items))
            decision = gate.acquire("dedicated", site.provider, want, now, task.priority)
            throttle.take(site.key, site.limits, now, sum(g.count for g in decision.grants))
            decided += 1
            now += 0.001
    elapsed = time.perf_counter() - t
    return {"queued": queued, "held_mib": held / 2**20, "peak_mib": peak / 2**20,
            "rss_mib": rss, "bytes_per_rcpt": held / queued,
            "decisions_per_s": decided / elapsed}


@pytest.mark.parametrize("queued", SIZES)
def test_bench_warmup_queued_memory(queued: int) -> None:
    r = run_queued(queued)
    print(f"\nwarmup queued memory: {r['queued']:,} recipients over {DOMAINS} domains in "
          f"lane queues: tracemalloc {r['held_mib']:.1f} MiB held, {r['peak_mib']:.1f} MiB "
          f"peak ({r['bytes_per_rcpt']:.0f} B/recipient), RSS +{r['rss_mib']:.1f} MiB; "
          f"{r['decisions_per_s']:,.0f} lane-ordered decisions/s")
    assert r["decisions_per_s"] > 5_000
    assert r["bytes_per_rcpt"] < 4096
