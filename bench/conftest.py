"""Fixtures shared by the pytest-benchmark suites in bench/.

Each suite drives async code from a plain (sync) benchmark function through one uvloop
event loop per test (`loop`), so pytest-benchmark times exactly the awaited work.
Under `--benchmark-disable` (the default addopts, used by `make test`) every benchmark
body runs once, as a smoke test; sizes are chosen so that stays well under 2 s.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from relay.testing.redisserver import redis_server  # noqa: F401  (a fixture: a real redis-server)

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = uvloop.new_event_loop()
    try:
        yield lp
    finally:
        lp.run_until_complete(lp.shutdown_asyncgens())
        lp.close()
