"""Smoke run of bench/e2e.py (the harness behind the Postfix comparison), ~10 s.

The figures come from `python bench/compare_postfix.py ...` run by hand (RESULTS.md); this
keeps the harness working under `make test`: a real `relay serve` with a STARTTLS + AUTH
listener, the load generator and the sink, every message accepted and at the sink, and
relay's CPU per message read from /proc. No timing assertions (the machine is shared).
"""

from __future__ import annotations

import json
from pathlib import Path

import e2e  # bench/ is on sys.path (bench/conftest.py)
import pytest

pytestmark = pytest.mark.slow


def test_e2e_smoke_accepts_delivers_and_measures(tmp_path: Path) -> None:
    row = e2e.run_scenario(e2e.Scenario(size=2048, messages=20, sessions=4, tls="starttls",
                                        reuse=True), tmp_path / "run", timeout=60.0)
    print("\n" + e2e.table([row]))
    context = json.dumps(row, default=str)
    assert row["accepted"] == 20 and not row["failed"], context
    assert row["delivered"] == 20, context
    assert row["relay_cpu_ms_per_msg"] > 0, context
    assert row["p50_ms"] > 0, context
