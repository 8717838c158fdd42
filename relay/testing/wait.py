"""Waiting for something a real server does in its own time (a delivery, an event line, a
metric): poll a predicate until it gives a true value, or fail naming what never came.

The timeout only bounds a failing test; nothing here measures time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` (blocking) until it is true; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `predicate` on the running event loop until it is true; return its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
