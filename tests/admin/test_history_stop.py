"""A stop writes the history's last batch: with [history] flush = "60s" nothing is written
while the relay runs, so what the history holds after a SIGTERM was written by the stop,
after delivery had stopped and before the spool closed (one real `relay serve`)."""

from __future__ import annotations

from pathlib import Path

from adminkit import make_admin_relay

from relay.clock import SystemClock
from relay.history.store import HistoryStore
from relay.queue.store import QueueStore
from relay.testing.dnsserver import DnsServer
from relay.testing.sink import Sink


def test_the_last_attempts_and_events_are_written_at_stop(
        tmp_path: Path, dns: DnsServer, sinks: tuple[Sink, Sink]) -> None:
    admin = make_admin_relay(tmp_path, dns, sinks, history={"flush": "60s"})
    try:
        before = sinks[0].message_count
        mid = admin.send("last@ok.test", "written at stop")
        sinks[0].wait_for(before + 1, timeout=15)
        assert admin.relay.terminate(30) == 0
    finally:
        admin.relay.stop()
    store = QueueStore(admin.state / "queue", SystemClock())
    try:
        view = HistoryStore(store).get(mid)
        assert view is not None
        kinds = [e.kind for e in view.timeline]
        assert kinds == ["accepted", "attempt", "delivered"], kinds
        attempt = view.timeline[1]
        assert (attempt.mx_host, attempt.remote_ip) == ("mx.ok.test", "127.0.0.2")
        assert attempt.source_ip in ("127.0.0.10", "127.0.0.11")
    finally:
        store.env.close()
