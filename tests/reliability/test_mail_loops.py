"""Mail that would come back to this host: an MX (or address literal, or next hop) on an
unspecified address (0.0.0.0/8, ::) loops whatever the port, because the kernel connects
it to this host; on port 25 any address of this host (all of 127.0.0.0/8, ::1, the
interface addresses) loops for the routes relay did not choose, as in Postfix. Each is
554 5.4.6 "mail for X loops back to myself", and nothing is connected to. Real loopback
DNS (relay.testing.dnsserver) and a whole in-process RelayApp whose own
listener counts every connection it gets.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

import aiosmtplib
from smtpkit import record_peers

from relay.app import RelayApp
from relay.clock import FakeClock
from relay.config import Delivery, Network, NextHop, from_dict, loads
from relay.delivery.routing import Router, is_local_address
from relay.dns.resolver import DnsResolver
from relay.dns.route import RouteFailure, Target, Targets, is_unspecified, loops_to_self
from relay.events.log import read_events
from relay.identity.store import IdentityStore
from relay.testing.dnsserver import DnsServer
from relay.testing.process import free_port
from relay.testing.wait import wait_for

ZONE = {
    "zero.test": [("MX", "10 mx.zero.test")],
    "mx.zero.test": [("A", "0.0.0.0")],
    "thisnet.test": [("MX", "10 mx.thisnet.test")],
    "mx.thisnet.test": [("A", "0.1.2.3")],
    "six.test": [("MX", "10 mx.six.test")],
    "mx.six.test": [("AAAA", "::")],
    "mapped.test": [("MX", "10 mx.mapped.test")],
    "mx.mapped.test": [("AAAA", "::ffff:0.0.0.0")],
    "implicit-zero.test": [("A", "0.0.0.0")],
    "half.test": [("MX", "10 mx.zero.test"), ("MX", "20 mx.half.test")],
    "mx.half.test": [("A", "127.0.0.3")],
    "loopback.test": [("MX", "10 mx.loopback.test")],
    "mx.loopback.test": [("A", "127.0.0.9"), ("AAAA", "::1")],
}
UNSPECIFIED_DOMAINS = ("zero.test", "thisnet.test", "six.test", "mapped.test",
                       "implicit-zero.test", "[0.0.0.0]", "[ipv6:::]")


def router(ns: DnsServer, port: int, *, routes: dict[str, NextHop] | None = None,
           deny: list[str] | None = None,
           own: set[tuple[str, int]] | None = None) -> Router:
    resolver = DnsResolver([("127.0.0.1", ns.port)], clock=FakeClock(), timeout=0.5,
                           max_cache_ttl=0.0, negative_cache_ttl=0.0)
    cfg = Delivery(port=port, routes=routes or {},
                   deny_networks=[Network(d) for d in deny or []])
    return Router(cfg, resolver, random.Random(1), mta_sts=None, own_addresses=own or set())


def host_address() -> str | None:
    """A non-loopback address of this host (the source toward a TEST-NET address: a UDP
    connect sends nothing), or None on a host without one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            address = str(s.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


def loop(domain: str) -> RouteFailure:
    return RouteFailure(True, 554, "5.4.6", f"mail for {domain} loops back to myself")


# --- the pure decision --------------------------------------------------------------------


def test_unspecified_addresses_loop_on_any_port_even_without_listeners() -> None:
    for address in ("0.0.0.0", "0.255.255.255", "::", "::ffff:0.0.0.0", "::ffff:0.1.2.3"):
        assert is_unspecified(address), address
        assert loops_to_self(address, 2525, own=()), address
    for address in ("127.0.0.1", "::1", "1.0.0.0", "192.0.2.1", "::2", "not-an-ip"):
        assert not is_unspecified(address), address
    # A loopback sink on another port than relay's listeners is not relay itself...
    assert not loops_to_self("127.0.0.9", 2525, own={("127.0.0.1", 2587)},
                             host_on_smtp_port=True)
    # ...but on port 25 every address of this host is, for routes relay did not choose.
    assert loops_to_self("127.0.0.9", 25, own=(), host_on_smtp_port=True)
    assert loops_to_self("::1", 25, own=(), host_on_smtp_port=True)
    assert loops_to_self("198.51.100.7", 25, own=(), local=["198.51.100.7"],
                         host_on_smtp_port=True)
    assert not loops_to_self("198.51.100.7", 25, own=(), host_on_smtp_port=True)
    assert not loops_to_self("127.0.0.9", 25, own=())  # a next hop: the operator's choice


def test_local_address_detection() -> None:
    assert is_local_address("127.0.0.1")
    assert not is_local_address("192.0.2.1")  # TEST-NET-1: never this host
    assert not is_local_address("not-an-ip")
    mine = host_address()
    if mine is not None:
        assert is_local_address(mine)
        assert is_local_address(f"::ffff:{mine}")


# --- Router against the loopback DNS server ------------------------------------------------


async def test_unspecified_mx_or_literal_is_554_loop(ns: DnsServer) -> None:
    r = router(ns, 2525)  # no listener known, not port 25: the address alone decides
    for domain in UNSPECIFIED_DOMAINS:
        assert await r.route(domain) == loop(domain), domain
    # The unspecified MX host is dropped, the other kept.
    assert await r.route("half.test") == Targets([Target("mx.half.test", "127.0.0.3", 2525, 20)])
    # Looping comes before deny_networks: the same answer is a loop, not 4.4.4.
    denied = router(ns, 2525, deny=["0.0.0.0/8", "::/128"])
    assert await denied.route("zero.test") == loop("zero.test")


async def test_unspecified_next_hop_loops_too(ns: DnsServer) -> None:
    for hop in ("0.0.0.0", "::"):
        r = router(ns, 2525, routes={"*": NextHop(hop, 2600)})
        assert await r.route("anything.test") == loop("anything.test"), hop


async def test_any_host_address_on_port_25_is_a_loop(ns: DnsServer) -> None:
    r = router(ns, 25)
    assert await r.route("loopback.test") == loop("loopback.test")  # 127.0.0.9 and ::1
    assert await r.route("[127.0.0.42]") == loop("[127.0.0.42]")
    mine = host_address()
    if mine is not None:
        ns.set("iface.test", "A", mine)
        assert await r.route("iface.test") == loop("iface.test")
    # On another port a loopback MX is a sink like any other (what the test suite uses)...
    assert await router(ns, 2525).route("loopback.test") == Targets(
        [Target("mx.loopback.test", "127.0.0.9", 2525, 10),
         Target("mx.loopback.test", "::1", 2525, 10)])
    # ...and a next hop on port 25 is the operator's choice (a local MTA, a filter).
    hop = router(ns, 25, routes={"*": NextHop("127.0.0.9", 25)})
    assert await hop.route("anything.test") == Targets(
        [Target("127.0.0.9", "127.0.0.9", 25, 0)])


# --- the whole app: an MX on 0.0.0.0 reaches relay itself ---------------------------------


async def test_app_mx_on_unspecified_address_bounces_with_no_copy_back(
        tmp_path: Path, ns: DnsServer) -> None:
    """relay receives on 127.0.0.1:P without AUTH for loopback clients and delivers on
    port P; the recipient's MX is 0.0.0.0, which Linux connects to 127.0.0.1. Every copy
    relay delivered there would come back into its own queue. None may: the recipient
    bounces 5.4.6 and the listener sees only the one submission."""
    port = free_port()
    identities = IdentityStore.in_state_dir(tmp_path)
    # The sender and relay's own return-path domain are verified, so a copy that came
    # back would be accepted and delivered again: a real loop, not one refusal.
    for domain in ("example.com", "relay.test"):
        identities.add(domain)
        identities.set_verified(domain, True)
    cfg = from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
        "listener": [{"address": f"127.0.0.1:{port}", "tls": "none", "auth": "none",
                      "trusted_networks": ["127.0.0.0/8"]}],
        "dns": {"nameservers": [f"127.0.0.1:{ns.port}"], "timeout": "1s"},
        "delivery": {"port": port, "mta_sts": False, "retry_schedule": ["1s"],
                     "connect_timeout": "2s"},
    })
    app = RelayApp(cfg)
    await app.start()
    try:
        peers = record_peers(app)
        data = ("From: app@example.com\r\nTo: user@zero.test\r\nSubject: loop\r\n\r\n"
                "hello\r\n")
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                                   timeout=10) as client:
            await client.sendmail("app@example.com", ["user@zero.test"], data)
        bounces = lambda: [  # noqa: E731
            e for e in read_events(app.events.path) if e["eventType"] == "Bounce"]
        await wait_for("a bounce or a copy back", lambda: bounces() or len(peers) > 1,
                       timeout=8.0)
        assert peers == ["127.0.0.1"]  # the submission only: zero copies came back
        (event,) = bounces()
        (bounced,) = event["bounce"]["bouncedRecipients"]
        assert bounced["status"] == "5.4.6", bounced
        assert "mail for zero.test loops back to myself" in bounced["diagnosticCode"]
    finally:
        await app.stop()


def test_documented_deny_networks_example_covers_unspecified_ranges() -> None:
    """config/relay.toml's recommended deny_networks list is valid and holds 0.0.0.0/8
    and ::/128 (and loopback), so an operator who copies it refuses them too."""
    lines = (Path(__file__).parents[2] / "config" / "relay.toml").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#   deny_networks = ["))
    last = next(i for i in range(first, len(lines)) if lines[i].rstrip().endswith("]"))
    listed = " ".join(line.lstrip("#").strip() for line in lines[first:last + 1])
    nets = [str(n) for n in loads("[delivery]\n" + listed + "\n").delivery.deny_networks]
    for needed in ("0.0.0.0/8", "::/128", "127.0.0.0/8", "::1/128"):
        assert needed in nets, (needed, nets)
