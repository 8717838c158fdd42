"""The dashboard's per-provider panel with `server.workers = 2`: every worker's deliveries
(network and mailbox simulator) are counted, not only those of worker 0 (which runs the
admin API), and the counts survive a restart. The panel reads the last 24 hours of the
sending statistics every worker writes to the spool. One real supervisor with two worker
processes (adminkit); which worker holds a connection is read from /proc, and each sends
its share. /api/status reports the history's size; /api/dashboard the reputation lines."""

from __future__ import annotations

import email.policy
import os
import re
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from adminkit import PASSWORD, Admin, make_admin_relay

from relay.testing.dnsserver import DnsServer
from relay.testing.sink import Sink
from relay.testing.wait import wait_until

pytestmark = pytest.mark.slow

SIM = "simulator.relay.test"
_WORKER_RE = re.compile(r"^relay: worker (\d+) of (\d+) ready \(pid (\d+)")
PER_WORKER = {"gmail": 3, "simulator": 2}


@pytest.fixture
def two_workers(tmp_path: Path, dns: DnsServer, sinks: tuple[Sink, Sink]) -> Iterator[Admin]:
    a = make_admin_relay(tmp_path, dns, sinks, workers=2,
                         reputation={"bounce_review": 0.04, "bounce_pause": 0.08,
                                     "complaint_review": 0.002, "complaint_pause": 0.006})
    try:
        yield a
    finally:
        a.relay.stop()


def _worker_pids(admin: Admin) -> dict[int, int]:
    out: dict[int, int] = {}
    for line in admin.relay.stdout().splitlines():
        m = _WORKER_RE.match(line)
        if m:
            out[int(m.group(1))] = int(m.group(3))
    return out


def _owner(pids: dict[int, int], client_port: int, server_port: int) -> int | None:
    """The worker holding the server side of the connection from `client_port`."""
    inodes: dict[str, int] = {}
    for worker, pid in pids.items():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = worker
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if (int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port and inode in inodes):
            return inodes[inode]
    return None


def _connect(admin: Admin) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", admin.submit_port, timeout=15)
    s.starttls(context=admin.tls.client)
    s.login("app", PASSWORD)
    return s


def _send(s: smtplib.SMTP, to: str) -> None:
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = to
    msg["Subject"] = f"to {to}"
    msg.set_content("counted once, by whichever worker sent it\n")
    s.sendmail("app@example.com", [to], msg.as_bytes(policy=email.policy.SMTP))


def _panel(admin: Admin) -> dict[str, tuple[int, int]]:
    status, dash = admin.call("GET", "/api/dashboard")
    assert status == 200, dash
    return {name: (p["attempts"], p["delivered"]) for name, p in dash["providers"].items()}


def test_the_provider_panel_counts_every_workers_deliveries(two_workers: Admin) -> None:
    admin = two_workers
    status, dash = admin.call("GET", "/api/dashboard")
    assert status == 200, dash
    # The [reputation] lines, for the rate charts.
    assert dash["reputation"] == {"bounce_review": 0.04, "bounce_pause": 0.08,
                                  "complaint_review": 0.002, "complaint_pause": 0.006}
    assert dash["providers"] == {}  # nothing sent yet
    pids = _worker_pids(admin)
    assert sorted(pids) == [0, 1], admin.relay.output()
    # Connections until each worker holds one (the kernel spreads them: SO_REUSEPORT).
    by_worker: dict[int, smtplib.SMTP] = {}
    spare: list[smtplib.SMTP] = []
    for _ in range(32):
        s = _connect(admin)
        sock = s.sock
        assert sock is not None
        worker = _owner(pids, sock.getsockname()[1], admin.submit_port)
        if worker is not None and worker not in by_worker:
            by_worker[worker] = s
        else:
            spare.append(s)
        if len(by_worker) == 2:
            break
    for s in spare:
        s.quit()
    assert sorted(by_worker) == [0, 1], "the kernel gave every connection to one worker"
    for worker, s in by_worker.items():
        for k in range(PER_WORKER["gmail"]):
            _send(s, f"w{worker}-{k}@gmail.test")
        for k in range(PER_WORKER["simulator"]):
            _send(s, f"success+w{worker}-{k}@{SIM}")
        s.quit()

    want = {name: (2 * n, 2 * n) for name, n in PER_WORKER.items()}

    def counted() -> bool:
        panel = _panel(admin)
        return all(panel.get(name) == w for name, w in want.items())

    try:
        wait_until(counted, 15, "both workers' deliveries on the panel")
    except AssertionError:
        raise AssertionError(f"panel {_panel(admin)}, expected {want}") from None
    gmail = admin.call("GET", "/api/dashboard")[1]["providers"]["gmail"]
    assert (gmail["bounced"], gmail["deferred"], gmail["complained"]) == (0, 0, 0)
    assert (gmail["delivery_rate"], gmail["bounce_rate"], gmail["complaint_rate"]) == \
        (1.0, 0.0, 0.0)

    # The history's size, as /api/status reports it (every worker's messages).
    status, body = admin.call("GET", "/api/status")
    assert status == 200, body
    history = body["history"]
    assert history["messages"] == 2 * sum(PER_WORKER.values()), history
    assert history["bytes"] > 0 and history["oldest"].endswith("Z")
    _, text = admin.call("GET", "/metrics", token=None)
    assert f"relay_history_messages {float(history['messages'])}" in text, text
    assert f"relay_history_bytes {float(history['bytes'])}" in text, text
    assert "relay_history_dropped_total 0.0" in text, text

    # Kept in the spool: a restart forgets nothing.
    assert admin.relay.terminate(30) == 0
    admin.relay.start(timeout=60)
    assert all(_panel(admin).get(name) == w for name, w in want.items()), _panel(admin)
