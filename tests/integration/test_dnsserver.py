"""The loopback DnsServer itself, queried with plain dnspython over UDP and TCP."""

from __future__ import annotations

import subprocess
import sys

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest

from relay.testing.dnsserver import DnsServer

ZONE = {"example.com": [("MX", "10 mx.example.com", 120), ("NS", "ns.example.com", 300)],
        "mx.example.com": [("A", "127.0.0.2", 60)],
        "www.example.com": [("CNAME", "mx.example.com", 30)],
        "deep.sub.example.com": [("A", "127.0.0.4", 60)]}


def ask(server: DnsServer, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=server.port, timeout=2)
    return dns.query.udp(q, "127.0.0.1", port=server.port, timeout=2)


def test_answers_over_udp_and_tcp() -> None:
    with DnsServer(ZONE) as server:
        for tcp in (False, True):
            r = ask(server, "example.com", "MX", tcp=tcp)
            assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
            assert r.answer[0].ttl == 120
            assert r.answer[0][0].to_text() == "10 mx.example.com."
        assert server.queries == [("example.com", "MX"), ("example.com", "MX")]
        assert server.address == ("127.0.0.1", server.port)
        assert server.nameserver == f"127.0.0.1:{server.port}"


def test_nxdomain_nodata_and_empty_non_terminal() -> None:
    with DnsServer(ZONE, negative_ttl=42) as server:
        r = ask(server, "nope.example.com", "A")
        assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == dns.rdatatype.SOA
        assert r.authority[0][0].minimum == 42
        r = ask(server, "mx.example.com", "MX")  # exists with another type
        assert r.rcode() == dns.rcode.NOERROR and not r.answer
        assert r.authority[0].rdtype == dns.rdatatype.SOA
        r = ask(server, "sub.example.com", "A")  # only a name below it exists
        assert r.rcode() == dns.rcode.NOERROR and not r.answer


def test_cname_is_followed() -> None:
    with DnsServer(ZONE) as server:
        r = ask(server, "www.example.com", "A")
        assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]


def test_runtime_changes_and_failures() -> None:
    with DnsServer() as server:
        assert ask(server, "late.test", "A").rcode() == dns.rcode.NXDOMAIN
        server.set("late.test", "A", ["127.0.0.7", "127.0.0.8"], ttl=5)
        assert sorted(rd.to_text() for rd in ask(server, "late.test", "A").answer[0]) == [
            "127.0.0.7", "127.0.0.8"]
        server.add("late.test", "TXT", "hello")
        server.fail("late.test", "SERVFAIL", rdtype="A")
        assert ask(server, "late.test", "A").rcode() == dns.rcode.SERVFAIL
        assert ask(server, "late.test", "TXT").rcode() == dns.rcode.NOERROR
        server.fail("late.test", "REFUSED")
        assert ask(server, "late.test", "TXT").rcode() == dns.rcode.REFUSED
        server.fail("late.test", "TIMEOUT")
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query("late.test", "TXT"), "127.0.0.1",
                          port=server.port, timeout=0.2)
        server.heal()
        server.remove("late.test", "A")
        assert ask(server, "late.test", "TXT").answer[0][0].to_text() == '"hello"'
        assert not ask(server, "late.test", "A").answer
        server.remove("late.test")
        assert ask(server, "late.test", "TXT").rcode() == dns.rcode.NXDOMAIN
        assert server.query_count("late.test") == 9
        with pytest.raises(ValueError):
            server.fail("late.test", "BOGUS")  # type: ignore[arg-type]


def test_long_txt_is_split_and_truncated_over_udp() -> None:
    with DnsServer({"k.test": [("TXT", "y" * 600, 60)]}) as server:
        udp = ask(server, "k.test", "TXT")
        assert udp.flags & dns.flags.TC and not udp.answer
        tcp = ask(server, "k.test", "TXT", tcp=True)
        assert [len(s) for s in tcp.answer[0][0].strings] == [255, 255, 90]


def test_accepts_a_dnspython_zone() -> None:
    text = "@ 60 IN SOA ns hm 1 2 3 4 5\n@ 60 IN NS ns\n@ 60 IN MX 0 .\nns 60 IN A 127.0.0.1\n"
    zone = dns.zone.from_text(text, origin="null.test")
    with DnsServer(zone) as server:
        assert ask(server, "null.test", "MX").answer[0][0].to_text() == "0 ."
        assert ask(server, "null.test", "NS").answer[0][0].to_text() == "ns.null.test."
        nx = ask(server, "x.null.test", "A")
        assert nx.authority[0].name.to_text() == "null.test."  # the zone's own SOA


def test_another_process_can_query_it() -> None:
    with DnsServer(ZONE) as server:
        code = ("import dns.resolver, sys; r = dns.resolver.Resolver(configure=False); "
                f"r.nameservers = ['127.0.0.1']; r.port = {server.port}; "
                "print(r.resolve('mx.example.com', 'A')[0])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=20, check=True)
        assert out.stdout.strip() == "127.0.0.2"
