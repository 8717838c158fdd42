"""Two relay processes behind a real HAProxy (`mode tcp`, `send-proxy-v2`, `option httpchk
GET /health`), on 127.0.0.21 and 127.0.0.22, the client on 127.0.0.77:

- the client's own address, not HAProxy's, is in the Received: line the sink gets and in
  the Send event's sourceIp; the per-IP connection cap counts the client;
- `relay node drain` on one node: its /health answers 503, HAProxy stops sending it new
  connections, while the other keeps serving;
- `relay queue transfer` from the drained node (whose sink defers everything) to the
  other: every message delivered by the second, none left on the first, each Send event
  of the second naming the first's queue id.

Each relay has two listeners: the PROXY protocol one HAProxy connects to, and a direct
one (no PROXY header) for node-to-node transfer, as docs/cluster.md describes.
"""

from __future__ import annotations

import contextlib
import json
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.testing.dnsserver import DnsServer
from relay.testing.process import RelayProcess, free_port, relay_config, run_cli, write_config
from relay.testing.require import require_program
from relay.testing.sink import Sink
from relay.testing.submission import Tls

PASSWORD = "cluster test password"
CLIENT = "127.0.0.77"
OTHER_CLIENT = "127.0.0.78"
FRONT = "127.0.0.30"


def _defer_all(stage: str, arg: str, envelope: Any) -> str | None:
    return "451 4.2.0 try again later" if stage == "rcpt" else None


@dataclass
class Node:
    name: str
    host: str
    relay: RelayProcess
    config: Path
    state: Path
    proxy_port: int
    direct_port: int
    admin_port: int

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.admin_port}/health",
                                        timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def events(self) -> list[dict[str, Any]]:
        path = self.state / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_node(tmp: Path, name: str, host: str, dns: DnsServer, sink: Sink, tls: Tls
               ) -> Node:
    cert, key = tls.write_files(tmp)
    proxy_port, direct_port, admin_port = free_port(host), free_port(host), free_port(host)
    state = tmp / name / "state"
    data = relay_config(state, dns.nameserver, sink.port, [
        {"address": f"{host}:{proxy_port}", "tls": "starttls", "auth": "required",
         "proxy_protocol": True, "proxy_trusted": ["127.0.0.1/32"]},
        {"address": f"{host}:{direct_port}", "tls": "starttls", "auth": "required"},
    ], retry_schedule=["1h"])
    data["server"]["hostname"] = f"{name}.relay.test"
    data.update({
        "tls": {"cert": str(cert), "key": str(key)},
        "admin": {"enabled": True, "address": f"{host}:{admin_port}"},
        "limits": {"max_connections_per_ip": 2},
    })
    config = write_config(tmp / name / "relay.toml", data)
    added = run_cli("user", "add", "app", "--password-stdin", config=config,
                    input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    relay = RelayProcess(config, log_dir=tmp / name / "logs").start()
    return Node(name, host, relay, config, state, proxy_port, direct_port, admin_port)


HAPROXY_CFG = """\
global
    maxconn 200
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind {front}:{front_port}
    default_backend relays
backend relays
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
    server a {a.host}:{a.proxy_port} send-proxy-v2 check port {a.admin_port}
    server b {b.host}:{b.proxy_port} send-proxy-v2 check port {b.admin_port}
"""


@pytest.fixture
def cluster(tmp_path: Path, dns_server: DnsServer) -> Iterator[tuple[Node, Node, int, Sink]]:
    require_program("haproxy")
    tls = Tls()
    deferring = Sink("127.0.0.2", 0, policy=_defer_all).start()
    accepting = Sink("127.0.0.2", 0).start()
    nodes: list[Node] = []
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        nodes.append(start_node(tmp_path, "a", "127.0.0.21", dns_server, deferring, tls))
        nodes.append(start_node(tmp_path, "b", "127.0.0.22", dns_server, accepting, tls))
        front_port = free_port(FRONT)
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(front=FRONT, front_port=front_port,
                                          a=nodes[0], b=nodes[1]))
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True,
                               timeout=30, check=False)
        assert check.returncode == 0, check.stderr.decode()
        with open(tmp_path / "haproxy.log", "wb") as log:
            haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: _greeting(front_port, CLIENT) is not None, "HAProxy listening")
        yield nodes[0], nodes[1], front_port, accepting
    finally:
        if haproxy is not None:
            haproxy.kill()
            haproxy.wait(10)
        for node in nodes:
            node.relay.stop()
        accepting.stop()
        deferring.stop()


def wait_until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _greeting(port: int, source: str) -> str | None:
    """The greeting line of a new connection from `source`, or None if none came."""
    try:
        smtp = smtplib.SMTP(timeout=5, source_address=(source, 0))
        code, text = smtp.connect(FRONT, port)
    except (OSError, smtplib.SMTPException):
        return None
    with_code = f"{code} {text.decode()}"
    with contextlib.suppress(OSError):
        smtp.close()
    return with_code


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def submit(host: str, port: int, source: str, rcpt: str, subject: str) -> str:
    """One message through `host:port` from `source`; the 250 reply text. A 421 for the
    per-IP cap is retried for a while: the last connection from `source` may not be
    closed on the server's side yet."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return _submit_once(host, port, source, rcpt, subject)
        except smtplib.SMTPConnectError as e:
            if e.smtp_code != 421 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _submit_once(host: str, port: int, source: str, rcpt: str, subject: str) -> str:
    with smtplib.SMTP(host, port, timeout=10, source_address=(source, 0)) as s:
        s.starttls(context=_client_tls())
        s.login("app", PASSWORD)
        body = (f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n"
                "hello\r\n").encode()
        s.mail("app@example.com")
        s.rcpt(rcpt)
        code, reply = s.data(body)
    assert code == 250, reply
    return reply.decode()


def test_haproxy_client_address_drain_and_transfer(
        cluster: tuple[Node, Node, int, Sink]) -> None:
    a, b, front, delivered = cluster

    # -- the client's address through HAProxy, on whichever node takes it (round robin:
    # both nodes get one; b's sink accepts, a's defers)
    for i in range(2):
        assert "queued as" in submit(FRONT, front, CLIENT, f"r{i}@a.test", f"via proxy {i}")
    (received,) = delivered.wait_for(1, timeout=10)
    first_line = received.data.split(b"\r\n", 1)[0]
    assert f"([{CLIENT}])".encode() in first_line, first_line
    sent = {node.name: [e["mail"]["sourceIp"] for e in node.events()
                        if e.get("eventType") == "Send"] for node in (a, b)}
    assert sent == {"a": [CLIENT], "b": [CLIENT]}, sent

    # -- the per-IP cap (2 per node) counts the client, not HAProxy's address: connections
    # from the client are refused once both nodes hold two of its, while another client
    # through the same HAProxy is still served
    held: list[smtplib.SMTP] = []
    refusal = None
    for _ in range(6):
        s = smtplib.SMTP(timeout=5, source_address=(CLIENT, 0))
        code, text = s.connect(FRONT, front)
        if code != 220:
            refusal = f"{code} {text.decode()}"
            s.close()
            break
        held.append(s)
    assert refusal is not None and refusal.startswith("421 4.7.0"), refusal
    assert 2 <= len(held) <= 4, len(held)
    other = _greeting(front, OTHER_CLIENT)
    assert other is not None and other.startswith("220"), other
    for s in held:
        s.close()

    # -- a PROXY header straight from the client (not a proxy_trusted peer) is refused:
    # closed without a greeting, logged and counted
    with socket.create_connection((b.host, b.proxy_port), timeout=5,
                                  source_address=(CLIENT, 0)) as raw:
        try:  # closed at once (a reset, as the server aborts): never a greeting
            raw.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.22 1 587\r\n")
            assert raw.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass
    with urllib.request.urlopen(f"http://{b.host}:{b.admin_port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert f'relay_smtp_proxy_header_refused_total{{listener="{b.host}:{b.proxy_port}",' \
           'reason="untrusted"} 1.0' in metrics
    assert "not in proxy_trusted" in b.relay.stderr()

    # -- queue a few messages on a (its sink defers them)
    for i in range(5):
        submit(a.host, a.direct_port, "127.0.0.1", f"t{i}@a.test", f"to transfer {i}")

    # -- drain a: /health 503, HAProxy sends every new connection to b
    drained = run_cli("node", "drain", config=a.config)
    assert drained.returncode == 0, drained.stderr
    assert "draining" in drained.stdout
    wait_until(lambda: a.health() == 503, "a's /health to answer 503")
    assert b.health() == 200
    direct = smtplib.SMTP(timeout=5)
    code, text = direct.connect(a.host, a.direct_port)
    assert (code, text.split()[0]) == (421, b"4.3.2"), (code, text)
    direct.close()

    def only_b() -> bool:
        greetings = [_greeting(front, CLIENT) for _ in range(4)]
        return all(g is not None and g.startswith("220 b.relay.test") for g in greetings)

    wait_until(only_b, "HAProxy to stop sending connections to the drained node")

    # -- transfer a's queue to b (while both run), once nothing is in flight on a
    def queued_on_a() -> list[dict[str, Any]]:
        listed = run_cli("queue", "list", "--json", config=a.config)
        return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]

    def deferred_on_a() -> set[str]:  # read from a's events: no process per poll
        return {e["mail"]["messageId"] for e in a.events()
                if e.get("eventType") == "DeliveryDelay"}

    wait_until(lambda: len(deferred_on_a()) == 6, "a's 6 messages to be deferred",
               timeout=15)
    before = deferred_on_a()
    assert {row["id"] for row in queued_on_a()} == before
    moved = run_cli("queue", "transfer", "--to", f"{b.host}:{b.direct_port}", "--user", "app",
                    "--password-stdin", "--tls-no-verify", config=a.config,
                    input=PASSWORD + "\n")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "6 transferred, 0 already at the peer (duplicates), 0 failed" in moved.stdout, \
        moved.stdout
    assert queued_on_a() == []
    delivered.wait_for(1 + 6, timeout=15)
    tagged = {tag.split("@")[0] for e in b.events() if e.get("eventType") == "Send"
              for tag in e["mail"]["tags"].get("relay:transferred-from", [])}
    assert tagged == before
    assert all("X-Relay-Transfer-Id" not in m.data.decode() for m in delivered.messages)

    # -- undrain: a is back in rotation
    assert run_cli("node", "undrain", config=a.config).returncode == 0
    wait_until(lambda: a.health() == 200, "a's /health to answer 200 again")
