"""`identity verify` checks and DKIM rotation against a real DNS server on loopback.

Time is a FakeClock: the 90-day rotation schedule and the grace period run instantly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.config import Identity, from_dict
from relay.dkim.keys import KeyStore
from relay.dkim.sign import Signer, verify_with
from relay.dns.resolver import DnsResolver
from relay.identity.check import check_identity, rotation_tick
from relay.identity.spf import recommended_record, sending_ips
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers

DAY = 86400.0
BODY = b"From: a@example.com\r\nTo: b@dest.test\r\nSubject: s\r\n\r\nhi\r\n"


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    return dns_server({})


def resolver(server: DnsServer, clock: FakeClock) -> DnsResolver:
    return DnsResolver([(server.host, server.port)], clock=clock, timeout=2.0)


async def verify(server: DnsServer, keys: KeyStore, clock: FakeClock,
                 settings: Identity | None = None) -> object:
    return await check_identity(
        "example.com", resolver=resolver(server, clock), keys=keys, settings=settings,
        hostname="relay.test", default_domain="relay.test", spf_record="v=spf1 a:relay.test -all",
        now=clock.now(), grace=7 * DAY)


def rows(report: object) -> dict[str, str]:
    return {f"{r.check}:{r.name}": r.status for r in report.rows}  # type: ignore[attr-defined]


async def test_verify_reports_missing_records_then_verified(
        tmp_path: Path, dns_server: DnsServer) -> None:
    clock = FakeClock()
    keys = KeyStore(tmp_path, clock)
    gen = keys.keygen("example.com", "s1", "both")
    settings = Identity(domain="example.com", mail_from="bounce.example.com")
    report = await verify(dns_server, keys, clock, settings)
    assert not report.verified  # type: ignore[attr-defined]
    st = rows(report)
    assert st["dkim:s1-rsa._domainkey.example.com"] == "missing"
    assert st["dkim:s1-ed._domainkey.example.com"] == "missing"
    assert st["mail_from_mx:bounce.example.com"] == "missing"
    assert st["mail_from_spf:bounce.example.com"] == "missing"
    assert st["dmarc:_dmarc.example.com"] == "missing"
    assert st["spf_alignment:"] == "warning"
    expected = {r.name: r.expected for r in report.rows}  # type: ignore[attr-defined]
    assert expected["s1-ed._domainkey.example.com"] == gen.keys[1].record
    for key in gen.keys:
        dns_server.set(f"{key.selector}._domainkey.example.com", "TXT", [key.record])
    dns_server.set("bounce.example.com", "MX", ["10 relay.test"])
    dns_server.set("bounce.example.com", "TXT", ["v=spf1 a:relay.test -all"])
    dns_server.set("_dmarc.example.com", "TXT", ["v=DMARC1; p=none"])
    clock.advance(hours=1)
    report = await verify(dns_server, keys, clock, settings)
    assert report.verified  # type: ignore[attr-defined]
    assert set(rows(report).values()) == {"ok"}


async def test_wrong_key_in_dns_is_a_mismatch(tmp_path: Path, dns_server: DnsServer) -> None:
    clock = FakeClock()
    keys = KeyStore(tmp_path, clock)
    keys.keygen("example.com", "s1", "rsa")
    dns_server.set("s1._domainkey.example.com", "TXT", ["v=DKIM1; k=rsa; p=AAAA"])
    report = await verify(dns_server, keys, clock)
    assert rows(report)["dkim:s1._domainkey.example.com"] == "mismatch"
    assert not report.verified  # type: ignore[attr-defined]


async def test_rotation_every_90_days_switches_only_after_the_record_appears(
        tmp_path: Path, dns_server: DnsServer) -> None:
    clock = FakeClock()
    keys = KeyStore(tmp_path, clock)
    first = keys.keygen("example.com", "s1", "both")
    for key in first.keys:
        dns_server.set(f"{key.selector}._domainkey.example.com", "TXT", [key.record])
    signer = Signer(keys)
    res = resolver(dns_server, clock)
    assert await rotation_tick(keys, res, now=clock.now(), rotate_every=90 * DAY) == []
    clock.advance(days=89)
    assert await rotation_tick(keys, res, now=clock.now(), rotate_every=90 * DAY) == []
    clock.advance(days=1)
    done = await rotation_tick(keys, res, now=clock.now(), rotate_every=90 * DAY)
    assert len(done) == 1 and "rotation started" in done[0]
    state = keys.get("example.com")
    assert state is not None and state.pending is not None and state.active is not None
    assert state.active.name == "s1"
    assert b"s=s1-" in signer.signature("m1", BODY)  # still the old selector
    clock.advance(days=3)
    await rotation_tick(keys, res, now=clock.now(), rotate_every=90 * DAY)
    assert keys.get("example.com").active.name == "s1"  # type: ignore[union-attr]
    new = state.pending
    for key in new.keys:  # the operator publishes the new record
        dns_server.set(f"{key.selector}._domainkey.example.com", "TXT", [key.record])
    clock.advance(hours=1)  # past the negative-cache TTL
    done = await rotation_tick(keys, res, now=clock.now(), rotate_every=90 * DAY)
    assert done == [f"example.com: switched to selector {new.name}"]
    sig = signer.signature("m2", BODY)
    assert f"s={new.name}-".encode() in sig
    records = {f"{k.selector}._domainkey.example.com": k.record for k in new.keys}
    assert verify_with(sig + BODY, records) == ["example.com", "example.com"]
    # The old record: kept during the grace period, then reported safe to remove.
    report = await verify(dns_server, keys, clock)
    assert rows(report)["dkim:s1-rsa._domainkey.example.com"] == "ok"
    clock.advance(days=8)
    report = await verify(dns_server, keys, clock)
    assert rows(report)["dkim:s1-rsa._domainkey.example.com"] == "remove"
    assert report.verified  # type: ignore[attr-defined]


async def test_identity_verify_switches_a_published_pending_selector(
        tmp_path: Path, dns_server: DnsServer) -> None:
    clock = FakeClock()
    keys = KeyStore(tmp_path, clock)
    first = keys.keygen("example.com", "s1", "ed25519")
    nxt = keys.rotate("example.com", "s2")
    for key in [*first.keys, *nxt.keys]:
        dns_server.set(f"{key.selector}._domainkey.example.com", "TXT", [key.record])
    report = await verify(dns_server, keys, clock)
    assert report.switched_to == "s2"  # type: ignore[attr-defined]
    assert keys.get("example.com").active.name == "s2"  # type: ignore[union-attr]


# ------------------------------------------------------------------ SPF for MAIL FROM


async def spf_verify(server: DnsServer, keys: KeyStore, clock: FakeClock,
                     ips: list[str]) -> dict[str, object]:
    settings = Identity(domain="example.com", mail_from="bounce.example.com")
    report = await check_identity(
        "example.com", resolver=resolver(server, clock), keys=keys, settings=settings,
        hostname="relay.test", default_domain="relay.test",
        spf_record=recommended_record(ips, "relay.test"), now=clock.now(), grace=7 * DAY,
        sending_ips=ips)
    clock.advance(hours=1)  # past the resolver's caches for the next call
    (row,) = [r for r in report.rows if r.check == "mail_from_spf"]
    return row.__dict__


def test_recommended_spf_lists_the_pool_ips_or_the_hostname() -> None:
    cfg = from_dict({"server": {"hostname": "relay.test"},
                     "delivery": {"source_address": "192.0.2.99"},
                     "pool": [{"name": "p1", "ips": ["192.0.2.10", "2001:db8::10"]},
                              {"name": "p2", "ips": [{"address": "192.0.2.11"}]}]})
    ips = sending_ips(cfg)
    assert ips == ["192.0.2.10", "2001:db8::10", "192.0.2.11", "192.0.2.99"]
    assert recommended_record(ips, "relay.test") == (
        "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 ip4:192.0.2.11 ip4:192.0.2.99 -all")
    assert recommended_record([], "relay.test") == "v=spf1 a:relay.test ~all"


async def test_verify_reports_whether_published_spf_covers_the_sending_ips(
        tmp_path: Path, dns_server: DnsServer) -> None:
    clock = FakeClock()
    keys = KeyStore(tmp_path, clock)
    keys.keygen("example.com", "s1", "rsa")
    ips = ["192.0.2.10", "2001:db8::10"]
    row = await spf_verify(dns_server, keys, clock, ips)
    assert row["status"] == "missing"
    assert row["expected"] == "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all"
    # Only the IPv4 address is covered: a mismatch naming the other one.
    dns_server.set("bounce.example.com", "TXT", ["v=spf1 ip4:192.0.2.0/24 -all"])
    row = await spf_verify(dns_server, keys, clock, ips)
    assert row["status"] == "mismatch"
    assert "2001:db8::10 (fail)" in str(row["note"]) and "192.0.2.10 (" not in str(row["note"])
    # Through include: and a:/mx mechanisms (DNS-querying terms).
    dns_server.set("bounce.example.com", "TXT", ["v=spf1 include:_spf.example.com ~all"])
    dns_server.set("_spf.example.com", "TXT", ["v=spf1 a:out.example.com/24 mx -all"])
    dns_server.set("out.example.com", "A", ["192.0.2.200"])
    dns_server.set("_spf.example.com", "MX", ["10 mx6.example.com"])
    dns_server.set("mx6.example.com", "AAAA", ["2001:db8::10"])
    row = await spf_verify(dns_server, keys, clock, ips)
    assert row["status"] == "ok", row
    assert "192.0.2.10" in str(row["note"]) and "2001:db8::10" in str(row["note"])
    # A softfail for one IP is not coverage.
    dns_server.set("bounce.example.com", "TXT", ["v=spf1 ip6:2001:db8::/32 ~all"])
    row = await spf_verify(dns_server, keys, clock, ips)
    assert row["status"] == "mismatch" and "192.0.2.10 (softfail)" in str(row["note"])


async def test_spf_coverage_without_pools_uses_the_hostname_addresses(
        tmp_path: Path, dns_server: DnsServer) -> None:
    clock = FakeClock()
    keys = KeyStore(tmp_path, clock)
    keys.keygen("example.com", "s1", "rsa")
    dns_server.set("relay.test", "A", ["198.51.100.7"])
    dns_server.set("bounce.example.com", "TXT", ["v=spf1 a:relay.test ~all"])
    row = await spf_verify(dns_server, keys, clock, [])
    assert row["status"] == "ok" and "198.51.100.7" in str(row["note"])
    dns_server.set("bounce.example.com", "TXT", ["v=spf1 ip4:203.0.113.1 -all"])
    row = await spf_verify(dns_server, keys, clock, [])
    assert row["status"] == "mismatch" and row["expected"] == "v=spf1 a:relay.test ~all"
