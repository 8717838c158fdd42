"""bench/conncost.py kept working under `make test`: one tiny round of each mode.

A real server process (relay's SubmissionServer, STARTTLS + AUTH) and the real load
generator; every message must be accepted in both modes, every new-connection message on
its own connection, and the CPU figures present. No time is asserted.
"""

from __future__ import annotations

import conncost  # bench/ is on sys.path (bench/conftest.py)


def test_one_round_new_and_reused_connections() -> None:
    got = conncost.one_round(messages=12, resume=False, timeout=60.0, profile=None)
    assert got["new"]["accepted"] == got["reuse"]["accepted"] == 12
    assert got["new"]["failed"] == got["reuse"]["failed"] == {}
    assert got["new"]["cpu_ms_per_msg"] is not None
    assert got["reuse"]["cpu_ms_per_msg"] is not None
    assert "per_connection_ms" in got
