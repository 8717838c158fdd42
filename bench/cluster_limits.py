"""The cost of the Redis-backed acceptance limits per recipient, against the local ones, in
the same run on the same machine.

What is timed is the account gate's work at RCPT for `--messages` transactions of
`--recipients` recipients (MAIL: `begin()`; each RCPT: the quota; the 250 after DATA:
`accepted()`), with tenant acme in the sandbox and credential `app` with its own quota, so
four windows apply to each recipient (the tenant's and the credential's send rate and
24 h quota; limits high enough never to refuse):

- local:   `AccountGate.recipient()`, this process's QuotaBook (no [cluster]);
- redis:   `AccountGate.recipient_shared()` on a real redis-server on loopback (started
           here, no persistence): ONE script call per recipient, all windows at once;
- redis, a call per window: the same windows reserved one `SharedLimits.reserve()` call
           each (how relay/cluster/quota.py did it before: up to 4 round trips a
           recipient), for comparison;
- redis, SES API: `recipients_shared()`, one call for all of a message's recipients.

Reported per recipient: wall µs, this process's CPU µs, redis-server's CPU µs (from
/proc), and Redis round trips (ClusterClient.calls) and EVALSHA calls (INFO commandstats)
per message. Each mode runs `--repeat` times alternated; the medians are reported. The
machine is shared: the figures are this run's, not a fixed property.

    .venv/bin/python bench/cluster_limits.py                     # 400 x 2 recipients, x3
    .venv/bin/python bench/cluster_limits.py --messages 2000 --record
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import redis  # noqa: E402
import results as bench_results  # noqa: E402
import uvloop  # noqa: E402

from relay.clock import SystemClock  # noqa: E402
from relay.cluster.client import ClusterClient  # noqa: E402
from relay.cluster.limits import SharedLimits  # noqa: E402
from relay.cluster.quota import SharedQuota  # noqa: E402
from relay.config import Tenants  # noqa: E402
from relay.config.cluster import Cluster  # noqa: E402
from relay.tenants.account import AccountGate, Transaction  # noqa: E402
from relay.tenants.model import tenant_scope  # noqa: E402
from relay.tenants.quota import QuotaBook, credential_scope  # noqa: E402
from relay.tenants.store import TenantStore  # noqa: E402
from relay.testing.factories import Stores  # noqa: E402
from relay.testing.redisserver import RedisServer  # noqa: E402

MODES = ("local", "redis", "redis, a call per window", "redis, SES API")
DEFAULTS = Tenants(sandbox_max_24h_send=10**9, sandbox_max_send_rate=10**6)


@dataclass(frozen=True)
class Credential:
    tenant: str = "acme"
    allowed_tenants: list[str] = field(default_factory=list)
    max_24h_send: int | None = 10**9
    max_send_rate: float | None = 10**6


@dataclass
class Options:
    messages: int = 400
    recipients: int = 2
    repeat: int = 3
    workdir: Path | None = None


def _cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`, in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _evalsha(port: int) -> int:
    with redis.Redis(port=port) as r:
        stats = r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items()
               if k in ("cmdstat_evalsha", "cmdstat_eval"))


class Bench:
    def __init__(self, server: RedisServer, stores: Stores) -> None:
        self.server = server
        self.stores = stores
        self.clock = SystemClock()
        self.client = ClusterClient(Cluster(redis_url=server.url, node_id="bench"), self.clock)
        self.quota = SharedQuota(SharedLimits(self.client, self.clock, lambda: 1))

    async def gate(self, shared: bool) -> AccountGate:
        store = await self.stores(self.clock, name=f"q{len(self.stores.opened)}")
        tenants = TenantStore(store, self.clock)
        await tenants.write(tenants.add_op("acme", sandbox=True))
        return AccountGate(tenants, QuotaBook(), store, credential=lambda n: Credential(),
                           defaults=lambda: DEFAULTS, verified=lambda t, i: True,
                           is_simulator=lambda a: False, now=self.clock.now,
                           shared=self.quota if shared else None)

    def per_window(self, gate: AccountGate) -> Callable[[Transaction, str], Awaitable[Any]]:
        """The windows of a recipient reserved one call each (the former way)."""
        limits = self.quota.limits
        scopes = [(tenant_scope("acme"), 10**6, 10**9),
                  (credential_scope("app"), 10**6, 10**9)]

        async def rcpt(txn: Transaction, address: str) -> None:
            for scope, rate, _daily in scopes:
                assert await limits.reserve(f"rate:{scope}", 1, rate, 1.0, 0.1) is not None
            for scope, _rate, daily in scopes:
                assert await limits.reserve(f"quota:{scope}", 1, daily, 86400.0, 1.0) \
                    is not None
        return rcpt

    async def run(self, mode: str, opts: Options) -> dict[str, float]:
        gate = await self.gate(shared=mode != "local")
        rcpt: Callable[[Transaction, str], Awaitable[Any]]
        if mode == "local":
            async def rcpt_local(txn: Transaction, address: str) -> None:
                assert gate.recipient(txn, address) is None
            rcpt = rcpt_local
        elif mode == "redis, a call per window":
            rcpt = self.per_window(gate)
        else:
            async def rcpt_shared(txn: Transaction, address: str) -> None:
                assert await gate.recipient_shared(txn, address) is None
            rcpt = rcpt_shared
        addresses = [f"r{j}@bench.test" for j in range(opts.recipients)]
        calls, evals = self.client.calls, _evalsha(self.server.port)
        assert self.server.proc is not None
        redis_cpu = _cpu_ticks(self.server.proc.pid)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(opts.messages):
            txn = gate.begin("app")
            assert isinstance(txn, Transaction)
            if mode == "redis, SES API":
                assert await gate.recipients_shared(txn, addresses) is None
            else:
                for address in addresses:
                    await rcpt(txn, address)
            gate.accepted(txn)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        redis_cpu_s = (_cpu_ticks(self.server.proc.pid) - redis_cpu) / os.sysconf("SC_CLK_TCK")
        n = opts.messages * opts.recipients
        return {"wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6,
                "redis_cpu_us": redis_cpu_s / n * 1e6,
                "round_trips_per_msg": (self.client.calls - calls) / opts.messages,
                "evalsha_per_msg": (_evalsha(self.server.port) - evals) / opts.messages}


def run(opts: Options) -> dict[str, dict[str, float]]:
    """Every mode `opts.repeat` times, alternated; the median of each figure per mode."""
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="relay-cluster-bench-"))
    server = RedisServer(work / "redis").start()
    rounds: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}

    async def main() -> None:
        stores = Stores(work / "spool")
        bench = Bench(server, stores)
        try:
            for mode in MODES:  # warm-up: scripts loaded, connections open
                await bench.run(mode, Options(messages=5, recipients=opts.recipients))
            for _ in range(opts.repeat):
                for mode in MODES:
                    rounds[mode].append(await bench.run(mode, opts))
        finally:
            await bench.client.close()
            await stores.close_all()

    try:
        uvloop.run(main())
    finally:
        server.stop()
        if opts.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for mode, rs in rounds.items()}


def table(figures: dict[str, dict[str, float]], opts: Options) -> str:
    lines = [f"{opts.messages} messages × {opts.recipients} recipients, 4 windows each "
             f"(tenant + credential, rate + 24 h), median of {opts.repeat} alternated runs:",
             "",
             "| mode | wall µs/rcpt | CPU µs/rcpt (relay) | CPU µs/rcpt (redis-server) "
             "| round trips/msg | EVALSHA/msg |",
             "|---|---:|---:|---:|---:|---:|"]
    for mode, f in figures.items():
        lines.append(f"| {mode} | {f['wall_us']:.0f} | {f['cpu_us']:.0f} | "
                     f"{f['redis_cpu_us']:.0f} | {f['round_trips_per_msg']:.1f} | "
                     f"{f['evalsha_per_msg']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--recipients", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record", action="store_true",
                        help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= 100_000 or not 1 <= args.recipients <= 50 \
            or not 1 <= args.repeat <= 9:
        parser.error("--messages 1..100000, --recipients 1..50, --repeat 1..9")
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (Debian: redis-server)", file=sys.stderr)
        return 2
    opts = Options(args.messages, args.recipients, args.repeat)
    text = table(run(opts), opts)
    print(text)
    if args.record:
        bench_results.record("Redis-backed acceptance limits against local ones",
                             "bench/cluster_limits.py", sys.argv[1:] if argv is None else argv,
                             text, machine_extra="2 shared cores, noisy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
