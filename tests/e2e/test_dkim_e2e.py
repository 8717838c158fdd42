"""Identities and DKIM through the real `relay` process, as an operator sets them up.

`relay dkim keygen example.com --type both` and `relay identity add example.com`, the
printed records published in the loopback DNS server (DKIM from keygen; MAIL FROM MX,
SPF and DMARC from `identity verify`), then `identity verify` passes; a message
submitted over STARTTLS + AUTH as app@example.com reaches the sink with an RSA and an
Ed25519 signature that dkimpy (and mailauth, when tests/node is installed) verify
against that DNS, from a VERP return path on the MAIL FROM domain that decodes back to
the queue id of the 250 reply and recipient 0.
"""

from __future__ import annotations

import json
import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.testing.dkimcheck import dkimpy_verify, publish_keygen_output
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
from relay.testing.submission import Tls
from relay.verp import Verp

PASSWORD = "correct horse battery staple"
NODE_DIR = Path(__file__).resolve().parents[1] / "node"
MESSAGE = (b"From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: dkim e2e\r\n"
           b"Message-ID: <e2e@example.com>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
           b"\r\nHello from the e2e test, caf\xc3\xa9.\r\n")


@pytest.fixture
def setup(tmp_path: Path, dns_server: DnsServer,
          sinks: tuple[Sink, Sink]) -> Iterator[tuple[Path, Path, Tls, int]]:
    tls = Tls()
    cert, key = tls.write_files(tmp_path)
    port = free_port()
    state = tmp_path / "state"
    data = relay_config(state, dns_server.nameserver, sinks[0].port,
                        [listener_config("starttls", "required", port)])
    data["server"]["sender_authorization"] = "verified"
    data["tls"] = {"cert": str(cert), "key": str(key)}
    data["identity"] = [{"domain": "example.com", "mail_from": "bounce.example.com"}]
    config = write_config(tmp_path / "relay.toml", data)
    added = run_cli("user", "add", "app", "--password-stdin", config=config,
                    input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    yield config, state, tls, port


def mailauth_verify(data: bytes, server: DnsServer) -> list[dict[str, Any]] | None:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "mailauth").exists():
        return None
    out = subprocess.run(["node", str(NODE_DIR / "verify.js"), server.nameserver],
                         input=data, capture_output=True, check=True, timeout=30)
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


def test_keygen_identity_verify_then_signed_delivery_with_verp(
        setup: tuple[Path, Path, Tls, int], dns_server: DnsServer,
        sinks: tuple[Sink, Sink], tmp_path: Path) -> None:
    config, state, tls, port = setup
    r = run_cli("dkim", "keygen", "example.com", "--type", "both", config=config)
    assert r.returncode == 0, r.stderr
    published = publish_keygen_output(r.stdout, dns_server)
    assert len(published) == 2 and all("._domainkey.example.com" in n for n in published)
    r = run_cli("identity", "add", "example.com", config=config)
    assert r.returncode == 0, r.stderr

    # MAIL FROM MX + SPF and DMARC are missing: verify prints what to add; publish it.
    dns_server.set("relay.test", "A", ["127.0.0.1"])  # a:relay.test in the SPF record
    r = run_cli("identity", "verify", "example.com", "--json", config=config)
    rows = json.loads(r.stdout)["records"]
    todo = {(x["name"], x["rtype"]): x["expected"] for x in rows
            if x["status"] != "ok" and x["expected"]}
    assert set(todo) == {("bounce.example.com", "MX"), ("bounce.example.com", "TXT"),
                         ("_dmarc.example.com", "TXT")}, rows
    assert todo[("bounce.example.com", "TXT")] == "v=spf1 a:relay.test ~all"
    for (name, rtype), value in todo.items():
        dns_server.set(name, rtype, [value])
    r = run_cli("identity", "verify", "example.com", config=config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identity example.com: VERIFIED" in r.stdout
    assert "[ok] mail_from_spf" in r.stdout and "covers relay's sending IPs: 127.0.0.1" \
        in r.stdout

    with RelayProcess(config, log_dir=tmp_path / "logs"):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("app.example.com")
            client.starttls(context=tls.client)
            client.ehlo("app.example.com")
            client.login("app", PASSWORD)
            client.mail("app@example.com")
            client.rcpt("user@dest.test")
            code, reply = client.data(MESSAGE)
        assert code == 250, reply
        m = re.search(r"queued as (\S+)", reply.decode())
        assert m is not None
        queue_id = m.group(1)
        (got,) = sinks[0].wait_for(1, timeout=20)

    head = got.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    sigs = [h for h in head.split(b"\r\n") if h.lower().startswith(b"dkim-signature:")]
    assert len(sigs) == 2
    assert {re.search(rb"a=([\w-]+)", s).group(1) for s in sigs  # type: ignore[union-attr]
            } == {b"rsa-sha256", b"ed25519-sha256"}
    assert all(b"d=example.com" in s for s in sigs)
    assert dkimpy_verify(got.data, dns_server) == [True, True]
    results = mailauth_verify(got.data, dns_server)
    if results is not None:
        assert sorted(x["algo"] for x in results) == ["ed25519-sha256", "rsa-sha256"]
        assert all(x["status"] == "pass" and x["signingDomain"] == "example.com"
                   for x in results), results

    assert re.fullmatch(r"b-[^@]+@bounce\.example\.com", got.mail_from), got.mail_from
    assert Verp.from_state_dir(state).decode(got.mail_from) == (queue_id, 0)
