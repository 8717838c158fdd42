"""Open and click tracking through the real delivery path.

A message with text and HTML parts is submitted through the real submitter (the
configuration set and X-SES-TRACKING headers read and removed), queued in the real LMDB
spool and delivered by the real scheduler and client to a sink on 127.0.0.2; the DKIM keys
are published by the loopback DNS server. What the sink receives: links rewritten only in
the HTML part to this recipient's signed redirects, the open pixel once, the text part
byte for byte, and DKIM signatures over the rewritten copy that dkimpy verifies.
"""

from __future__ import annotations

import email
import email.policy
import random
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest

from relay.clock import FakeClock
from relay.config import from_dict
from relay.dkim.keys import KeyStore
from relay.queue.ops import NewMessage
from relay.testing.dkimcheck import dkimpy_verify
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.harness import Harness as AppGraph
from relay.testing.sink import Received, Sink
from relay.tracking.rewrite import Link, links_of
from relay.tracking.token import KEY_LABEL, Tokens, TrackingToken
from relay.wiring import Overrides

TEXT = "Hello,\n\nthe sale: https://shop.example/sale (text is never rewritten)\n"
HTML = ('<html><body><p>Grüße! <a href="https://shop.example/sale?a=1&amp;b=2" '
        'ses:tags="campaign:spring">Sale</a> <a href="http://blog.example/post">Blog</a> '
        '<a href="mailto:help@example.com">help</a> '
        '<a ses:no-track href="https://example.com/unsubscribe">unsubscribe</a></p>'
        '</body></html>\n')
ORIGINAL_LINKS = [Link(0, "https://shop.example/sale?a=1&b=2", (("campaign", "spring"),)),
                  Link(1, "http://blog.example/post")]


def message(set_name: str, tracking: str | None = None) -> bytes:
    m = EmailMessage(policy=email.policy.SMTP)
    m["From"] = "News <news@example.com>"
    m["To"] = "reader@dest.test"
    m["Subject"] = "Weekly"
    m["Message-ID"] = "<weekly@example.com>"
    m["X-SES-CONFIGURATION-SET"] = set_name
    if tracking is not None:
        m["X-SES-TRACKING"] = tracking
    m.set_content(TEXT)
    m.add_alternative(HTML, subtype="html", cte="quoted-printable")
    return m.as_bytes()


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    return dns_server({
        "dest.test": [("MX", "10 mx.dest.test")],
        "mx.dest.test": [("A", "127.0.0.2")],
        "bounce.example.com": [("MX", "10 relay.test")],
    })


def publish(server: DnsServer, keys: KeyStore, domain: str) -> None:
    state = keys.get(domain)
    assert state is not None
    for gen in state.generations:
        for key in gen.keys:
            server.set(f"{key.selector}._domainkey.{domain}", "TXT", [key.record])


class Harness(AppGraph):
    def __init__(self, tmp: Path, dns: DnsServer, sink: Sink) -> None:
        super().__init__(from_dict({
            "server": {"hostname": "relay.test", "state_dir": str(tmp),
                       "return_path_domain": "rp.relay.test"},
            "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
            "delivery": {"port": sink.port, "retry_jitter": 0.0},
            "identity": [{"domain": "example.com", "mail_from": "bounce.example.com"}],
            "configuration_set": [
                {"name": "news", "list_unsubscribe": True,
                 "tracking": {"open": True, "click": True, "domain": "track.example.com"}},
                {"name": "optional", "tracking": {
                    "open": True, "click": True, "domain": "t.example.com",
                    "https_policy": "optional"}},
            ],
        }), FakeClock(), Overrides(rng=random.Random(3)))
        self.sink = sink
        self.dns_server = dns
        self.tokens = Tokens(self.verp.derived_key(KEY_LABEL))

    async def submit(self, body: bytes, rcpts: list[str],
                     sender: str = "news@example.com") -> tuple[str, bytes]:
        """Through the submitter; the queue id and the body as stored."""
        mid = await self.submitter.submit(NewMessage(
            sender=sender, recipients=rcpts, body=body,
            headers={"From": "news@example.com"}))
        stored = self.store.body(mid)
        assert stored is not None
        return mid, stored


@pytest.fixture
async def harness(tmp_path: Path, dns_server: DnsServer) -> AsyncIterator[Harness]:
    with Sink("127.0.0.2", 0) as sink:
        h = Harness(tmp_path, dns_server, sink)
        h.keys.keygen("example.com", "s1", "both")
        publish(dns_server, h.keys, "example.com")
        await h.start()
        yield h
        await h.close()


def parts(data: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return {p.get_content_type(): p.get_content().replace("\r\n", "\n")
            for p in msg.walk() if not p.is_multipart()}


def raw_text_part(data: bytes) -> bytes:
    start = data.index(b"Content-Type: text/plain")
    return data[start:data.index(b"\r\n--", start)]


def by_recipient(h: Harness) -> dict[str, Received]:
    return {m.rcpt_tos[0]: m for m in h.sink.messages}


async def test_each_copy_has_its_own_redirects_and_pixel_under_a_valid_signature(
        harness: Harness) -> None:
    body = message("news")
    mid, stored = await harness.submit(body, ["a@dest.test", "b@dest.test"])
    assert b"X-SES-" not in stored  # the set and tracking headers never leave relay
    assert links_of(stored) == ORIGINAL_LINKS
    await harness.deliver_until()
    got = by_recipient(harness)
    assert sorted(got) == ["a@dest.test", "b@dest.test"]
    seen_tokens: set[str] = set()
    for index, rcpt in enumerate(["a@dest.test", "b@dest.test"]):
        data = got[rcpt].data
        assert dkimpy_verify(data, harness.dns_server) == [True, True]  # RSA + Ed25519
        assert raw_text_part(data) == raw_text_part(stored)
        assert b"List-Unsubscribe: <" in data  # the unsubscribe path still applies
        content = parts(data)
        assert content["text/plain"] == TEXT
        html = content["text/html"]
        clicks = re.findall(r'href="https://track\.example\.com/t/c/([A-Za-z0-9_-]{36})"',
                            html)
        assert [harness.tokens.verify(t) for t in clicks] == [
            TrackingToken("click", mid, index, 0), TrackingToken("click", mid, index, 1)]
        (pixel,) = re.findall(r'<img src="https://track\.example\.com/t/o/([A-Za-z0-9_-]{36})"'
                              r' width="1" height="1" alt="" style="display:none">', html)
        assert harness.tokens.verify(pixel) == TrackingToken("open", mid, index, 0)
        seen_tokens.update([*clicks, pixel])
        # Apart from the redirects and the pixel, the HTML is the one submitted.
        restored = html
        for token, link in zip(clicks, ORIGINAL_LINKS, strict=True):
            original = {0: 'https://shop.example/sale?a=1&amp;b=2" ses:tags="campaign:spring',
                        1: "http://blog.example/post"}[link.index]
            restored = restored.replace(f"https://track.example.com/t/c/{token}", original)
        restored = re.sub(r'<img src="[^"]*" width="1" height="1" alt="" '
                          r'style="display:none">', "", restored)
        assert restored == HTML
    assert len(seen_tokens) == 6  # nothing shared between the two recipients


async def test_a_changed_copy_no_longer_verifies(harness: Harness) -> None:
    await harness.submit(message("news"), ["a@dest.test"])
    await harness.deliver_until()
    (received,) = harness.sink.messages
    forged = re.sub(rb"t/c/[A-Za-z0-9_-]{36}", b"t/c/" + b"A" * 36, received.data, count=1)
    assert forged != received.data
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkimpy_verify(forged, harness.dns_server)


@pytest.mark.parametrize("override,pixel,redirects", [
    ("none", False, False), ("open", True, False), ("click", False, True),
    ("nonsense", False, False),  # unreadable: consent fails closed
])
async def test_a_message_turns_tracking_off_for_itself(
        harness: Harness, override: str, pixel: bool, redirects: bool) -> None:
    _, stored = await harness.submit(message("news", override), ["a@dest.test"])
    await harness.deliver_until()
    (received,) = harness.sink.messages
    assert b"X-SES-TRACKING" not in stored and b"X-SES-TRACKING" not in received.data
    assert dkimpy_verify(received.data, harness.dns_server) == [True, True]
    html = parts(received.data)["text/html"]
    assert ("/t/o/" in html) is pixel
    assert ("/t/c/" in html) is redirects
    if not pixel and not redirects:
        assert html == HTML


async def test_https_policy_optional_keeps_each_links_scheme(harness: Harness) -> None:
    await harness.submit(message("optional"), ["a@dest.test"])
    await harness.deliver_until()
    (received,) = harness.sink.messages
    assert dkimpy_verify(received.data, harness.dns_server) == [True, True]
    html = parts(received.data)["text/html"]
    assert re.findall(r'href="(https?)://t\.example\.com/t/c/', html) == ["https", "http"]
    assert re.search(r'<img src="http://t\.example\.com/t/o/', html)
    assert b"List-Unsubscribe" not in received.data


async def test_recipients_sharing_a_null_sender_still_get_their_own_copies(
        harness: Harness) -> None:
    """Without a VERP return path to tell them apart, two recipients at one domain would
    share one transaction, and the second would get the first one's tokens."""
    mid, _ = await harness.submit(message("optional"), ["a@dest.test", "b@dest.test"],
                                  sender="")
    await harness.deliver_until()
    got = by_recipient(harness)
    assert sorted(got) == ["a@dest.test", "b@dest.test"]
    assert all(len(m.rcpt_tos) == 1 for m in harness.sink.messages)
    for index, rcpt in enumerate(["a@dest.test", "b@dest.test"]):
        html = parts(got[rcpt].data)["text/html"]
        tokens = re.findall(r"/t/[oc]/([A-Za-z0-9_-]{36})", html)
        assert len(tokens) == 3
        assert {(t.queue_id, t.recipient) for t in map(harness.tokens.verify, tokens)
                if t is not None} == {(mid, index)}
