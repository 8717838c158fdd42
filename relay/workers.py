"""Multi-process mode's arithmetic: which worker this process is, and its share of a limit.

With `server.workers = N` every worker may send to every destination, so each enforces
its share of every per-destination and per-IP limit: connections per destination and per
provider site, site rates (`worker_share`), and warm-up caps (relay/warmup/gate.py, through
`split`), so the workers together stay within the configured figures. The processes
themselves are started and watched by relay/supervisor.py.
"""

from __future__ import annotations

import os

import msgspec

from relay.config import Config

# "i/N" in a worker's environment: its index and the number of workers.
WORKER_ENV = "RELAY_WORKER"


def worker_from_env() -> tuple[int, int] | None:
    """(index, count) when this process is a worker, else None."""
    raw = os.environ.get(WORKER_ENV, "")
    if not raw:
        return None
    index, _, count = raw.partition("/")
    i, n = int(index), int(count)
    if not 0 <= i < n:
        raise ValueError(f"${WORKER_ENV}={raw!r}: expected I/N with 0 <= I < N")
    return i, n


def split(total: int, worker: tuple[int, int] | None) -> int:
    """Worker i's share of an integer limit: the shares of all workers add up to `total`
    exactly (the first `total % N` workers get one more). 0 (no limit) stays 0."""
    if worker is None or total <= 0:
        return total
    i, n = worker
    return total // n + (1 if i < total % n else 0)


def worker_share(cfg: Config, worker: tuple[int, int] | None) -> Config:
    """`cfg` with the per-destination limits a worker enforces: its share of
    delivery.max_connections_per_destination and .max_idle_connections, and of each
    [[provider]]'s connections and
    rates (at least one connection each, so no destination is starved). Warm-up caps are
    split by the gate (relay.warmup.gate.WarmupGate.share)."""
    if worker is None or worker[1] <= 1:
        return cfg
    n = worker[1]
    delivery = msgspec.structs.replace(
        cfg.delivery, max_connections_per_destination=max(
            1, split(cfg.delivery.max_connections_per_destination, worker)),
        max_idle_connections=split(cfg.delivery.max_idle_connections, worker))
    # 0 means "no limit" for the hourly figure, so a share is at least 1.
    providers = [msgspec.structs.replace(
        p, max_connections=max(1, split(p.max_connections, worker)),
        messages_per_second=p.messages_per_second / n,
        messages_per_hour=max(1, split(p.messages_per_hour, worker)) if p.messages_per_hour
        else 0) for p in cfg.provider]
    return msgspec.structs.replace(cfg, delivery=delivery, provider=providers)
