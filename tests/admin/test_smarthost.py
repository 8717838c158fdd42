"""Smarthost recipes, tested: a private Postfix, Exim or sendmail instance configured with
the README's lines is handed a message and relays it through relay (STARTTLS + AUTH) to a
sink; swaks does the same as a client.

Each instance lives entirely in the test's tmp dir (its own config, queue and log, loopback
ports); no system instance is touched. Postfix is the installed one. Exim and sendmail
conflict with Postfix as Debian packages, so they run from their .debs unpacked with
`dpkg -x` under $RELAY_UNPACKED_MTA (`exim/` and `sendmail/`; .ci/run makes it): without
it these tests skip, and fail under RELAY_REQUIRE_ALL=1.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from adminkit import PASSWORD, Admin, make_admin_relay

from relay.testing.dnsserver import DnsServer
from relay.testing.postfix import instance_dir, postfix, write_config
from relay.testing.process import free_port
from relay.testing.require import require_all, require_path, require_program
from relay.testing.sink import Sink
from relay.testing.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
UNPACKED_ENV = "RELAY_UNPACKED_MTA"

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


# ---------------------------------------------------------------------------- unpacked MTAs


def unpacked(mta: str, binary: str) -> Path:
    """A program of an MTA unpacked from its Debian packages under $RELAY_UNPACKED_MTA/mta."""
    base = Path(os.environ.get(UNPACKED_ENV) or f"/nonexistent-{UNPACKED_ENV}")
    path = base / mta / binary
    require_path(path, f"apt-get download the {mta} packages and dpkg -x them into "
                       f"${UNPACKED_ENV}/{mta}")
    return path


def require_user(name: str, how: str) -> None:
    """Skip (fail under RELAY_REQUIRE_ALL=1) when the system user `name` is missing."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        reason = f"no system user {name!r}; {how} (as .ci/run does)"
        if require_all():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def own_host_name(tmp: Path, name: str) -> list[str]:
    """A command prefix that runs a program with host name `name`, resolved by a hosts file
    of its own (private UTS and mount namespaces): an MTA looks its own name up at start,
    which would ask the system's DNS server, off loopback (and sendmail sleeps a minute
    when the machine's name is not qualified)."""
    hosts = tmp / "hosts"
    hosts.write_text(f"127.0.0.1 {name} localhost\n::1 {name} localhost\n")
    hosts.chmod(0o644)
    prefix = ["unshare", "--uts", "--mount", "sh", "-c",
              f'hostname {name} && mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30,
                           check=False)
    if probe.returncode != 0:
        reason = ("cannot give the MTA its own host name (unshare --uts --mount needs "
                  f"CAP_SYS_ADMIN): {probe.stderr.strip()}")
        if require_all():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return prefix


def hand_over(program: list[str], sender: str, recipient: str, body: str,
              log: Callable[[], str], keep: list[str] | None = None) -> None:
    """Give the MTA a message on stdin, as a program calling /usr/sbin/sendmail does;
    its output goes to `keep`."""
    r = subprocess.run([*program, "-f", sender, recipient], input=body.encode(),
                       capture_output=True, timeout=60, check=False)
    output = (r.stdout + r.stderr).decode(errors="replace")
    if keep is not None:
        keep.append(output)
    assert r.returncode == 0, output + log()


def arrived(admin: Admin, before: int, recipient: str, log: Callable[[], str]) -> bytes:
    try:
        got = admin.sinks[0].wait_for(before + 1, timeout=30)
    except Exception as e:
        raise AssertionError(f"{e}\n{log()}") from None
    msg = next((m for m in got if m.rcpt_tos == [recipient]), None)
    assert msg is not None, log()
    assert b"relay.test" in msg.data  # relay's Received line: it went through relay
    return bytes(msg.data)


SMARTHOST_IP = "127.0.0.7"


@dataclass
class Smarthost:
    """A relay whose submission listener is on SMARTHOST_IP, with a certificate for it."""

    admin: Admin
    port: int
    ca: Path


@pytest.fixture(scope="module")
def smarthost(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
              sinks: tuple[Sink, Sink]) -> Iterator[Smarthost]:
    """Exim refuses to relay to an address of one of its host's interfaces ("remote host
    address is the local host"); 127.0.0.7 is loopback but no interface's address, so the
    MTA under test sees relay as another host, as in production."""
    tmp = tmp_path_factory.mktemp("smarthost")
    ca = trustme.CA()
    cert = ca.issue_cert(SMARTHOST_IP)
    cert_path, key_path = tmp / "smarthost-cert.pem", tmp / "smarthost-key.pem"
    ca_path = tmp / "smarthost-ca.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_path.write_bytes(cert.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_path))
    ca_path.chmod(0o644)
    port = free_port(SMARTHOST_IP)
    a = make_admin_relay(tmp, dns, sinks,
                         listener=[{"address": f"{SMARTHOST_IP}:{port}", "tls": "starttls",
                                    "auth": "required"}],
                         tls={"cert": str(cert_path), "key": str(key_path)})
    try:
        yield Smarthost(a, port, ca_path)
    finally:
        a.relay.stop()


def test_exim_relays_through_relay(smarthost: Smarthost, postfix_dir: Path) -> None:
    tmp_path = postfix_dir  # world-traversable: Exim delivers as user Debian-exim
    admin = smarthost.admin
    exim = unpacked("exim", "usr/sbin/exim4")
    require_user("Debian-exim", "useradd --system --user-group Debian-exim")
    root = exim.parents[2]
    conf = tmp_path / "exim4"
    shutil.copytree(root / "etc" / "exim4", conf)
    (conf / "update-exim4.conf.conf").write_text(
        readme_block("exim-update-exim4.conf.conf").replace(
            "relay.example.com::587", f"{SMARTHOST_IP}::{smarthost.port}"))
    passwd = conf / "passwd.client"
    passwd.write_text(readme_block("exim-passwd.client")
                      .replace("relay.example.com", SMARTHOST_IP).replace("PASSWORD", PASSWORD))
    shutil.chown(passwd, "root", "Debian-exim")  # as the README says
    passwd.chmod(0o640)
    generated = tmp_path / "config.autogenerated"
    made = subprocess.run(["sh", str(root / "usr/sbin/update-exim4.conf"), "-d", str(conf),
                           "-o", str(generated)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    ca = Path(shutil.copy(smarthost.ca, tmp_path / "relay-ca.pem"))
    spool, logs = tmp_path / "spool", tmp_path / "log"
    spool.mkdir()
    logs.mkdir()
    for d in (spool, logs):
        shutil.chown(d, "Debian-exim", "Debian-exim")
    # update-exim4.conf puts exim4.conf.localmacros first (it looks for it only under
    # /etc/exim4, so with -d it is prepended here), then this private instance's paths.
    private = "\n".join([
        readme_block("exim-exim4.conf.localmacros"),
        f"CONFDIR = {conf}",
        f"SPOOLDIR = {spool}",
        f"REMOTE_SMTP_SMARTHOST_TLS_VERIFY_CERTIFICATES = {ca}",
        "REMOTE_SMTP_SMARTHOST_TLS_VERIFY_HOSTS = *",
        f"log_file_path = {logs}/%slog",
    ])
    config = tmp_path / "exim4.conf"
    text = generated.read_text().replace("exim_path = /usr/sbin/exim4\n",
                                         f"exim_path = {exim}\n")
    config.write_text(private + "\n" + text)

    def log() -> str:
        main = logs / "mainlog"
        return main.read_text(errors="replace")[-3000:] if main.exists() else "(no mainlog)"

    before = admin.sinks[0].message_count
    hand_over([*own_host_name(tmp_path, "exim.test"), str(exim), "-C", str(config), "-odf"],
              "app@example.com", "via-exim@ok.test",
              "From: app@example.com\nTo: via-exim@ok.test\nSubject: through exim\n\n"
              "relayed by a smarthost\n", log)
    data = arrived(admin, before, "via-exim@ok.test", log)
    assert b"through exim" in data
    # Exim logs the delivery: to the smarthost, over TLS, authenticated.
    text = log()
    line = next((ln for ln in text.splitlines() if " => via-exim@ok.test" in ln), "")
    assert "T=remote_smtp_smarthost" in line and "X=TLS" in line and " A=" in line, text


def test_sendmail_relays_through_relay(smarthost: Smarthost, tmp_path: Path) -> None:
    sendmail = unpacked("sendmail", "usr/libexec/sendmail/sendmail")
    require_program("m4")
    root = sendmail.parents[3]
    cf = root / "usr/share/sendmail/cf"
    admin = smarthost.admin
    ca = Path(shutil.copy(smarthost.ca, tmp_path / "relay-ca.pem"))
    queue = tmp_path / "mqueue"
    queue.mkdir(mode=0o700)
    authinfo = tmp_path / "authinfo"
    recipe = (readme_block("sendmail.mc")
              .replace("[relay.example.com]", f"[{SMARTHOST_IP}]")
              .replace("TCP $h 587", f"TCP $h {smarthost.port}")
              .replace("/etc/mail/authinfo.db", f"{authinfo}.db"))
    # A private instance: its own queue, names and CA file; the recipe's lines go before
    # the MAILER lines, as in Debian's sendmail.mc.
    mc = "\n".join([
        "divert(-1)dnl",
        f"include(`{cf}/m4/cf.m4')dnl",
        "OSTYPE(`linux')dnl",
        "define(`confDOMAIN_NAME', `sendmail.test')dnl",
        "define(`confDONT_PROBE_INTERFACES', `True')dnl",
        f"define(`QUEUE_DIR', `{queue}')dnl",
        f"define(`STATUS_FILE', `{tmp_path}/statistics')dnl",
        f"define(`ALIAS_FILE', `{tmp_path}/aliases')dnl",
        f"define(`confPID_FILE', `{tmp_path}/sendmail.pid')dnl",
        f"define(`confCACERT_PATH', `{tmp_path}')dnl",
        f"define(`confCACERT', `{ca}')dnl",
        f"define(`confSERVICE_SWITCH_FILE', `{tmp_path}/service.switch')dnl",
        "FEATURE(`nocanonify')dnl",  # host names from the hosts file only: no DNS
        # The instance lives under /tmp (world-writable, sticky): without this sendmail
        # finds authinfo.db unsafe and, the map being optional (-o), silently sends no AUTH.
        "define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl",
        recipe.strip(),
        "MAILER(`local')dnl",
        "MAILER(`smtp')dnl",
        "",
    ])
    (tmp_path / "sendmail.mc").write_text(mc)
    built = subprocess.run(["m4", f"-D_CF_DIR_={cf}/", str(tmp_path / "sendmail.mc")],
                           capture_output=True, text=True, timeout=30, check=False)
    assert built.returncode == 0 and "Cw" in built.stdout, built.stderr
    config = tmp_path / "sendmail.cf"
    config.write_text(built.stdout)
    (tmp_path / "aliases").write_text("")
    (tmp_path / "service.switch").write_text("hosts files\naliases files\n")
    authinfo.write_text(readme_block("sendmail-authinfo")
                        .replace("relay.example.com", SMARTHOST_IP)
                        .replace("PASSWORD", PASSWORD))
    authinfo.chmod(0o600)
    with authinfo.open("rb") as source:
        mapped = subprocess.run([str(root / "usr/libexec/sendmail/makemap"), "-C",
                                 str(config), "hash", str(authinfo)], stdin=source,
                                capture_output=True, timeout=30, check=False)
    assert mapped.returncode == 0, mapped.stderr

    transcript: list[str] = []
    before = admin.sinks[0].message_count
    hand_over([*own_host_name(tmp_path, "sendmail.test"), str(sendmail), "-C", str(config),
               "-odi", "-v"], "app@example.com",
              "via-sendmail@ok.test",
              "From: app@example.com\nTo: via-sendmail@ok.test\n"
              "Subject: through sendmail\n\nrelayed by a smarthost\n",
              lambda: "\n".join(transcript), keep=transcript)
    data = arrived(admin, before, "via-sendmail@ok.test", lambda: "\n".join(transcript))
    assert b"through sendmail" in data
    said = "\n".join(transcript)
    assert ">>> STARTTLS" in said and ">>> AUTH PLAIN" in said, said
    assert "235 2.7.0" in said, said


@pytest.mark.parametrize("parameters", [["AUTH=app@example.com"], ["AUTH=<>"],
                                        ["SIZE=100", "auth=app+2Bx@example.com"]])
def test_mail_from_auth_parameter_is_accepted_after_auth(admin: Admin,
                                                         parameters: list[str]) -> None:
    """RFC 4954 §5: MAIL FROM:<...> AUTH=<mailbox>, as sendmail sends it after AUTH."""
    with smtplib.SMTP("127.0.0.1", admin.submit_port, timeout=10) as s:
        s.starttls(context=admin.tls.client)
        s.login("app", PASSWORD)
        code, reply = s.mail("app@example.com", parameters)
        assert code == 250, reply
        assert s.rcpt("auth-param@ok.test")[0] == 250
        code, reply = s.data(b"From: app@example.com\r\nSubject: auth param\r\n\r\nhi\r\n")
        assert code == 250, reply
