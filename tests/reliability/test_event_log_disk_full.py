"""The event log on a full disk (a real small tmpfs, the `tiny_disk` fixture of conftest.py).

- A real `relay serve` whose event log lives on a full tmpfs keeps accepting (the queue
  is on another disk), logs one line when the log cannot be written, meters it, prints
  no traceback, and writes every held event once space returns (before, each flush
  raised ENOSPC out of the event loop callback).
- In process: what waits for the disk is bounded in memory (the excess is counted as
  dropped), a line cut by the full disk is completed, never torn or repeated, and the
  journal keeps an event staged in the queue until the log has written it.
Needs root for `mount -t tmpfs`; skipped with the reason otherwise.
"""

from __future__ import annotations

import re
import smtplib
import time
import urllib.request
from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.events.journal import EventJournal
from relay.events.log import EventLog, read_events
from relay.events.model import send_event
from relay.queue.ops import NewMessage
from relay.queue.store import QueueStore
from relay.testing.disk import fill
from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    write_config,
)
from relay.testing.wait import wait_until


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


@pytest.mark.slow
def test_relay_keeps_events_while_the_log_disk_is_full_and_writes_them_later(
        tmp_path: Path, tiny_disk: Path) -> None:
    port, admin = free_port(), free_port()
    cfg = relay_config(tmp_path / "state", "127.0.0.1:9", 25, [listener_config(
        tls="none", auth="none", port=port, trusted_networks=["127.0.0.0/8"])])
    cfg["admin"] = {"enabled": True, "address": f"127.0.0.1:{admin}"}
    events = tiny_disk / "events.jsonl"
    cfg["events"] = {"log": str(events)}
    # Delivery waits: only the Send events of this test's messages are written.
    cfg["delivery"]["retry_schedule"] = ["1h"]
    relay = RelayProcess(write_config(tmp_path / "relay.toml", cfg),
                         log_dir=tmp_path / "logs").start()
    try:
        filler = fill(tiny_disk)
        ids = []
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
            smtp.ehlo("client.test")
            for i in range(20):
                assert smtp.mail("app@example.com")[0] == 250
                assert smtp.rcpt(f"r{i}@dest.test")[0] == 250
                code, text = smtp.data(f"Subject: full {i}\r\n\r\nbody {i}\r\n".encode())
                assert code == 250, (code, text)  # the queue's disk is not full
                ids.append(text.decode().rsplit(" ", 1)[-1])
        wait_until(lambda: _metric(admin, "relay_event_log_unwritten_events") >= 20, 10,
                   "the Send events held in memory")
        assert _metric(admin, "relay_event_log_write_failures_total") >= 1
        time.sleep(2.5)  # a few retries fail meanwhile: still one line, no traceback
        assert relay.running
        err = relay.stderr()
        assert "Traceback" not in err, err
        assert len(re.findall(r"event log .*: cannot write \(No space left", err)) == 1, err

        filler.unlink()
        wait_until(lambda: {e["mail"]["messageId"] for e in read_events(events)  # type: ignore[index]
                            if e["eventType"] == "Send"} >= set(ids), 10,
                   "the held events in the log once space returned")
        assert _metric(admin, "relay_event_log_unwritten_events") == 0
        assert "writing again" in relay.stderr()
        lines = events.read_bytes().split(b"\n")
        assert lines[-1] == b"" and all(lines[:-1]), "a torn or empty line"
    finally:
        code = relay.terminate()
    assert code == 0, relay.output()
    assert "Traceback" not in relay.stderr(), relay.stderr()


def _msg(i: int) -> NewMessage:
    return NewMessage(sender="a@example.com", recipients=[f"r{i}@dest.test"],
                      body=b"Subject: x\r\n\r\nhi\r\n", headers={"Subject": f"m{i}"})


async def test_held_events_are_bounded_complete_and_stay_staged_until_written(
        tmp_path: Path, tiny_disk: Path) -> None:
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock)
    path = tiny_disk / "events.jsonl"
    log = EventLog(path, clock, max_unwritten=8 << 10, retry_interval=1.0)
    journal = EventJournal(store, log, clock, grace=0.0)
    await store.start()
    try:
        filler = fill(tiny_disk, leave=4096)  # one page: ~8 lines, then a cut one
        staged: list[bytes] = []
        records = []
        for i in range(40):  # ~500 bytes a line: far over the 8 KB held in memory
            rec = await store.submit_record(
                _msg(i), also=lambda txn, r: staged.extend(journal.stage(txn, [send_event(r)])))
            records.append(rec)
            journal.published([send_event(rec)], staged[-1:])
        assert not log.flush()
        written, held, dropped = log.written_seq, log.unwritten, log.dropped
        assert log.write_failures >= 1
        assert written > 0 and held > 0 and dropped > 0 and written + held + dropped == 40
        assert log._head_done > 0  # the disk filled in the middle of a line
        await journal.flush(force=True)  # only what is in the file whole leaves the queue
        assert len(store.read_db(EventJournal.DB)) == 40 - written

        filler.unlink()
        assert log.flush() and log.unwritten == 0
        events = read_events(path)
        assert [e["mail"]["messageId"] for e in events] == [  # type: ignore[index]
            r.id for r in records[:written + held]]  # in order, the cut one completed once
        assert path.read_bytes().count(b"\n") == written + held
        await journal.flush(force=True)  # written ones go; dropped ones stay for replay
        assert len(store.read_db(EventJournal.DB)) == dropped
    finally:
        await store.close()
        log.close()
