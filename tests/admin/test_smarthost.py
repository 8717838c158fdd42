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
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from adminkit import PASSWORD, Admin, wait_until

from relay.testing.process import free_port
from relay.testing.require import require_program

ROOT = Path(__file__).resolve().parents[2]

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def readme_block(name: str) -> str:
    """The fenced block after the README's `<!-- recipe: NAME -->` marker."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- recipe: {name} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert m is not None, f"README has no recipe {name!r}"
    return m.group(1)


def _maillog(tmp: Path) -> str:
    path = tmp / "maillog"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _postfix(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["postfix", "-c", str(conf), *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def postfix_dir() -> Iterator[Path]:
    """A world-traversable temp dir: Postfix's daemons run as user postfix, and pytest's
    tmp dirs are 0700 root. Removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="relay-postfix-", dir="/tmp"))
    path.chmod(0o755)
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
    main_cf = "\n".join([
        "compatibility_level = 3.6",
        f"queue_directory = {tmp_path / 'queue'}",
        f"data_directory = {tmp_path / 'data'}",
        "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4",
        "myhostname = postfix.test", "mydestination =", "mynetworks = 127.0.0.0/8",
        "local_transport = error:local delivery is disabled",
        "alias_maps =", "alias_database =", "smtputf8_enable = no",
        f"maillog_file_prefixes = {tmp_path}", f"maillog_file = {tmp_path / 'maillog'}",
        f"smtp_tls_CAfile = {ca}",
        recipe,
    ])
    (conf / "main.cf").write_text(main_cf + "\n")
    (conf / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{listen}"))
    sasl = readme_block("postfix-sasl_passwd")
    sasl = sasl.replace("[relay.example.com]:587", f"[127.0.0.1]:{admin.submit_port}")
    sasl = sasl.replace("app:PASSWORD", f"app:{PASSWORD}")
    (conf / "sasl_passwd").write_text(sasl)
    (conf / "sasl_passwd").chmod(0o600)
    mapped = subprocess.run(["postmap", "-c", str(conf), f"hash:{conf}/sasl_passwd"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert mapped.returncode == 0, mapped.stderr
    (tmp_path / "queue").mkdir()  # root-owned; `postfix check` makes the rest, owned right
    checked = _postfix(conf, "check")
    assert checked.returncode == 0, checked.stderr + _maillog(tmp_path)
    started = _postfix(conf, "start")
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
        stopped = _postfix(conf, "stop")
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: _postfix(conf, "status").returncode != 0, 15, "postfix to stop")


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
