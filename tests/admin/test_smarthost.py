"""Smarthost recipes, tested: a private Postfix instance configured with the README's
lines relays through relay (STARTTLS + AUTH) to a sink; swaks does the same as a client.

The Postfix instance lives entirely in the test's tmp dir (its own main.cf/master.cf,
queue and data directories, loopback ports); the system instance is never touched.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from adminkit import PASSWORD, Admin, wait_until

from relay.testing.postfix import instance_dir, postfix, write_config
from relay.testing.process import free_port
from relay.testing.require import require_program

ROOT = Path(__file__).resolve().parents[2]

def readme_block(name: str) -> str:
    """The fenced block after the README's `<!-- recipe: NAME -->` marker."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- recipe: {name} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert m is not None, f"README has no recipe {name!r}"
    return m.group(1)


def _maillog(tmp: Path) -> str:
    path = tmp / "maillog"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def postfix_dir() -> Iterator[Path]:
    """A world-traversable temp dir: Postfix's daemons run as user postfix, and pytest's
    tmp dirs are 0700 root. Removed afterwards."""
    path = instance_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_postfix_relays_through_relay(admin: Admin, postfix_dir: Path) -> None:
    require_program("postfix")
    require_program("postmap")
    tmp_path = postfix_dir
    conf = tmp_path / "postfix"
    conf.mkdir()
    listen = free_port()
    ca = tmp_path / "relay-ca.pem"
    admin.tls.ca.cert_pem.write_to_path(str(ca))
    recipe = readme_block("postfix-main.cf")
    recipe = recipe.replace("[relay.example.com]:587", f"[127.0.0.1]:{admin.submit_port}")
    recipe = recipe.replace("/etc/postfix/", f"{conf}/")
    write_config(conf, tmp_path, listen, "postfix.test", [
        f"smtp_tls_CAfile = {ca}",
        recipe,
    ])
    sasl = readme_block("postfix-sasl_passwd")
    sasl = sasl.replace("[relay.example.com]:587", f"[127.0.0.1]:{admin.submit_port}")
    sasl = sasl.replace("app:PASSWORD", f"app:{PASSWORD}")
    (conf / "sasl_passwd").write_text(sasl)
    (conf / "sasl_passwd").chmod(0o600)
    mapped = subprocess.run(["postmap", "-c", str(conf), f"hash:{conf}/sasl_passwd"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert mapped.returncode == 0, mapped.stderr
    (tmp_path / "queue").mkdir()  # root-owned; `postfix check` makes the rest, owned right
    checked = postfix(conf, "check")
    assert checked.returncode == 0, checked.stderr + _maillog(tmp_path)
    started = postfix(conf, "start")
    assert started.returncode == 0, started.stderr + _maillog(tmp_path)
    try:
        before = admin.sinks[0].message_count
        body = ("From: app@example.com\r\nTo: via-postfix@ok.test\r\n"
                "Subject: through postfix\r\n\r\nrelayed by a smarthost\r\n")
        with smtplib.SMTP("127.0.0.1", listen, timeout=15) as s:
            s.sendmail("app@example.com", ["via-postfix@ok.test"], body)
        try:
            got = admin.sinks[0].wait_for(before + 1, timeout=30)
        except Exception as e:
            raise AssertionError(f"{e}\n{_maillog(tmp_path)}") from None
        msg = next(m for m in got if m.rcpt_tos == ["via-postfix@ok.test"])
        assert b"through postfix" in msg.data
        # It went through relay: relay's Received line, with TLS and AUTH.
        assert b"relay.test" in msg.data
        log = _maillog(tmp_path)
        assert re.search(r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+.*status=sent", log), log
    finally:
        stopped = postfix(conf, "stop")
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: postfix(conf, "status").returncode != 0, 15, "postfix to stop")


def test_swaks_submits_with_starttls_and_auth(admin: Admin) -> None:
    require_program("swaks")
    before = admin.sinks[0].message_count
    r = subprocess.run(
        [shutil.which("swaks") or "swaks", "--server", "127.0.0.1", "--port",
         str(admin.submit_port), "--tls", "--auth", "PLAIN", "--auth-user", "app",
         "--auth-password", PASSWORD, "--from", "app@example.com", "--to", "swaks@ok.test",
         "--header", "Subject: via swaks", "--body", "hello from swaks"],
        capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "queued as" in r.stdout
    got = admin.sinks[0].wait_for(before + 1, timeout=30)
    assert any(m.rcpt_tos == ["swaks@ok.test"] for m in got)
