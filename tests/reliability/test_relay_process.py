"""Against a real `relay serve` subprocess: open relay (address tricks never reach DNS for the
wrong domain: asserted on the loopback DNS server's query log) and resource exhaustion (a 50 MB
upload with a 40 MB limit is refused 552 5.3.4 and never held whole: the server's peak RSS, from
/proc, grows by less than the upload).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.process import RelayProcess, listener_config, relay_config, write_config
from relay.testing.sink import Sink

ZONE = {
    "dest.test": [("MX", "10 mx.dest.test")],
    "mx.dest.test": [("A", "127.0.0.2")],
    "sink.test": [("MX", "10 mx.sink.test")],
    "mx.sink.test": [("A", "127.0.0.2")],
    "evil.test": [("MX", "10 mx.evil.test")],
    "mx.evil.test": [("A", "127.0.0.3")],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          module_dns_server: DnsServers) -> Iterator[tuple[RelayProcess, DnsServer, Sink, str]]:
    tmp = tmp_path_factory.mktemp("relayproc")
    dns_server = module_dns_server(ZONE)
    sink = Sink("127.0.0.2", 0).start()
    evil = Sink("127.0.0.3", sink.port).start()
    try:
        listener = listener_config(tls="none", auth="none",
                                   trusted_networks=["127.0.0.0/8"])
        cfg = relay_config(tmp / "state", dns_server.nameserver, sink.port, [listener])
        cfg["limits"] = {"max_message_size": "40MB"}
        relay = RelayProcess(write_config(tmp / "relay.toml", cfg), log_dir=tmp / "logs")
        with relay:
            yield relay, dns_server, evil, listener["address"]
    finally:
        evil.stop()
        sink.stop()


class Smtp:
    """Blocking raw client (the relay runs in another process)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        while True:
            line = self.file.readline()
            if not line or line[3:4] != b"-":
                return line

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_address_tricks_never_query_or_connect_to_evil(
        world: tuple[RelayProcess, DnsServer, Sink, str]) -> None:
    relay, dns_server, evil, address = world
    smtp = Smtp(relay.port(address))
    assert smtp.cmd(b"EHLO c").startswith(b"250")
    assert smtp.cmd(b"MAIL FROM:<app@example.com>").startswith(b"250")
    assert smtp.cmd(b"RCPT TO:<@evil.test:r@sink.test>").startswith(b"501 5.1.3")
    assert smtp.cmd(b"RCPT TO:<@sink.test,@evil.test:r@dest.test>").startswith(b"501")
    accepted = []
    for rcpt in (b"<r%evil.test@dest.test>", b"<\"r@evil.test\"@dest.test>",
                 b"<r@evil.test@dest.test>"):
        if smtp.cmd(b"RCPT TO:" + rcpt).startswith(b"250"):
            accepted.append(rcpt)
    assert accepted, "at least the %-hack and quoted forms are ordinary local parts"
    assert smtp.cmd(b"DATA").startswith(b"354")
    smtp.sock.sendall(b"From: app@example.com\r\nSubject: v8\r\n\r\nhi\r\n.\r\n")
    assert smtp.reply().startswith(b"250")
    smtp.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and dns_server.query_count("dest.test") == 0:
        time.sleep(0.1)
    time.sleep(1.0)  # let every delivery attempt happen
    assert dns_server.query_count("dest.test") >= 1
    assert dns_server.query_count("evil.test") == 0
    assert dns_server.query_count("mx.evil.test") == 0
    assert evil.connections == 0


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def test_fifty_megabytes_over_a_forty_megabyte_limit_never_in_memory(
        world: tuple[RelayProcess, DnsServer, Sink, str]) -> None:
    relay, _, _, address = world
    if not Path(f"/proc/{relay.pid}/status").exists():
        pytest.skip("no /proc on this system")
    smtp = Smtp(relay.port(address))
    assert smtp.cmd(b"EHLO c").startswith(b"250")
    # Declared size over the limit: refused before any data.
    assert smtp.cmd(b"MAIL FROM:<app@example.com> SIZE=50000000").startswith(b"552 5.3.4")
    assert smtp.cmd(b"MAIL FROM:<app@example.com>").startswith(b"250")
    assert smtp.cmd(b"RCPT TO:<r@dest.test>").startswith(b"250")
    assert smtp.cmd(b"DATA").startswith(b"354")
    before = _vm(relay.pid, "VmHWM")
    line = b"y" * 998 + b"\r\n"
    block = line * 1000  # 1 MB
    for _ in range(50):
        smtp.sock.sendall(block)
    smtp.sock.sendall(b".\r\n")
    assert smtp.reply().startswith(b"552 5.3.4")
    peak = _vm(relay.pid, "VmHWM")
    # The refused upload (50 MB) never sat in memory whole; at most the limit did.
    assert peak - before < 48 * 1000 * 1000, (before, peak)
    # And the connection still works.
    assert smtp.cmd(b"NOOP").startswith(b"250")
    smtp.close()
