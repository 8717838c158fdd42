"""A private, throwaway Postfix instance on loopback (smarthost test, bench/compare_postfix.py).

`instance_dir()` makes a world-traversable dir in /tmp for it (Postfix's daemons run as
user postfix; pytest's tmp dirs are 0700 root); the caller removes it. `write_config(...)`
writes main.cf (queue, data and maillog under that dir, listening on 127.0.0.1 only, no
local delivery) and master.cf (smtpd on the given port) into a config dir; `postfix(conf,
"check" | "start" | "stop" | "status")` runs `postfix -c CONF ...`. The system instance
is never touched.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

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
