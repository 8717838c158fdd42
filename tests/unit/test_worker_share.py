"""Multi-process mode: who delivers a message, and each worker's share of the limits.

Pure checks of relay/queue/keys.py (`new_message_id`, `shard_of`), relay/workers.py
(`split`, `worker_share`) and the warm-up gate's per-worker caps; the process tree itself
is tested in tests/e2e/test_workers.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import loads
from relay.queue.keys import ID_LEN, new_message_id, shard_of
from relay.warmup.gate import from_config
from relay.workers import split, worker_share

T0 = 1_790_000_000.0


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7])
def test_a_worker_owns_the_messages_it_names(workers: int) -> None:
    for i in range(workers):
        for k in range(300):
            mid = new_message_id(T0 + k, (i, workers))
            assert len(mid) == ID_LEN and mid.isascii() and int(mid, 16) >= 0
            assert shard_of(mid, workers) == i
            assert shard_of(mid.encode("ascii"), workers) == i
            assert mid[:12] == f"{int((T0 + k) * 1000):012x}"  # still time-sortable


def test_plain_ids_spread_over_the_workers() -> None:
    counts = [0, 0]
    for k in range(2000):
        counts[shard_of(new_message_id(T0 + k), 2)] += 1
    assert min(counts) > 800  # about half each
    assert shard_of(new_message_id(T0), 1) == 0


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=9))
def test_shares_add_up_to_the_total(total: int, workers: int) -> None:
    shares = [split(total, (i, workers)) for i in range(workers)]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1
    assert split(total, None) == total


_CFG = '''
[delivery]
max_connections_per_destination = 5
[[provider]]
name = "gmail"
mx = ["*.google.com"]
max_connections = 3
messages_per_second = 10.0
messages_per_hour = 1
[[warmup_plan]]
name = "tiny"
caps = [7, 20]
[[pool]]
name = "d"
ips = ["127.0.0.10"]
warmup_plan = "tiny"
warmup_start = "2026-09-22"
'''


def test_worker_share_divides_per_destination_limits() -> None:
    cfg = loads(_CFG)
    assert worker_share(cfg, None) is cfg
    w0, w1 = worker_share(cfg, (0, 2)), worker_share(cfg, (1, 2))
    assert (w0.delivery.max_connections_per_destination,
            w1.delivery.max_connections_per_destination) == (3, 2)
    assert (w0.provider[0].max_connections, w1.provider[0].max_connections) == (2, 1)
    assert w0.provider[0].messages_per_second == w1.provider[0].messages_per_second == 5.0
    # 0 would mean "no limit": a share of a small hourly limit is still a limit.
    assert (w0.provider[0].messages_per_hour, w1.provider[0].messages_per_hour) == (1, 1)
    assert (w0.delivery.max_idle_connections, w1.delivery.max_idle_connections) == (500, 500)
    assert w0.delivery.retry_schedule == cfg.delivery.retry_schedule  # the rest as it was


def test_warmup_caps_are_shared_between_workers() -> None:
    cfg = loads(_CFG)
    now = T0 + 86400 * 400  # well after warmup_start: the plan's last day (20)
    pool = from_config(cfg).pools["d"]
    whole = from_config(cfg).cap(pool, "127.0.0.10", "gmail", now)
    parts = [from_config(cfg, share=(i, 3)).cap(pool, "127.0.0.10", "gmail", now)
             for i in range(3)]
    assert whole is not None and all(p is not None for p in parts)
    assert sum(p for p in parts if p is not None) == whole
