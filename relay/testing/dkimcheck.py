"""DKIM as a receiver checks it, for tests: publish what `relay dkim keygen` prints in the
loopback DNS server (relay.testing.dnsserver), and verify every DKIM-Signature of a
message with dkimpy (an implementation independent of relay's signer), looking the keys
up in that server.
"""

from __future__ import annotations

import re

import dkim
import dns.exception
import dns.resolver

from relay.testing.dnsserver import DnsServer

# One TXT record of `relay dkim keygen` output: name. IN TXT ( "part" "part" ... )
_RECORD = re.compile(r'^(\S+)\.\s+IN\s+TXT\s+\(?\s*((?:"[^"]*"\s*)+)\)?$')


def publish_keygen_output(stdout: str, server: DnsServer) -> list[str]:
    """Set every TXT record in keygen's output on `server`; return their names."""
    names: list[str] = []
    for line in stdout.splitlines():
        m = _RECORD.match(line.strip())
        if m:
            value = "".join(re.findall(r'"([^"]*)"', m.group(2)))
            server.set(m.group(1), "TXT", [value])
            names.append(m.group(1))
    return names


def dkimpy_verify(data: bytes, server: DnsServer) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of the message, in header order."""
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [server.host]
    res.port = server.port

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = res.resolve(name.decode().rstrip("."), "TXT")
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    head = data.split(b"\r\n\r\n", 1)[0].lower()
    count = head.count(b"\r\ndkim-signature:") + head.startswith(b"dkim-signature:")
    return [bool(dkim.DKIM(data).verify(idx=i, dnsfunc=dnsfunc)) for i in range(count)]
