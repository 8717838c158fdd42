"""relay serve's collector settings: the garbage closed connections leave in reference
cycles is freed a little at a time, not in one long pause of the event loop."""

from __future__ import annotations

import gc
from typing import Any

from relay.app import GC_YOUNG_THRESHOLD, tune_gc

# What one closed client connection leaves for the cyclic collector (measured with
# gc.DEBUG_SAVEALL after new STARTTLS + AUTH connections to a SubmissionServer).
OBJECTS_PER_CONNECTION = 75


def _closed_connection() -> None:
    """Objects in one reference cycle, as a closed connection's session leaves them."""
    ring: list[Any] = []
    ring.extend({"owner": ring} for _ in range(OBJECTS_PER_CONNECTION - 1))


def test_closed_connections_are_freed_in_passes_of_a_bounded_size() -> None:
    """400 closed connections (30,000 objects in cycles) after start-up tuning: freed in
    several passes of at most ~130 connections each (about the young threshold's worth
    of objects), rather than piling up for one pass that frees them all at once."""
    saved = gc.get_threshold()
    passes: list[int] = []

    def observe(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 0:
            passes.append(info["collected"])

    try:
        tune_gc()
        gc.callbacks.append(observe)
        for _ in range(400):
            _closed_connection()
    finally:
        if observe in gc.callbacks:
            gc.callbacks.remove(observe)
        gc.unfreeze()
        gc.set_threshold(*saved)
    assert len(passes) >= 2, passes
    assert max(passes) <= 200 * OBJECTS_PER_CONNECTION, passes
    assert sum(passes) >= 400 * OBJECTS_PER_CONNECTION // 2, passes


def test_start_up_objects_are_out_of_the_collectors_view() -> None:
    """What start-up built is frozen: a young pass does not traverse it again."""
    saved = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
