"""Warm-up scheduling decisions per second, as the queue grows.

`test_bench_warmup_decisions` times the pure part only: classify the destination's MX
hosts into a provider/site, ask the site throttle, and let the WarmupGate pick source
IPs and reserve capacity (relay.warmup). It holds no queue: its "queued" is just the
number of decisions, so it says nothing about queue depth.

`test_bench_scheduler_decisions_store` is the real path (bench/scheduler_scale.py): a
real LMDB spool (bench/queue_fixture.py) with N queued recipients over 1,000 domains;
Scheduler.promote() (due() on both lanes + lease_op + ready queues), then the gate per
task; start-up (open + recovery) and RSS reported. Spools are built under /tmp and
deleted afterwards.

    .venv/bin/pytest bench/test_bench_warmup.py -s                 # smoke: 10k / 1k, fast
    BENCH_FULL=1 .venv/bin/pytest bench/test_bench_warmup.py -s    # 100k and 1M as well
"""

from __future__ import annotations

import os
import time
import tracemalloc

import pytest
import scheduler_scale

from relay.warmup.counters import DayClock
from relay.warmup.gate import IpSpec, PoolSpec, WarmupGate
from relay.warmup.plans import SES_STANDARD
from relay.warmup.providers import ProviderMap
from relay.warmup.shaping import SiteThrottle

FULL = bool(os.environ.get("BENCH_FULL"))
SIZES = [100_000, 1_000_000] if FULL else [10_000]
STORE_SIZES = ([(1_000, 1_000), (100_000, 1_000), (1_000_000, 1_000), (1_000_000, 10_000)]
               if FULL else [(1_000, 1_000)])
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


@pytest.mark.parametrize(("queued", "domains"), STORE_SIZES)
def test_bench_scheduler_decisions_store(queued: int, domains: int) -> None:
    """The real decision path on a real LMDB spool (bench/scheduler_scale.py)."""
    r = scheduler_scale.run(queued, domains, rounds=20 if FULL else 2)
    print("\nscheduler decisions (LMDB spool): " + scheduler_scale.describe(r))
    assert r["decided"] == (20 if FULL else 2) * 1000
    assert r["max_held"] <= 1000   # delivery.active_limit, whatever the depth
    assert r["recovered"] == 200
