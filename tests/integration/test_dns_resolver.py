"""DnsResolver against the real loopback DnsServer: answers, TTL cache, failures."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.clock import FakeClock
from relay.config import loads
from relay.dns.answers import MxRecord, Status
from relay.dns.resolver import DnsResolver
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers

DKIM_KEY = "v=DKIM1; k=rsa; p=" + "A" * 400  # longer than one 255-byte string


@pytest.fixture
def ns(dns_server: DnsServers) -> DnsServer:
    zone = {
        "example.com": [("MX", "10 mx1.example.com", 300), ("MX", "20 mx2.example.com", 300),
                        ("TXT", "v=spf1 -all", 300)],
        "mx1.example.com": [("A", "127.0.0.2", 60), ("AAAA", "::1", 60)],
        "mx2.example.com": [("A", "127.0.0.3", 3600)],
        "v6only.example.com": [("AAAA", "::2", 60)],
        "sel._domainkey.example.com": [("TXT", DKIM_KEY, 300)],
        "alias.example.com": [("CNAME", "mx1.example.com", 300)],
    }
    return dns_server(zone, negative_ttl=600)


def resolver(ns: DnsServer, clock: FakeClock | None = None, *, timeout: float = 0.3,
             max_cache_ttl: float = 3600.0, negative_cache_ttl: float = 300.0) -> DnsResolver:
    return DnsResolver([("127.0.0.1", ns.port)], clock=clock or FakeClock(), timeout=timeout,
                       max_cache_ttl=max_cache_ttl, negative_cache_ttl=negative_cache_ttl)


async def test_mx_addresses_txt(ns: DnsServer) -> None:
    r = resolver(ns)
    mx = await r.mx("EXAMPLE.com.")
    assert mx.status is Status.OK
    assert sorted(mx.records) == [MxRecord(10, "mx1.example.com"), MxRecord(20, "mx2.example.com")]
    assert (await r.addresses("mx1.example.com")).records == ("127.0.0.2", "::1")
    assert (await r.addresses("v6only.example.com")).records == ("::2",)
    assert (await r.addresses("alias.example.com")).records == ("127.0.0.2", "::1")  # CNAME
    assert (await r.txt("example.com")).records == ("v=spf1 -all",)


async def test_long_txt_is_joined_and_fetched_over_tcp(ns: DnsServer) -> None:
    name = "big.example.com"
    ns.set(name, "TXT", "x" * 700)  # too big for a 512-byte UDP answer → TC → TCP
    r = resolver(ns)
    assert (await r.txt(name)).records == ("x" * 700,)
    assert (await r.txt("sel._domainkey.example.com")).records == (DKIM_KEY,)
    assert ns.query_count(name, "TXT") == 2  # UDP (truncated), then TCP


async def test_no_answer_is_empty_and_nxdomain_is_permanent(ns: DnsServer) -> None:
    r = resolver(ns)
    nodata = await r.mx("mx1.example.com")
    assert nodata.status is Status.OK and nodata.records == ()
    assert (await r.txt("mx2.example.com")).empty
    missing = await r.mx("nope.example.com")
    assert missing.permanent and "does not exist" in missing.reason
    assert (await r.addresses("nope.example.com")).permanent


async def test_answer_is_cached_until_its_ttl(ns: DnsServer) -> None:
    clock = FakeClock()
    r = resolver(ns, clock)
    for _ in range(3):
        assert (await r.addresses("mx1.example.com")).records == ("127.0.0.2", "::1")
    assert ns.query_count("mx1.example.com", "A") == 1
    clock.advance(59)
    await r.addresses("mx1.example.com")
    assert ns.query_count("mx1.example.com", "A") == 1
    ns.set("mx1.example.com", "A", ["127.0.0.9"], ttl=60)
    clock.advance(1)  # TTL 60 reached
    assert (await r.addresses("mx1.example.com")).records == ("127.0.0.9", "::1")
    assert ns.query_count("mx1.example.com", "A") == 2


async def test_ttl_is_capped_by_max_cache_ttl(ns: DnsServer) -> None:
    clock = FakeClock()
    r = resolver(ns, clock, max_cache_ttl=10)
    await r.addresses("mx2.example.com")  # TTL 3600
    clock.advance(9)
    await r.addresses("mx2.example.com")
    assert ns.query_count("mx2.example.com", "A") == 1
    clock.advance(1)
    await r.addresses("mx2.example.com")
    assert ns.query_count("mx2.example.com", "A") == 2


async def test_negative_answers_are_cached_for_negative_cache_ttl(ns: DnsServer) -> None:
    clock = FakeClock()
    r = resolver(ns, clock, negative_cache_ttl=30)  # the SOA says 600: the config caps it
    for _ in range(2):
        assert (await r.mx("nope.example.com")).permanent
        assert (await r.mx("mx1.example.com")).records == ()  # NODATA
    assert ns.query_count("nope.example.com", "MX") == 1
    assert ns.query_count("mx1.example.com", "MX") == 1
    ns.set("nope.example.com", "MX", "5 mx1.example.com")
    clock.advance(29)
    assert (await r.mx("nope.example.com")).permanent
    clock.advance(1)
    assert (await r.mx("nope.example.com")).records == (MxRecord(5, "mx1.example.com"),)
    assert ns.query_count("nope.example.com", "MX") == 2


async def test_negative_ttl_follows_a_shorter_soa() -> None:
    clock = FakeClock()
    with DnsServer({"a.test": [("A", "127.0.0.5", 300)]}, negative_ttl=5) as server:
        r = resolver(server, clock, negative_cache_ttl=300)
        await r.mx("b.test")
        await r.mx("a.test")
        clock.advance(5)
        await r.mx("b.test")
        await r.mx("a.test")
        assert server.query_count("b.test", "MX") == 2
        assert server.query_count("a.test", "MX") == 2


@pytest.mark.parametrize("mode", ["SERVFAIL", "REFUSED"])
async def test_server_failure_is_temporary_and_not_cached(ns: DnsServer, mode: str) -> None:
    r = resolver(ns)
    ns.fail("example.com", mode)  # type: ignore[arg-type]
    first = await r.mx("example.com")
    assert first.temporary and mode in first.reason
    ns.fail("example.com", None)
    assert len((await r.mx("example.com")).records) == 2  # asked again: not cached


async def test_timeout_is_temporary(ns: DnsServer) -> None:
    ns.fail("example.com", "TIMEOUT", rdtype="MX")
    r = resolver(ns, timeout=0.3)
    started = time.monotonic()
    result = await r.mx("example.com")
    assert result.temporary and "timed out" in result.reason
    assert time.monotonic() - started < 2.0
    assert (await r.txt("example.com")).ok  # only MX was silenced


async def test_cached_answer_survives_a_later_server_failure(ns: DnsServer) -> None:
    r = resolver(ns)
    await r.mx("example.com")
    ns.fail("example.com", "SERVFAIL")
    assert len((await r.mx("example.com")).records) == 2


async def test_concurrent_lookups_share_one_query(ns: DnsServer) -> None:
    r = resolver(ns)
    results = await asyncio.gather(*(r.mx("example.com") for _ in range(20)))
    assert all(len(x.records) == 2 for x in results)
    assert ns.query_count("example.com", "MX") == 1


async def test_from_config_with_host_port_nameserver(ns: DnsServer) -> None:
    cfg = loads(f'[dns]\nnameservers = ["{ns.nameserver}"]\ntimeout = "300ms"\n'
                'max_cache_ttl = "1m"\nnegative_cache_ttl = "10s"\n')
    r = DnsResolver.from_config(cfg.dns, FakeClock())
    assert r.nameservers == [("127.0.0.1", ns.port)]
    assert len((await r.mx("example.com")).records) == 2


@pytest.mark.parametrize(("entry", "expected"), [
    ("127.0.0.1", ("127.0.0.1", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("[::1]:5353", ("::1", 5353)),
    ("::1", ("::1", 53)),
])
def test_nameserver_entries(entry: str, expected: tuple[str, int]) -> None:
    cfg = loads(f'[dns]\nnameservers = ["{entry}"]\n')
    assert DnsResolver.from_config(cfg.dns, FakeClock()).nameservers == [expected]


async def test_invalid_name_is_permanent_without_a_query(ns: DnsServer) -> None:
    r = resolver(ns)
    assert (await r.mx("a..b")).permanent
    assert (await r.mx("x" * 64 + ".com")).permanent
    assert ns.queries == []
