"""bench/dkimaudit.py: a signature that verifies passes; a message whose body or a signed
header changed after signing fails, and so does a valid signature for another domain.
The keys come from the real loopback DNS server."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkimaudit import audit

from relay.testing.dnsserver import DnsServer

MESSAGE = (b"From: Bench <bench@sender.test>\r\nTo: <user@bench.test>\r\n"
           b"Subject: relay bench\r\n\r\nThe quick brown fox\r\n")


def _signed(domain: bytes, dns: DnsServer) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    dns.set(f"sel._domainkey.{domain.decode()}", "TXT",
            [f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"])
    message = MESSAGE.replace(b"sender.test", domain)
    sig = dkim.sign(message, b"sel", domain, pem, canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject"])
    return sig + message


def _store(path: Path, *messages: bytes) -> Path:
    path.write_bytes(b"".join(b"%d\n" % len(m) + m for m in messages))
    return path


def test_a_valid_signature_passes_and_changed_or_foreign_ones_fail(
        tmp_path: Path) -> None:
    with DnsServer() as dns:
        good = _signed(b"sender.test", dns)
        changed = good.replace(b"quick brown", b"quick green")
        foreign = _signed(b"other.test", dns)
        retitled = good.replace(b"Subject: relay bench", b"Subject: relay bench!")
        checked = audit(_store(tmp_path / "m", good, changed, foreign, retitled), dns,
                        "sender.test")
    assert (checked.messages, checked.verified, checked.failed) == (4, 1, 3), checked
    assert checked.failures[0].startswith("message 2: signature 1 of 1 does not verify: "
                                          "body hash mismatch"), checked
    assert checked.failures[1] == "message 3: no rsa-sha256 signature for d=sender.test"
    assert checked.failures[2].startswith("message 4: signature 1 of 1 does not verify")
