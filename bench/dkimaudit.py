"""Every message a benchmark delivered, DKIM-verified after the run (dkimpy, an
implementation independent of relay's signer and of OpenDKIM), the keys looked up in the
run's loopback DNS server: so neither server of a comparison can skip the signing work.

`audit(path, dns, domain)` reads a bench sink's `--store` file (bench/sinkserver.py) and
counts the messages whose every DKIM-Signature verifies and of which one is an
rsa-sha256 signature for `domain`; any other message is a failure, with the first few
reasons kept. Done after the run, in the benchmark's own process, so none of its CPU
lands on the servers' figures or competes with them during the run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import dns.exception
import dns.resolver
from sinkserver import stored_messages

from relay.testing.dnsserver import DnsServer

_SIGNATURE = re.compile(rb"^dkim-signature:", re.IGNORECASE | re.MULTILINE)
_TAGS = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)")


@dataclass
class Audit:
    messages: int = 0
    verified: int = 0
    failures: list[str] = field(default_factory=list)   # the first few reasons

    @property
    def failed(self) -> int:
        return self.messages - self.verified

    def fail(self, why: str) -> None:
        if len(self.failures) < 5:
            self.failures.append(why)


def _resolver(server: DnsServer) -> Callable[..., bytes | None]:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [server.host]
    res.port = server.port
    cache: dict[bytes, bytes | None] = {}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        # One lookup per selector, not per message: the audit measures nothing, but
        # 12,000 queries would make it slow.
        if name not in cache:
            try:
                answer = res.resolve(name.decode().rstrip("."), "TXT")
            except dns.exception.DNSException:
                return None
            cache[name] = b"".join(b"".join(r.strings) for r in answer)
        return cache[name]

    return dnsfunc


def _tags(header: bytes) -> dict[bytes, bytes]:
    """A DKIM-Signature field's tags (whitespace removed from the values)."""
    value = header.partition(b":")[2]
    return {k.lower(): b"".join(v.split()) for k, v in _TAGS.findall(value)}


def audit(path: Path, server: DnsServer, domain: str) -> Audit:
    """DKIM verdicts on every message stored at `path` (see the module docstring)."""
    dnsfunc = _resolver(server)
    result = Audit()
    want_d = domain.encode()
    for n, message in enumerate(stored_messages(path), 1):
        result.messages += 1
        head = message.split(b"\r\n\r\n", 1)[0]
        count = len(_SIGNATURE.findall(head))
        if count == 0:
            result.fail(f"message {n}: not signed")
            continue
        checker = dkim.DKIM(message)
        bad = next((f"signature {i + 1} of {count} does not verify{why}" for i in range(count)
                    if (why := _fails(checker, i, dnsfunc)) is not None), None)
        if bad is not None:
            result.fail(f"message {n}: {bad}")
            continue
        sigs = [_tags(h) for h in _headers(head)]
        if not any(s.get(b"d", b"").lower() == want_d and s.get(b"a") == b"rsa-sha256"
                   for s in sigs):
            result.fail(f"message {n}: no rsa-sha256 signature for d={domain}")
            continue
        result.verified += 1
    return result


def _fails(checker: dkim.DKIM, idx: int, dnsfunc: Callable[..., bytes | None]) -> str | None:
    """None when signature `idx` verifies, else "" or ": the reason" (dkimpy raises on
    some failures, a body hash mismatch among them, and returns False on others)."""
    try:
        return None if checker.verify(idx=idx, dnsfunc=dnsfunc) else ""
    except dkim.DKIMException as e:
        return f": {e}"


def _headers(head: bytes) -> list[bytes]:
    """The DKIM-Signature fields of a header block, unfolded lines joined."""
    out: list[bytes] = []
    current: bytearray | None = None
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and current is not None:
            current += line
            continue
        if current is not None:
            out.append(bytes(current))
            current = None
        if line.lower().startswith(b"dkim-signature:"):
            current = bytearray(line)
    if current is not None:
        out.append(bytes(current))
    return out
