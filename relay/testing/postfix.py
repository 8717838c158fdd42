"""A private, throwaway Postfix instance on loopback (smarthost test, bench/compare_postfix.py).

`instance_dir()` makes a world-traversable dir in /tmp for it (Postfix's daemons run as
user postfix; pytest's tmp dirs are 0700 root); the caller removes it. `write_config(...)`
writes main.cf (queue, data and maillog under that dir, listening on 127.0.0.1 only, no
local delivery) and master.cf (smtpd on the given port) into a config dir; `postfix(conf,
"check" | "start" | "stop" | "status")` runs `postfix -c CONF ...`. The system instance
is never touched. `submission_config(...)` gives such an instance what relay's submission
listener has: STARTTLS and AUTH PLAIN/LOGIN (Cyrus SASL, a sasldb of its own) required
before relaying, so a benchmark can drive both through the same dialogue.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from relay.tlsutil import ensure_self_signed

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


def instance_dir() -> Path:
    """A new world-traversable dir /tmp/relay-postfix-*: the daemons run as user postfix.
    The caller removes it."""
    path = Path(tempfile.mkdtemp(prefix="relay-postfix-", dir="/tmp"))
    path.chmod(0o755)
    return path


def postfix(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`postfix -c CONF ARGS...`, output captured, never raising on a non-zero exit."""
    return subprocess.run(["postfix", "-c", str(conf), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def write_config(conf: Path, base: Path, listen: int, myhostname: str,
                 extra: Sequence[str] = ()) -> None:
    """main.cf and master.cf in `conf` for an instance whose queue, data and maillog live in
    `base`, with smtpd on 127.0.0.1:`listen`; `extra` lines are appended to main.cf."""
    main_cf = "\n".join([
        "compatibility_level = 3.6",
        f"queue_directory = {base / 'queue'}",
        f"data_directory = {base / 'data'}",
        "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4",
        f"myhostname = {myhostname}", "mydestination =", "mynetworks = 127.0.0.0/8",
        "local_transport = error:local delivery is disabled",
        "alias_maps =", "alias_database =", "smtputf8_enable = no",
        f"maillog_file_prefixes = {base}", f"maillog_file = {base / 'maillog'}",
        *extra,
    ])
    (conf / "main.cf").write_text(main_cf + "\n")
    (conf / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{listen}"))


def submission_unavailable() -> str | None:
    """None when `submission_config()` can work here, else why not (names the package)."""
    if shutil.which("saslpasswd2") is None:
        return "saslpasswd2 is not installed (Debian: apt-get install sasl2-bin)"
    types = subprocess.run(["postconf", "-a"], capture_output=True, text=True, timeout=30,
                           check=False).stdout.split()
    if "cyrus" not in types:
        return f"this Postfix has no Cyrus SASL server (postconf -a: {' '.join(types)})"
    for module, package in (("libplain", "libsasl2-modules"),
                            ("libsasldb", "libsasl2-modules-db")):
        if not any(p for d in ("/usr/lib", "/usr/lib64") for pattern in (
                f"*/sasl2/{module}.so*", f"sasl2/{module}.so*") for p in Path(d).glob(pattern)):
            return f"Cyrus SASL's {module} module is missing (Debian: apt-get install {package})"
    return None


def submission_config(conf: Path, base: Path, myhostname: str, user: str,
                      password: str) -> list[str]:
    """main.cf lines (for `write_config(extra=...)`) for a submission service like relay's:
    STARTTLS offered (a self-signed P-256 certificate under `base`/tls, as relay makes
    its own), AUTH PLAIN/LOGIN only after it, and nothing relayed without AUTH. `user`
    logs in with `password` from a sasldb under `base`; Cyrus's config goes in `conf`/sasl."""
    cert, key = ensure_self_signed(base, myhostname)
    sasl_dir = conf / "sasl"
    sasl_dir.mkdir(exist_ok=True)
    db = base / "sasldb2"
    (sasl_dir / "smtpd.conf").write_text(
        f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
        f"sasldb_path: {db}\n")
    made = subprocess.run(["saslpasswd2", "-p", "-c", "-f", str(db), "-u", myhostname, user],
                          input=password.encode(), capture_output=True, timeout=30,
                          check=False)
    if made.returncode != 0:
        raise RuntimeError(f"saslpasswd2: {made.stderr.decode(errors='replace').strip()}")
    owner = pwd.getpwnam("postfix")  # smtpd reads the sasldb after dropping to postfix
    os.chown(db, owner.pw_uid, owner.pw_gid)
    return [
        f"smtpd_tls_cert_file = {cert}", f"smtpd_tls_key_file = {key}",
        "smtpd_tls_security_level = may", "smtpd_tls_auth_only = yes",
        "smtpd_sasl_auth_enable = yes", "smtpd_sasl_type = cyrus", "smtpd_sasl_path = smtpd",
        f"cyrus_sasl_config_path = {sasl_dir}", "smtpd_sasl_local_domain = $myhostname",
        # AUTH, not the client's address, is what lets a message through (as on relay's
        # submission listener): mynetworks (loopback) is not trusted here.
        "smtpd_relay_restrictions = permit_sasl_authenticated, reject",
    ]
