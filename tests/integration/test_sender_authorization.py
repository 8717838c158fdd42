"""Sending authorization at SMTP: only verified identities the credential may use.

Real submission server on loopback with real TLS (trustme); identities and credentials
in real files. Each refusal asserts the code, the enhanced code and the address named.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.identity.authorize import SenderPolicy
from relay.identity.store import IdentityStore
from relay.smtp import replies as R
from relay.smtp.server import SubmissionServer
from relay.testing.submission import (
    RawClient,
    RecordingSubmitter,
    Reply,
    Tls,
    make_listener,
    running_server,
)
from relay.users import UserStore


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


@pytest.fixture(scope="module")
def tls() -> Tls:
    return Tls()


@pytest.fixture
def policy(tmp_path: Path) -> SenderPolicy:
    users = UserStore(tmp_path / "users.json")
    users.add("app", "pw-app", ["example.com"])
    users.add("ops", "pw-ops", ["ops@other.org"])
    users.add("any", "pw-any")
    identities = IdentityStore.in_state_dir(tmp_path)
    for name in ("example.com", "other.org", "unverified.test"):
        identities.add(name)
    identities.set_verified("example.com", True)
    identities.set_verified("other.org", True)
    return SenderPolicy(identities, users)


@pytest.fixture
async def server(tls: Tls, policy: SenderPolicy,
                 submitter: RecordingSubmitter) -> AsyncIterator[SubmissionServer]:
    async with running_server(tls=tls, users=policy.users, submitter=submitter,
                              sender_check=policy) as srv:
        yield srv


@pytest.fixture
def submitter() -> RecordingSubmitter:
    return RecordingSubmitter()


async def login(server: SubmissionServer, tls: Tls, user: str, pw: str) -> RawClient:
    c = await RawClient.connect(server.port)
    await c.read_reply()
    await c.cmd("EHLO client.test")
    await c.starttls(tls.client)
    await c.cmd("EHLO client.test")
    assert (await c.cmd(f"AUTH PLAIN {plain(user, pw)}")).code == 235
    return c


async def send(c: RawClient, mail_from: str, header_from: str) -> Reply:
    r = await c.cmd(f"MAIL FROM:<{mail_from}>")
    if r.code != 250:
        return r
    assert (await c.cmd("RCPT TO:<r@dest.test>")).code == 250
    assert (await c.cmd("DATA")).code == 354
    return await c.cmd(f"From: {header_from}\r\nTo: r@dest.test\r\nSubject: s\r\n\r\nhi\r\n.")


def expect(reply: Reply, want: R.Reply, address: str) -> None:
    assert reply.code == want.code, reply
    assert reply.lines[-1].startswith(want.enhanced), reply
    assert address in reply.text, reply


async def test_verified_identity_the_credential_may_use_is_accepted(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    c = await login(server, tls, "app", "pw-app")
    r = await send(c, "news@example.com", "News <news@example.com>")
    assert r.code == 250, r
    assert len(submitter.messages) == 1
    await c.close()


async def test_subdomain_of_verified_domain_is_covered(
        server: SubmissionServer, tls: Tls) -> None:
    c = await login(server, tls, "app", "pw-app")
    assert (await send(c, "a@mail.example.com", "a@mail.example.com")).code == 250
    await c.close()


async def test_unverified_envelope_sender_gets_550_5_7_1(
        server: SubmissionServer, tls: Tls) -> None:
    c = await login(server, tls, "any", "pw-any")
    r = await c.cmd("MAIL FROM:<x@unverified.test>")
    expect(r, R.SENDER_NOT_AUTHORIZED, "x@unverified.test")
    assert "not verified" in r.text
    await c.close()


async def test_unverified_from_header_gets_554_5_7_1(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    c = await login(server, tls, "any", "pw-any")
    r = await send(c, "a@example.com", "Boss <boss@unknown.test>")
    expect(r, R.MESSAGE_REJECTED, "boss@unknown.test")
    assert "Email address is not verified" in r.text
    assert submitter.messages == []
    await c.close()


async def test_credential_not_authorized_for_verified_identity(
        server: SubmissionServer, tls: Tls) -> None:
    c = await login(server, tls, "app", "pw-app")  # may use example.com only
    r = await c.cmd("MAIL FROM:<ops@other.org>")
    expect(r, R.SENDER_NOT_AUTHORIZED, "ops@other.org")
    assert "'app'" in r.text
    await c.close()


async def test_address_pattern_allows_only_that_address(
        server: SubmissionServer, tls: Tls) -> None:
    c = await login(server, tls, "ops", "pw-ops")
    assert (await send(c, "ops@other.org", "ops@other.org")).code == 250
    expect(await c.cmd("MAIL FROM:<ceo@other.org>"), R.SENDER_NOT_AUTHORIZED, "ceo@other.org")
    await c.close()


async def test_header_envelope_mismatch_is_refused(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    c = await login(server, tls, "app", "pw-app")
    r = await send(c, "a@example.com", "Ops <ops@other.org>")  # From: not allowed for app
    expect(r, R.MESSAGE_REJECTED, "ops@other.org")
    assert submitter.messages == []
    await c.close()


async def test_missing_from_header_is_refused(server: SubmissionServer, tls: Tls) -> None:
    c = await login(server, tls, "app", "pw-app")
    assert (await c.cmd("MAIL FROM:<a@example.com>")).code == 250
    assert (await c.cmd("RCPT TO:<r@dest.test>")).code == 250
    assert (await c.cmd("DATA")).code == 354
    r = await c.cmd("Subject: no from\r\n\r\nhi\r\n.")
    assert (r.code, r.lines[-1][:5]) == (554, "5.7.1")
    await c.close()


async def test_trusted_network_may_use_any_verified_identity(
        tls: Tls, policy: SenderPolicy) -> None:
    listener = make_listener(tls="none", auth="none", trusted_networks=["127.0.0.0/8"])
    async with running_server(tls=None, listener=listener, users=policy.users,
                              sender_check=policy) as srv:
        c = await RawClient.connect(srv.port)
        await c.read_reply()
        await c.cmd("EHLO client.test")
        assert (await send(c, "ops@other.org", "ops@other.org")).code == 250
        expect(await c.cmd("MAIL FROM:<a@unverified.test>"), R.SENDER_NOT_AUTHORIZED,
               "a@unverified.test")
        await c.close()


async def test_identity_verified_later_is_picked_up_without_restart(
        server: SubmissionServer, tls: Tls, policy: SenderPolicy) -> None:
    c = await login(server, tls, "any", "pw-any")
    assert (await c.cmd("MAIL FROM:<a@unverified.test>")).code == 550
    policy.identities.set_verified("unverified.test", True)  # as `relay identity verify`
    assert (await c.cmd("MAIL FROM:<a@unverified.test>")).code == 250
    await c.close()
