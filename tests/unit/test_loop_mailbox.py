"""LoopMailbox: calls from a thread run on the loop, in order, at its next I/O poll."""

from __future__ import annotations

import asyncio
import threading

import uvloop

from relay.queue.mailbox import LoopMailbox


def run_on_uvloop(coro_fn):  # type: ignore[no-untyped-def]
    # relay serves on uvloop (relay/cli/serve.py); the ordering below is uvloop's.
    return uvloop.run(coro_fn())


def test_posts_from_a_thread_run_on_the_loop_in_order() -> None:
    async def main() -> tuple[list[int], set[int]]:
        loop = asyncio.get_running_loop()
        box = LoopMailbox()
        box.open(loop)
        seen: list[int] = []
        threads: set[int] = set()
        done = loop.create_future()

        def record(i: int) -> None:
            seen.append(i)
            threads.add(threading.get_ident())
            if i == 999:
                done.set_result(None)

        def poster() -> None:
            for i in range(1000):
                assert box.post(record, i)

        t = threading.Thread(target=poster)
        t.start()
        await asyncio.wait_for(done, 10)
        t.join()
        box.close()
        return seen, threads

    seen, threads = run_on_uvloop(main)
    assert seen == list(range(1000))
    assert threads == {threading.get_ident()}  # uvloop.run runs the loop on this thread


def test_a_post_runs_before_callbacks_queued_in_the_same_round() -> None:
    # Why the mailbox exists: call_soon_threadsafe() would run after `later`.
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        box = LoopMailbox()
        box.open(loop)
        order: list[str] = []
        done = loop.create_future()

        def step() -> None:
            loop.call_soon(order.append, "later")
            loop.call_soon(loop.call_soon, done.set_result, None)
            t = threading.Thread(target=box.post, args=(order.append, "posted"))
            t.start()
            t.join()  # the post is in the pipe before this round of callbacks ends

        loop.call_soon(step)
        await asyncio.wait_for(done, 5)
        box.close()
        return order

    assert run_on_uvloop(main) == ["posted", "later"]


def test_a_failing_call_does_not_stop_the_ones_after_it() -> None:
    async def main() -> tuple[list[str], list[str]]:
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(str(ctx["exception"])))
        box = LoopMailbox()
        box.open(loop)
        seen: list[str] = []
        done = loop.create_future()

        def boom() -> None:
            raise ValueError("boom")

        box.post(boom)
        box.post(seen.append, "after")
        box.post(done.set_result, None)
        await asyncio.wait_for(done, 5)
        box.close()
        return seen, errors

    seen, errors = run_on_uvloop(main)
    assert seen == ["after"] and errors == ["boom"]


def test_close_runs_what_is_left_and_later_posts_are_refused() -> None:
    async def main() -> tuple[list[str], bool]:
        box = LoopMailbox()
        box.open(asyncio.get_running_loop())
        seen: list[str] = []
        box.post(seen.append, "queued before close")
        box.close()
        return seen, box.post(seen.append, "after close")

    seen, accepted = run_on_uvloop(main)
    assert seen == ["queued before close"] and accepted is False


def test_post_after_the_loop_closed_is_refused() -> None:
    box = LoopMailbox()
    loop = uvloop.new_event_loop()
    box.open(loop)
    loop.remove_reader(box._rfd)
    loop.close()
    assert box.post(print, "never") is False
    box.close()  # closes the pipe without the loop
