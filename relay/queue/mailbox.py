"""Calls posted from a thread to the event loop through a pipe the loop watches.

`loop.call_soon_threadsafe()` puts a call at the back of the loop's ready queue: on a
loaded loop it runs after every task step already queued, a whole loop turn later (about
10 ms with 50 busy sessions). The queue's writer thread crosses to the loop twice per
group commit (to run the ops, then to hand back the results), so those turns were most
of the end-of-DATA → 250 time. A reader callback on a pipe runs when the loop polls for
I/O, between two rounds of task steps, so a post waits at most for the round in progress.
Order is kept: posts run in the order they were made.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Callable
from typing import Any


class LoopMailbox:
    def __init__(self) -> None:
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())  # appends and pops are thread-safe
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rfd = self._wfd = -1

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop's thread."""
        self._loop = loop
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        loop.add_reader(self._rfd, self._run_posted)

    def post(self, fn: Callable[..., Any], *args: Any) -> bool:
        """From any thread: run fn(*args) on the loop soon. False when the loop is closed
        (or the mailbox is), so the call will never run."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._wfd < 0:
            return False
        self._calls.append((fn, args))
        # A full pipe is still readable: the loop will run this call with the others.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wfd, b"\0")
        return True

    def _run_posted(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._rfd, 4096)
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception as e:  # the calls after it must still run
                assert self._loop is not None
                self._loop.call_exception_handler(
                    {"message": f"LoopMailbox: {fn!r} failed", "exception": e})

    def close(self) -> None:
        """On the loop's thread, once no thread posts any more: runs what is left."""
        if self._rfd < 0:
            return
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.remove_reader(self._rfd)
        self._run_posted()
        for fd in (self._rfd, self._wfd):
            os.close(fd)
        self._rfd = self._wfd = -1
