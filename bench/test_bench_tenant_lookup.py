"""The per-RCPT tenant work: resolve the message's tenant (X-SES-TENANT against the
credential's tenants), look the tenant up and ask whether it or its configuration set is
paused, with 1,000 tenants in the spool. A dict lookup between looks at the generation
(every 0.5 s on the clock), never an LMDB read per recipient.

`make bench` measures; under `make test` each case runs once (--benchmark-disable).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.clock import FakeClock
from relay.queue.store import QueueStore
from relay.tenants.access import resolve_tenant
from relay.tenants.store import TenantStore

TENANTS = 1000


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantStore]:
    clock = FakeClock()
    queue = QueueStore(Path(tmp_path_factory.mktemp("tenants")) / "q", clock,
                       map_size=1 << 26)
    store = TenantStore(queue, clock, recheck=0.5)

    def fill(txn: Any) -> None:
        for i in range(TENANTS):
            store.add_op(f"t{i}")(txn)
        store.pause_op("tenant:t7", who="bench")(txn)
    queue.write_now(fill)
    store.refresh()
    try:
        yield store
    finally:
        queue.close_sync()


def test_rcpt_tenant_check(benchmark: Any, tenants: TenantStore) -> None:
    allowed = ["platform", "t1", "t500", "t999"]

    def per_rcpt() -> bool:
        name = resolve_tenant(allowed, "platform", "t500")
        assert isinstance(name, str)
        return tenants.get(name) is not None and tenants.paused(name, "news") is None
    assert benchmark(per_rcpt) is True
    assert tenants.paused("t7") is not None
