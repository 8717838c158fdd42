"""OpenDKIM (Debian's /usr/sbin/opendkim) as a signing milter for a private Postfix, so a
benchmark compares relay with a Postfix that signs every message as relay does.

`OpenDkimSigner(base, domain).start()` makes an RSA-2048 key with opendkim-genkey under
`base`/opendkim, writes an opendkim.conf of its own there (Mode s, the same header list
and canonicalisation as relay.dkim.sign: relaxed/relaxed, `OVERSIGN` oversigned, `ALSO_SIGN`
signed as present, no l=), and runs opendkim in the foreground on 127.0.0.1:PORT.
`milter_config()` gives the main.cf lines that put it in front of Postfix's queue with
milter_default_action = tempfail (a message OpenDKIM could not sign is refused for now,
never passed unsigned); `txt_record` is the DNS record to publish for the selector.
The system's opendkim configuration and service are never touched.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from relay.dkim.sign import ALSO_SIGN, OVERSIGN

PROGRAMS = ("opendkim", "opendkim-genkey")
SELECTOR = "odkim"


def unavailable() -> str | None:
    """None when OpenDKIM can be run here, else why not (names the Debian package)."""
    for prog, package in (("opendkim", "opendkim"), ("opendkim-genkey", "opendkim-tools")):
        if shutil.which(prog) is None:
            return f"{prog} is not installed (Debian: apt-get install {package})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def genkey(directory: Path, domain: str, selector: str, bits: int = 2048) -> tuple[Path, str]:
    """An RSA key made by opendkim-genkey in `directory`: (private key file, the TXT value
    to publish at <selector>._domainkey.<domain>)."""
    directory.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["opendkim-genkey", "-b", str(bits), "-d", domain, "-s", selector,
                           "-D", str(directory)], capture_output=True, text=True, timeout=120,
                          check=False)
    if made.returncode != 0:
        raise RuntimeError(f"opendkim-genkey: {made.stderr.strip()}")
    zone = (directory / f"{selector}.txt").read_text()
    # The zone stub: name IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=MIIB..." "..." ) ; comment
    value = "".join(re.findall(r'"([^"]*)"', zone.partition(")")[0]))
    if "p=" not in value:
        raise RuntimeError(f"opendkim-genkey wrote no public key record: {zone!r}")
    key = directory / f"{selector}.private"
    key.chmod(0o600)
    return key, value


class OpenDkimSigner:
    """One opendkim process signing `domain`'s mail (selector `selector`, RSA-2048)."""

    def __init__(self, base: Path, domain: str, selector: str = SELECTOR,
                 unix: bool = True) -> None:
        self.dir = base / "opendkim"
        self.unix = unix
        self.socket_path = self.dir / "milter.sock"
        self.domain = domain
        self.selector = selector
        self.port = 0
        self.txt_record = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("opendkim is not running")
        return self.proc.pid

    def config(self, key: Path) -> str:
        """opendkim.conf: relay's signing choices (relay.dkim.sign) in OpenDKIM's words."""
        return "\n".join([
            "Mode s",
            f"Socket {self.socket_spec()}",
            f"PidFile {self.dir / 'opendkim.pid'}",
            f"Domain {self.domain}",
            f"Selector {self.selector}",
            f"KeyFile {key}",
            # The key is 0600 root, but under /tmp (Postfix's instance dir must be there for
            # user postfix to reach it), which OpenDKIM's path check refuses as a whole.
            "RequireSafeKeys false",
            "SignatureAlgorithm rsa-sha256",
            "Canonicalization relaxed/relaxed",
            # h=: OVERSIGN each once more than present, ALSO_SIGN as present (OpenDKIM
            # signs a SignHeaders field only when present; OversignHeaders adds one more).
            f"SignHeaders {','.join(OVERSIGN + ALSO_SIGN)}",
            f"OversignHeaders {','.join(OVERSIGN)}",
            # No l= (relay never sets it): OpenDKIM adds one only for BodyLengthDB matches.
            # Sign what the local Postfix hands over (clients on loopback, or authenticated).
            "InternalHosts 127.0.0.0/8",
            # Per-message syslog lines would go nowhere here (no syslog daemon on loopback
            # test machines); relay logs at warning level in the benchmark too.
            "Syslog no",
            # The socket is for Postfix's smtpd and cleanup, which run as user postfix.
            "UMask 000",
            "",
        ])

    def start(self, timeout: float = 20.0) -> OpenDkimSigner:
        why = unavailable()
        if why is not None:
            raise RuntimeError(why)
        key, self.txt_record = genkey(self.dir / "keys", self.domain, self.selector)
        self.port = _free_port()
        conf = self.dir / "opendkim.conf"
        conf.write_text(self.config(key))
        log = (self.dir / "opendkim.out").open("wb")
        with log:
            # -f: stay in the foreground, so this object owns the process (and its pid is
            # the one whose CPU a benchmark counts); -x: this config only.
            self.proc = subprocess.Popen(["opendkim", "-f", "-x", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"opendkim exited with {self.proc.returncode}: "
                                   f"{(self.dir / 'opendkim.out').read_text()[-2000:]}")
            if self._listening():
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"opendkim did not listen on {self.socket_spec()} in {timeout}s")

    def _listening(self) -> bool:
        family = socket.AF_UNIX if self.unix else socket.AF_INET
        address = str(self.socket_path) if self.unix else ("127.0.0.1", self.port)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(address)
            except OSError:
                return False
            return True

    def socket_spec(self) -> str:
        """opendkim.conf's Socket: a unix socket in its dir, or 127.0.0.1:port."""
        return f"local:{self.socket_path}" if self.unix else f"inet:{self.port}@127.0.0.1"

    def milter_config(self) -> list[str]:
        """main.cf lines: every message through this signer before Postfix queues it."""
        milter = f"unix:{self.socket_path}" if self.unix else f"inet:127.0.0.1:{self.port}"
        return [
            f"smtpd_milters = {milter}", f"non_smtpd_milters = {milter}",
            # A milter that cannot answer means 451 to the client, never an unsigned message.
            "milter_default_action = tempfail",
        ]

    def stop(self, grace: float = 0.3) -> None:
        """SIGTERM, then SIGKILL after `grace` s: libmilter only notices the signal at its
        next 5 s select timeout, and a throwaway signer has nothing left to finish once
        its Postfix is stopped."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> OpenDkimSigner:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
