"""on_mx_failure = "reject" at submission, as SES (MailFromDomainNotVerified).

Real submission server on loopback with real TLS, the real MailFromGate and Outbound,
and a real DNS server on loopback: a message whose From identity has a MAIL FROM domain
without MX is refused at the end of DATA (554 5.7.1 naming that domain) and never
queued; a DNS temporary failure gives 451 4.4.3; "use_default" identities are accepted.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.config import Identity
from relay.dns.resolver import DnsResolver
from relay.identity.gate import MailFromGate
from relay.identity.outbound import Outbound
from relay.queue.ops import NewMessage
from relay.smtp.server import SubmissionServer
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.submission import RawClient, RecordingSubmitter, Reply, Tls, running_server
from relay.users import UserStore
from relay.verp import Verp


@pytest.fixture(scope="module")
def tls() -> Tls:
    return Tls()


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    return dns_server({"bounce.good.test": [("MX", "10 relay.test")]})


class Setup:
    def __init__(self, server: SubmissionServer, inner: RecordingSubmitter,
                 rejected: list[tuple[NewMessage, str]]) -> None:
        self.server = server
        self.inner = inner
        self.rejected = rejected


@pytest.fixture
async def setup(tmp_path: Path, tls: Tls, dns_server: DnsServer) -> AsyncIterator[Setup]:
    clock = FakeClock()
    users = UserStore(tmp_path / "users.json")
    users.add("app", "pw")
    identities = [
        Identity(domain="good.test", mail_from="bounce.good.test", on_mx_failure="reject"),
        Identity(domain="strict.test", mail_from="bounce.strict.test",
                 on_mx_failure="reject"),
        Identity(domain="lenient.test", mail_from="bounce.lenient.test"),
    ]
    outbound = Outbound(signer=None, verp=Verp.from_state_dir(tmp_path),
                        resolver=DnsResolver([dns_server.address], clock=clock, timeout=1.0),
                        identities=identities, default_domain="relay.test")
    inner = RecordingSubmitter()
    rejected: list[tuple[NewMessage, str]] = []
    gate = MailFromGate(inner, outbound, reject=lambda m, r: rejected.append((m, r)))
    async with running_server(tls=tls, users=users, submitter=gate,  # type: ignore[arg-type]
                              clock=clock) as srv:
        yield Setup(srv, inner, rejected)


async def send(s: Setup, tls: Tls, address: str, mail_from: str | None = None) -> Reply:
    c = await RawClient.connect(s.server.port)
    try:
        await c.read_reply()
        await c.cmd("EHLO client.test")
        await c.starttls(tls.client)
        await c.cmd("EHLO client.test")
        auth = base64.b64encode(b"\0app\0pw").decode()
        assert (await c.cmd(f"AUTH PLAIN {auth}")).code == 235
        envelope = address if mail_from is None else mail_from
        assert (await c.cmd(f"MAIL FROM:<{envelope}>")).code == 250
        assert (await c.cmd("RCPT TO:<r@dest.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        return await c.cmd(f"From: App <{address}>\r\nTo: r@dest.test\r\nSubject: s\r\n"
                           "\r\nhi\r\n.")
    finally:
        await c.close()


async def test_mail_from_with_mx_is_accepted(setup: Setup, tls: Tls) -> None:
    r = await send(setup, tls, "app@good.test")
    assert r.code == 250, r
    assert len(setup.inner.messages) == 1


async def test_mail_from_without_mx_is_refused_at_end_of_data(setup: Setup, tls: Tls) -> None:
    r = await send(setup, tls, "app@strict.test")
    assert r.code == 554, r
    assert r.lines[-1].startswith("5.7.1"), r
    assert "MailFromDomainNotVerified" in r.text and "bounce.strict.test" in r.text
    assert setup.inner.messages == []  # never queued
    ((msg, reason),) = setup.rejected  # a Reject event names it
    assert msg.sender == "app@strict.test" and "bounce.strict.test" in reason


async def test_the_from_identity_decides_not_the_envelope(setup: Setup, tls: Tls) -> None:
    r = await send(setup, tls, "app@strict.test", mail_from="app@good.test")
    assert r.code == 554 and "bounce.strict.test" in r.text, r


async def test_dns_temporary_failure_is_451_4_4_3(
        setup: Setup, tls: Tls, dns_server: DnsServer) -> None:
    dns_server.fail("bounce.strict.test", "SERVFAIL")
    r = await send(setup, tls, "app@strict.test")
    assert r.code == 451, r
    assert r.lines[-1].startswith("4.4.3"), r
    assert "bounce.strict.test" in r.text
    assert setup.inner.messages == [] and setup.rejected == []


async def test_use_default_identity_is_not_refused(setup: Setup, tls: Tls,
                                                   dns_server: DnsServer) -> None:
    r = await send(setup, tls, "app@lenient.test")
    assert r.code == 250, r
    assert dns_server.query_count("bounce.lenient.test") == 0  # decided at delivery


async def test_null_sender_is_not_checked(setup: Setup, tls: Tls) -> None:
    r = await send(setup, tls, "app@strict.test", mail_from="")
    assert r.code == 250, r
