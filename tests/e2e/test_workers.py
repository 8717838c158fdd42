"""Multi-process mode (`server.workers = 2`, relay/supervisor.py) as a real process tree.

- Both workers accept on one port (SO_REUSEPORT): the connections' owning processes are
  read from /proc while they are open, and every one of them gets a 250.
- Delivery is split by message (the accepting worker delivers): every message reaches
  the sink exactly once (two workers leasing one recipient would deliver it twice).
- `kill -9` of one worker: the supervisor starts it again, the new process recovers its
  shard's in-flight recipients, and every accepted message is delivered (at most the
  in-flight ones twice); the queue ends empty and the supervisor stops cleanly.
"""

from __future__ import annotations

import os
import re
import smtplib
import time
from collections import Counter
from pathlib import Path

import pytest

from relay.testing.dnsserver import DnsServer
from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.sink import Sink

pytestmark = pytest.mark.slow

OK_DOMAINS = ("a.test", "b.test", "c.test")
_TOKEN_RE = re.compile(rb"^Subject: (tok-\d+)\r?$", re.MULTILINE)
_WORKER_RE = re.compile(r"^relay: worker (\d+) of (\d+) ready \(pid (\d+)")


def _message(token: str, rcpt: str) -> str:
    return (f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: {token}\r\n\r\n"
            f"body of {token}\r\n")


def _worker_pids(relay: RelayProcess) -> dict[int, int]:
    """worker index -> pid of its latest start, from the ready lines."""
    out: dict[int, int] = {}
    for line in relay.stdout().splitlines():
        m = _WORKER_RE.match(line)
        if m:
            out[int(m.group(1))] = int(m.group(3))
    return out


def _socket_owners(pids: list[int], port: int) -> Counter[int]:
    """How many established connections on local port `port` each pid holds."""
    inodes: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    owners: Counter[int] = Counter()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "01" and int(local.split(":")[1], 16) == port and inode in inodes:
            owners[inodes[inode]] += 1
    return owners


def _tokens(sinks: tuple[Sink, ...]) -> Counter[str]:
    got: Counter[str] = Counter()
    for sink in sinks:
        for msg in sink.messages:
            m = _TOKEN_RE.search(msg.data)
            if m:
                got[m.group(1).decode()] += len(msg.rcpt_tos)
    return got


def _wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_share_the_port_deliver_once_and_survive_kill_9(
        tmp_path: Path, dns_server: DnsServer, sinks: tuple[Sink, Sink]) -> None:
    port = free_port()
    cfg = relay_config(tmp_path / "state", dns_server.nameserver, sinks[0].port,
                       [listener_config(tls="none", auth="none", port=port,
                                        trusted_networks=["127.0.0.0/8"])],
                       max_connections_per_destination=2)
    cfg["server"]["workers"] = 2
    cfg["server"]["log_level"] = "warning"
    config = write_config(tmp_path / "relay.toml", cfg)
    relay = RelayProcess(config, log_dir=tmp_path / "logs").start(timeout=60)
    try:
        pids = _worker_pids(relay)
        assert sorted(pids) == [0, 1], relay.output()
        assert relay.pid not in pids.values()  # the supervisor only supervises

        # 1. Many connections at once on one port: the kernel spreads them over both.
        conns = []
        for _ in range(24):
            s = smtplib.SMTP("127.0.0.1", port, timeout=15)
            s.ehlo("client.test")
            conns.append(s)
        owners = _socket_owners(list(pids.values()), port)
        assert sum(owners.values()) == 24 and len(owners) == 2, owners
        sent: list[str] = []
        for i, s in enumerate(conns):
            for j in range(5):
                token = f"tok-{i * 5 + j}"
                rcpt = f"u{i}-{j}@{OK_DOMAINS[(i + j) % len(OK_DOMAINS)]}"
                s.sendmail("app@example.com", [rcpt], _message(token, rcpt))
                sent.append(token)
            s.quit()
        _wait(lambda: sum(_tokens(sinks).values()) >= len(sent), 30, "phase 1 delivery")
        time.sleep(1.0)  # a duplicate would arrive now
        got = _tokens(sinks)
        assert set(got) == set(sent)
        assert [t for t, n in got.items() if n != 1] == []  # exactly once

        # 2. kill -9 one worker while work is queued: restarted, nothing lost.
        victim = pids[1]
        more: list[str] = []
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
            for k in range(60):
                token = f"tok-{1000 + k}"
                rcpt = f"v{k}@{OK_DOMAINS[k % len(OK_DOMAINS)]}"
                s.sendmail("app@example.com", [rcpt], _message(token, rcpt))
                more.append(token)
        os.kill(victim, 9)
        _wait(lambda: _worker_pids(relay).get(1, victim) != victim, 30, "worker 1 restart")
        assert relay.running
        for k in range(20):
            with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
                token = f"tok-{2000 + k}"
                rcpt = f"w{k}@{OK_DOMAINS[k % len(OK_DOMAINS)]}"
                s.sendmail("app@example.com", [rcpt], _message(token, rcpt))
                more.append(token)
        _wait(lambda: set(more) <= set(_tokens(sinks)), 45, "phase 2 delivery")
        got = _tokens(sinks)
        dupes = sum(n - 1 for t, n in got.items() if t in more)
        assert dupes <= 2 * len(OK_DOMAINS), got  # only what was in flight at the kill
        _wait(lambda: run_cli("queue", "list", "--json", config=config).stdout.strip()
              in ("", "[]"), 20, "an empty queue")
    finally:
        code = relay.terminate(60)
    assert code == 0, relay.output()
