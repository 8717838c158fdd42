"""The Postfix side of bench/compare_postfix.py, kept working under `make test`.

A real private Postfix instance (Debian's postfix, root) configured by
relay.testing.postfix.submission_config: it must take the dialogue relay's submission
listener takes (STARTTLS, then AUTH PLAIN) and refuse to relay without it, or the "same
dialogue" table of the comparison would compare relay with a Postfix doing less.
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import time
from collections.abc import Iterator

import compare_postfix  # bench/ is on sys.path (bench/conftest.py)
import pytest

from relay.testing.postfix import instance_dir, postfix, submission_config, write_config
from relay.testing.process import free_port
from relay.testing.require import require_program

pytestmark = pytest.mark.slow


def _require_postfix_submission() -> None:
    require_program("postfix")
    require_program("saslpasswd2")  # Debian: sasl2-bin


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
        compare_postfix._wait_port(port, 20)
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


def test_the_comparison_drives_postfix_through_starttls_and_auth() -> None:
    # One whole run of the comparison's "same dialogue" figure: the load generator
    # speaks STARTTLS + AUTH PLAIN, a new connection per message, and every message
    # reaches the bench sink through Postfix's queue.
    _require_postfix_submission()
    row = compare_postfix.run_postfix(2048, 12, 3, False, 60.0, submission=True)
    assert row["failed"] == {}, row
    assert row["accept_rate"] > 0 and row["e2e_rate"] > 0, row
