"""Accept first (relay/delivery/yielding.py): the loop-lag probe on a real event loop,
and the gate's rules. Lateness is real (a callback that blocks the loop) or given to
the probe's own `observe()`; nothing here asserts a duration of relay's work."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.delivery.yielding import DeliveryGate, LoopLag


async def _block_loop(seconds: float, times: int) -> None:
    """Hold the event loop like a saturated round of session steps would."""
    for _ in range(times):
        time.sleep(seconds)
        await asyncio.sleep(0)


async def _quiet(lag: LoopLag, within: float = 5.0) -> bool:
    """Whether the probe says "not late" within `within` seconds."""
    for _ in range(int(within / 0.01)):
        if not lag.late():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_the_probe_sees_a_blocked_loop_and_forgets_it_after_hold() -> None:
    lag = LoopLag(interval=0.005, threshold=0.01, hold=0.1)
    lag.start()
    try:
        # An idle loop wakes its probe on time: not late, once `hold` has passed without
        # a late wake-up (on a machine busy with other work a wake-up can be late by
        # itself, so this waits for a quiet stretch, bounded, instead of assuming one).
        assert await _quiet(lag)
        await _block_loop(0.03, 3)
        await asyncio.sleep(0.01)  # let the probe run once after the block
        assert lag.late()
        assert await _quiet(lag)  # and it forgets the block after `hold`
    finally:
        await lag.stop()


def _late(lag: LoopLag) -> None:
    lag.observe(1.0, asyncio.get_running_loop().time())


async def test_the_gate_holds_to_floor_only_while_accepting_on_a_late_loop() -> None:
    lag = LoopLag(hold=10.0)
    gate = DeliveryGate(lag, max_hold=100.0, floor=2, hold=10.0, burst_min=1)
    assert not gate.holding()          # nothing accepted, loop on time
    gate.accepted()
    assert not gate.holding()          # accepting, but the loop is on time
    _late(lag)
    assert gate.holding()
    await gate.acquire()
    await gate.acquire()
    third = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0.01)
    assert not third.done() and gate.in_flight == 2
    gate.release()                     # a transaction ends: the waiter takes its place
    await asyncio.wait_for(third, 1)
    assert gate.in_flight == 2


async def test_a_late_loop_without_submissions_delivers_at_full_share() -> None:
    lag = LoopLag(hold=10.0)
    gate = DeliveryGate(lag, max_hold=100.0, floor=1, burst_min=1)
    _late(lag)                         # delivery alone saturates the loop
    for _ in range(5):
        await asyncio.wait_for(gate.acquire(), 1)
    assert gate.in_flight == 5


async def test_the_end_of_a_burst_lets_every_waiter_go() -> None:
    lag = LoopLag(interval=0.005, hold=10.0)
    gate = DeliveryGate(lag, max_hold=100.0, floor=1, hold=0.05, burst_min=1)
    opened: list[bool] = []
    gate.on_open.append(lambda: opened.append(True))
    gate.accepted()
    _late(lag)
    lag.start()
    try:
        await gate.acquire()
        waiters = [asyncio.ensure_future(gate.acquire()) for _ in range(4)]
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waiters)
        # No submission for longer than `hold`: the probe's next tick opens the gate.
        await asyncio.wait_for(asyncio.gather(*waiters), 2)
        assert gate.in_flight == 5 and opened == [True]
    finally:
        await lag.stop()


async def test_after_max_hold_delivery_shares_again_until_the_burst_ends() -> None:
    lag = LoopLag(interval=0.005, hold=10.0)
    gate = DeliveryGate(lag, max_hold=0.1, floor=1, hold=0.05, burst_min=1)
    _late(lag)
    lag.start()
    try:
        gate.accepted()
        assert gate.holding()
        await gate.acquire()
        waiter = asyncio.ensure_future(gate.acquire())
        for _ in range(10):                 # the burst goes on past max_hold
            await asyncio.sleep(0.02)
            gate.accepted()
        assert not gate.holding()
        await asyncio.wait_for(waiter, 2)   # the probe's tick let the waiter go
        # Counted for relay_delivery_held_seconds_total: about max_hold (a late tick
        # of a busy machine may add a little).
        assert 0.05 < gate.held_seconds < 0.3
        await asyncio.sleep(0.15)           # the burst ends (no accept for `hold`) ...
        assert gate.burst_started is None
        gate.accepted()                     # ... and the next burst is held again
        assert gate.holding()
    finally:
        await lag.stop()


async def test_max_hold_zero_never_holds_and_close_releases_everyone() -> None:
    lag = LoopLag(hold=10.0)
    _late(lag)
    off = DeliveryGate(lag, max_hold=0.0, floor=1, burst_min=1)
    off.accepted()
    assert not off.holding()
    on = DeliveryGate(lag, max_hold=100.0, floor=1, burst_min=1)
    on.accepted()
    await on.acquire()
    waiters = [asyncio.ensure_future(on.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    on.close()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert not on.holding()


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    lag = LoopLag(hold=10.0)
    gate = DeliveryGate(lag, max_hold=100.0, floor=1, burst_min=1)
    gate.accepted()
    _late(lag)
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.in_flight == 1 and not gate._waiters
    gate.release()
    await asyncio.wait_for(gate.acquire(), 1)   # the freed place is not lost


async def test_a_trickle_on_a_late_loop_is_not_held_but_a_burst_is() -> None:
    """A loop saturated by delivery, and an application sending a few messages a
    second: holding delivery back would gain little. 50 within `hold` is a burst."""
    lag = LoopLag(hold=10.0)
    gate = DeliveryGate(lag, max_hold=100.0, floor=1, hold=0.05, burst_min=50)
    _late(lag)
    for _ in range(3):
        gate.accepted()
        await asyncio.sleep(0.03)
        assert not gate.holding()
    for _ in range(50):
        gate.accepted()
    assert gate.holding()
    await asyncio.sleep(0.12)          # two quiet buckets: the count starts again
    gate.accepted()
    assert not gate.holding()


def test_floor_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        DeliveryGate(LoopLag(), max_hold=1.0, floor=0)
