"""Smoke run of bench/e2e.py (the harness behind the Postfix comparison), ~10 s.

The figures come from `python bench/compare_postfix.py ...` run by hand (RESULTS.md); this
keeps the harness working under `make test`: a real `relay serve` with a STARTTLS + AUTH
listener, the load generator and the sink, every message accepted and at the sink, and
relay's CPU per message read from /proc. No timing assertions (the machine is shared).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import e2e  # bench/ is on sys.path (bench/conftest.py)
import pytest
import smtpsource

from relay.testing.require import require_path

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
    # The same CPU by thread: the event loop's, and with py-spy installed every thread by
    # its Python name (the group committer's writer, the executor threads); together no
    # more than the process (no workers here, so the process is all of relay).
    threads = row["thread_cpu_ms_per_msg"]
    assert "MainThread" in threads, context
    if Path(sys.executable).with_name("py-spy").exists():
        assert "lmdb-writer" in threads, context
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK") / 20  # /proc counts whole clock ticks
    assert sum(threads.values()) <= row["relay_cpu_ms_per_msg"] + tick_ms * len(threads), \
        context


def test_loadgen_resumes_its_tls_session_on_each_new_connection(tmp_path: Path) -> None:
    # The "new-resumed" mode of the comparison: a new connection per message, the TLS
    # session offered again as a smarthost's session cache would. Only a session's first
    # connection (before any ticket arrived) may do a full handshake.
    row = e2e.run_scenario(e2e.Scenario(size=2048, messages=12, sessions=2, tls="starttls",
                                        reuse=False, tls_resume=True),
                           tmp_path / "run", timeout=60.0)
    context = json.dumps(row, default=str)
    assert row["accepted"] == 12 and not row["failed"], context
    assert row["delivered"] == 12, context
    assert 10 <= row["tls_resumed"] <= 12, context


def test_smtp_source_drives_the_plain_listener_and_counts_what_was_accepted(
        tmp_path: Path) -> None:
    # The ceiling's load generator (bench/smtpsource.py): Postfix's smtp-source against
    # relay's trusted_networks listener, its counter read back as "accepted".
    require_path(smtpsource.find() or "/usr/sbin/smtp-source",
                 "Debian: apt-get install postfix (ships smtp-source)")
    row = e2e.run_scenario(e2e.Scenario(size=2048, messages=30, sessions=3, tls="none",
                                        reuse=True, client="smtp-source"),
                           tmp_path / "run", timeout=60.0)
    context = json.dumps(row, default=str)
    assert row["accepted"] == 30 and not row["failed"], context
    assert row["delivered"] == 30, context
    assert row["p50_ms"] is None  # smtp-source measures no latency; none is made up
    print("\n" + e2e.table([row]))


def test_smtp_source_with_nothing_listening_reports_the_failure(tmp_path: Path) -> None:
    require_path(smtpsource.find() or "/usr/sbin/smtp-source",
                 "Debian: apt-get install postfix (ships smtp-source)")
    port = e2e.free_port()  # bound and released: nothing listens there
    load = smtpsource.run("127.0.0.1", port, 5, 512, 1, timeout=30.0)
    assert load["accepted"] == 0
    assert load["failed"] == {"smtp-source": 5}
    assert "refused" in load["errors"][0].lower(), load["errors"]
