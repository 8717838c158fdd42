"""bench/compare_postfix.py kept working under `make test`: a tiny whole comparison.

A real private Postfix instance (Debian's postfix, root) configured by
relay.testing.postfix.submission_config must take the dialogue relay's submission
listener takes (STARTTLS, then AUTH PLAIN) and refuse to relay without it, and sign every
message through OpenDKIM (relay.testing.opendkim), never passing one unsigned; else the
comparison would compare relay with a Postfix doing less. The whole comparison then runs
on a dozen messages: both servers' messages DKIM-verified at the sink, the CPU figures
present. No time is asserted.
"""

from __future__ import annotations

import json
import shutil
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import compare_postfix  # bench/ is on sys.path (bench/conftest.py)
import pytest
import signedruns
from dkimaudit import audit

from relay.testing.dnsserver import DnsServer
from relay.testing.opendkim import OpenDkimSigner
from relay.testing.postfix import instance_dir, postfix, submission_config, write_config
from relay.testing.process import free_port
from relay.testing.require import require_program

pytestmark = pytest.mark.slow


def _require_postfix_submission() -> None:
    require_program("postfix")
    require_program("saslpasswd2")  # Debian: sasl2-bin


def _require_opendkim() -> None:
    _require_postfix_submission()
    require_program("opendkim")          # Debian: opendkim
    require_program("opendkim-genkey")   # Debian: opendkim-tools


@pytest.fixture
def submission_port() -> Iterator[int]:
    """A started Postfix instance with submission_config's lines; its smtpd port."""
    _require_postfix_submission()
    base = instance_dir()
    conf = base / "conf"
    conf.mkdir()
    port = free_port()
    try:
        write_config(conf, base, port, "postfix.bench", [
            "relay_domains = bench.test", "relayhost = [127.0.0.2]:9",
            "smtpd_peername_lookup = no",
            *submission_config(conf, base, "postfix.bench", "bench", "right-password-1"),
        ])
        (base / "queue").mkdir()
        started = postfix(conf, "start")
        assert started.returncode == 0, started.stderr
        signedruns.wait_port(port, 20)
        yield port
    finally:
        postfix(conf, "stop")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and postfix(conf, "status").returncode == 0:
            time.sleep(0.2)
        shutil.rmtree(base, ignore_errors=True)


def _tls_client(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=20)
    client.ehlo("client.test")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed, as the load generator accepts it
    client.starttls(context=ctx)
    client.ehlo("client.test")
    return client


def test_auth_is_offered_only_after_starttls(submission_port: int) -> None:
    with smtplib.SMTP("127.0.0.1", submission_port, timeout=20) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
    with _tls_client(submission_port) as client:
        assert "PLAIN" in client.esmtp_features["auth"].upper()


def test_nothing_is_relayed_without_auth(submission_port: int) -> None:
    with _tls_client(submission_port) as client:
        assert client.mail("bench@sender.test")[0] == 250
        code, text = client.rcpt("user@bench.test")
        assert code == 554 and text.startswith(b"5.7.1"), (code, text)


def test_a_wrong_password_is_refused_and_the_right_one_relays(submission_port: int) -> None:
    with _tls_client(submission_port) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("bench", "wrong-password")
        assert refused.value.smtp_code == 535
    with _tls_client(submission_port) as client:
        client.login("bench", "right-password-1")
        assert client.mail("bench@sender.test")[0] == 250
        assert client.rcpt("user@bench.test")[0] == 250


def test_a_tiny_whole_comparison_verifies_every_message_of_both_servers(
        capsys: pytest.CaptureFixture[str]) -> None:
    # relay and Postfix + OpenDKIM, STARTTLS + AUTH, a new connection per message: every
    # message at the sink carries a valid RSA signature (else main() returns 1 and says
    # so), and the CPU figure of each server is there.
    _require_opendkim()
    rc = compare_postfix.main(["--messages", "12", "--sessions", "3", "--repeat", "1",
                               "--sizes", "2048", "--modes", "new", "--no-ceiling",
                               "--no-reference"])
    out, err = capsys.readouterr()
    runs = {tuple(r["figure"]): r for r in map(json.loads, err.splitlines())
            if r.get("figure")} if err else {}
    assert rc == 0 and "DKIM CHECK FAILED" not in out + err, err
    for who in ("relay", "postfix-dkim"):
        run = runs[(who, 2048, "new")]
        assert run["dkim_verified"] == run["delivered"] == 12, run
        assert run["failed"] == {} and run["cpu_ms_per_msg"] > 0, run
    cpu_row = next(x for x in out.splitlines() if x.startswith("| server CPU ms"))
    assert "skipped" not in cpu_row, out


def test_an_unsigned_message_fails_the_dkim_audit(tmp_path: Path) -> None:
    # Messages that reach the sink unsigned (what the plain-SMTP reference Postfix
    # delivers): the audit must say so for each, or a server skipping the signing would
    # pass unnoticed.
    base = tmp_path / "sink"
    base.mkdir()
    sink = signedruns.StoringSink(base, 3, 30.0)
    try:
        with smtplib.SMTP(signedruns.SINK_HOST, sink.port, timeout=20) as client:
            for _ in range(3):
                client.sendmail("bench@sender.test", ["user@bench.test"],
                                b"From: <bench@sender.test>\r\nSubject: x\r\n\r\nhello\r\n")
        assert sink.summary(20.0)["messages"] == 3
    finally:
        sink.stop()
    with DnsServer() as dns:
        checked = audit(sink.store, dns, "sender.test")
    assert (checked.messages, checked.verified) == (3, 0), checked
    assert checked.failures[0] == "message 1: not signed", checked


def test_postfix_refuses_the_message_when_opendkim_cannot_sign_it() -> None:
    # milter_default_action = tempfail: with the signer gone, the transaction gets a 4xx
    # (at MAIL, where Postfix first calls the milter), so no
    # message leaves this Postfix unsigned.
    _require_opendkim()
    base = instance_dir()
    conf = base / "conf"
    conf.mkdir()
    port = free_port()
    signer = OpenDkimSigner(base, "sender.test")
    started = False
    try:
        signer.start()
        write_config(conf, base, port, "postfix.bench", [
            "relay_domains = bench.test", "relayhost = [127.0.0.2]:9",
            "smtpd_peername_lookup = no", *signer.milter_config()])
        (base / "queue").mkdir()
        assert postfix(conf, "start").returncode == 0
        started = True
        signedruns.wait_port(port, 20)
        signer.stop()
        with (smtplib.SMTP("127.0.0.1", port, timeout=20) as client,
              pytest.raises(smtplib.SMTPResponseException) as refused):
            client.sendmail("bench@sender.test", ["user@bench.test"],
                            b"From: <bench@sender.test>\r\nSubject: x\r\n\r\nhi\r\n")
        assert 400 <= refused.value.smtp_code < 500, refused.value
    finally:
        signer.stop()
        if started:
            signedruns.stop_postfix(conf)
        shutil.rmtree(base, ignore_errors=True)
