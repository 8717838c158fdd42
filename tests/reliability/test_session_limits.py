"""Per-session caps (commands, recipients across transactions), brute-force
observability (a Prometheus counter and one log line per failure/lockout, never the
password) and submission TLS (TLS 1.2 minimum, forward-secret AEAD suites only), against
a live submission server.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
from smtpkit import PASSWORD, USER, connect, expect, open_data, plain, tls_session

from relay.admin.metrics import Metrics
from relay.smtp import replies as R
from relay.testing.submission import RecordingSubmitter, Tls, running_server
from relay.testing.submission import fast_limits as limits
from relay.tlsutil import server_context
from relay.users import UserStore


async def test_commands_per_session_cap_421_and_close(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users,
                              limits=limits(max_commands_per_session=5)) as srv:
        client = await connect(srv.port)
        for _ in range(5):
            assert (await client.cmd("NOOP")).code == 250
        expect(await client.cmd("NOOP"), R.TOO_MANY_COMMANDS)
        assert await client.at_eof()


async def test_pipelined_command_flood_cut_at_the_cap(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users,
                              limits=limits(max_commands_per_session=20)) as srv:
        client = await connect(srv.port)
        await client.send(b"NOOP\r\n" * 500)
        replies = []
        for _ in range(500):
            try:
                replies.append(await client.read_reply(timeout=2))
            except (ConnectionError, asyncio.IncompleteReadError):
                break
        assert [r.code for r in replies[:20]] == [250] * 20
        assert len(replies) == 21
        expect(replies[-1], R.TOO_MANY_COMMANDS)
        assert await client.at_eof()


async def test_recipients_per_session_across_transactions(tls: Tls, users: UserStore) -> None:
    submitter = RecordingSubmitter()
    async with running_server(tls=tls, users=users, submitter=submitter,
                              limits=limits(max_recipients_per_session=3)) as srv:
        client = await tls_session(srv.port, tls)
        await open_data(client, rcpt="a@sink.test")  # 1
        await client.send(b"Subject: one\r\n\r\nx\r\n.\r\n")
        expect(await client.read_reply(), R.QUEUED)
        expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.SENDER_OK)
        expect(await client.cmd("RCPT TO:<b@sink.test>"), R.RECIPIENT_OK)  # 2
        expect(await client.cmd("RCPT TO:<c@sink.test>"), R.RECIPIENT_OK)  # 3
        expect(await client.cmd("RCPT TO:<d@sink.test>"), R.TOO_MANY_SESSION_RECIPIENTS)
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"Subject: two\r\n\r\nx\r\n.\r\n")
        expect(await client.read_reply(), R.QUEUED)
        expect(await client.cmd("RSET"), R.OK)
        expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.SENDER_OK)
        expect(await client.cmd("RCPT TO:<e@sink.test>"), R.TOO_MANY_SESSION_RECIPIENTS)
        await client.close()
    assert [m.recipients for m in submitter.messages] == [["a@sink.test"],
                                                          ["b@sink.test", "c@sink.test"]]


async def test_brute_force_metric_and_one_log_line_each(
        tls: Tls, users: UserStore, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    secret = "wrong-Pa55word-xyz"
    with caplog.at_level(logging.INFO, logger="relay.smtp.session"):
        async with running_server(tls=tls, users=users,
                                  limits=limits(auth_max_failures=3)) as srv:
            srv.context.on_auth = metrics.observe_auth
            client = await tls_session(srv.port, tls, login=False)
            for want in (R.AUTH_INVALID, R.AUTH_INVALID, R.AUTH_INVALID, R.AUTH_LOCKED):
                expect(await client.cmd(f"AUTH PLAIN {plain(USER, secret)}"), want)
            expect(await client.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_LOCKED)
            await client.close()
    text = metrics.render().decode()
    assert 'relay_smtp_auth_failures_total{result="failed"} 2.0' in text
    assert 'relay_smtp_auth_failures_total{result="lockout"} 1.0' in text
    assert 'relay_smtp_auth_failures_total{result="locked"} 2.0' in text
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.smtp.session"]
    assert sum("AUTH failed" in line for line in lines) == 3
    assert sum("locked out for" in line for line in lines) == 1
    assert all(secret not in line and PASSWORD not in line for line in lines)
    assert all(secret not in r.getMessage() for r in caplog.records)


# --- TLS on submission ------------------------------------------------------------------


@pytest.fixture
def real_tls(tmp_path: Path) -> Tls:
    """Tls whose server side is relay's own listener context (relay.tlsutil.server_context)."""
    t = Tls()
    cert, key = t.write_files(tmp_path)
    t.server = server_context(cert, key)
    return t


def _old_client(max_version: ssl.TLSVersion, ciphers: str = "ALL:@SECLEVEL=0") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = max_version
    ctx.set_ciphers(ciphers)
    return ctx


async def _handshake(port: int, ctx: ssl.SSLContext) -> bool:
    client = await connect(port)
    assert (await client.cmd("EHLO client.test")).code == 250
    try:
        reply = await asyncio.wait_for(client.starttls(ctx), 5)
    except (ssl.SSLError, ConnectionError):
        return False
    assert reply.code == 220
    ok = (await client.cmd("EHLO client.test")).code == 250
    await client.close()
    return ok


async def _permissive_server_accepts(ctx: ssl.SSLContext, tls: Tls, users: UserStore) -> bool:
    """Control: the same old client against a server that allows it (else the local
    OpenSSL cannot speak it at all, and a refusal would prove nothing)."""
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lax.minimum_version = ssl.TLSVersion.TLSv1
    lax.set_ciphers("ALL:@SECLEVEL=0")
    tls.ca.issue_cert("127.0.0.1").configure_cert(lax)
    shim = Tls.__new__(Tls)
    shim.ca, shim.server, shim.client = tls.ca, lax, tls.client
    async with running_server(tls=shim, users=users) as srv:
        return await _handshake(srv.port, ctx)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TLS 1.0/1.1 on purpose
async def test_tls_1_1_client_refused(real_tls: Tls, users: UserStore) -> None:
    old = _old_client(ssl.TLSVersion.TLSv1_1)
    if not await _permissive_server_accepts(old, real_tls, users):
        pytest.skip("this OpenSSL cannot speak TLS 1.1 at all")
    async with running_server(tls=real_tls, users=users) as srv:
        assert not await _handshake(srv.port, old)
        # A modern client on the same listener is fine, and AUTH works after it.
        client = await tls_session(srv.port, real_tls)
        await client.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TLS 1.0/1.1 on purpose
async def test_tls_1_2_without_forward_secret_aead_refused(real_tls: Tls,
                                                           users: UserStore) -> None:
    # CBC suites (trustme keys are ECDSA): TLS 1.2, forward secret, but not AEAD.
    weak = _old_client(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
                       "ECDHE-ECDSA-AES128-SHA256")
    if not await _permissive_server_accepts(weak, real_tls, users):
        pytest.skip("this OpenSSL offers none of these suites")
    async with running_server(tls=real_tls, users=users) as srv:
        assert not await _handshake(srv.port, weak)
        good = _old_client(ssl.TLSVersion.TLSv1_2, "ECDHE+AESGCM")
        assert await _handshake(srv.port, good)


def test_server_context_floor_is_tls_1_2(tmp_path: Path) -> None:
    cert, key = Tls().write_files(tmp_path)
    ctx = server_context(cert, key)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] in ("kx-ecdhe", "kx-dhe") for c in tls12)
