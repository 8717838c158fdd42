"""Pool choice per message, priority lanes, site shaping and warm-up events, at real sinks.

Sinks on 127.0.0.2 (provider "prova", MX of a.test and a2.test) and 127.0.0.3
("provb") record the peer address of each message; relay's source IPs are
127.0.0.10/.11 (pool "dedicated", warming) and 127.0.0.12 (pool "shared",
warm). The scheduler, shaper and gate are wired as relay/app.py wires them
(relay/warmup/lanes.py picks pool and lane). Time is a FakeClock; ordering
tests use one connection per destination, so the order is the lanes' order.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.smtp import Envelope

from relay.admin.api import AdminContext, make_app
from relay.admin.tokens import TokenStore
from relay.cli import main
from relay.clock import FakeClock
from relay.config import Config, from_dict
from relay.events.log import read_events
from relay.queue.ops import NewMessage
from relay.testing.dnsserver import DnsServer
from relay.testing.sink import Rules, Sink
from relay.testing.warmup import DeliveryHarness, Started, provider_dns, provider_sinks

START = 1_790_035_200.0 + 9 * 3600   # 2026-09-22 09:00 UTC
DAY_ONE = dt.datetime.fromtimestamp(START, dt.UTC).date().isoformat()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with provider_dns() as server:
        yield server


@pytest.fixture
def sinks() -> Iterator[tuple[Sink, Sink]]:
    with provider_sinks() as pair:
        yield pair


def settings(tmp: Path, dns_port: int, sink_port: int, *, caps: list[int],
             overflow: str = "defer", per_destination: int = 10,
             prova: dict[str, Any] | None = None,
             extra_sets: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {
        "server": {"hostname": "relay.test", "state_dir": str(tmp)},
        "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "2s"},
        "delivery": {"port": sink_port, "pool": "dedicated", "retry_jitter": 0.0,
                     "max_connections_per_destination": per_destination},
        "warmup": {"pacing": "none"},
        "warmup_plan": [{"name": "tiny", "caps": caps}],
        "provider": [{"name": "prova", "mx": ["mx.prova.test"], **(prova or {})},
                     {"name": "provb", "mx": ["mx.provb.test"]}],
        "pool": [
            {"name": "dedicated", "warmup_plan": "tiny", "warmup_start": DAY_ONE,
             "overflow": overflow, "ips": ["127.0.0.10", "127.0.0.11"]},
            {"name": "shared", "ips": ["127.0.0.12"]},
        ],
        "configuration_set": [
            {"name": "receipts", "pool": "shared", "priority": "transactional"},
            {"name": "alerts", "priority": "transactional"},
            {"name": "newsletter"},
            {"name": "engaged", "engaged": True},
            *extra_sets,
        ],
    }


class Harness(DeliveryHarness):
    """The delivery half of relay/app.py: scheduler → shaper → client, lanes wired in."""

    def __init__(self, tmp: Path, settings: dict[str, Any]) -> None:
        cfg: Config = from_dict(settings)
        super().__init__(tmp, cfg, FakeClock(START), cfg.state_path / cfg.events.log)

    async def submit(self, rcpt: str, *, cs: str = "", user: str = "",
                     tags: dict[str, list[str]] | None = None) -> None:
        await self.store.submit_record(NewMessage(
            sender="app@example.com", recipients=[rcpt], body=b"Subject: hi\r\n\r\nhi\r\n",
            auth_user=user, configuration_set=cs, tags=tags or {}))


@pytest.fixture
async def make(tmp_path: Path, dns_server: DnsServer, sinks: tuple[Sink, Sink]) -> Any:
    started: Started[Harness] = Started()

    async def factory(**kw: Any) -> Harness:
        return await started.start(
            Harness(tmp_path, settings(tmp_path, dns_server.port, sinks[0].port, **kw)))

    yield factory
    await started.close()


def by_rcpt(*sinks: Sink) -> dict[str, str]:
    return {m.rcpt_tos[0]: m.peer for s in sinks for m in s.messages}


async def test_pool_per_configuration_set_and_credential(make: Any,
                                                        sinks: tuple[Sink, Sink]) -> None:
    a, b = sinks
    h = await make(caps=[100])
    h.users.add("app", "pw-app-1234", pool="shared")
    h.users.add("other", "pw-other-1234")
    await h.submit("r1@a.test", cs="receipts")             # set's pool: shared
    await h.submit("n1@a.test", cs="newsletter")           # set names none: delivery.pool
    await h.submit("c1@b.test", user="app")                # credential's default pool
    await h.submit("c2@b.test", user="app", cs="alerts")   # set names none: credential's
    await h.submit("o1@b.test", user="other")              # no choice: delivery.pool
    await h.run_until(START + 60)
    got = by_rcpt(a, b)
    assert got["r1@a.test"] == "127.0.0.12"
    assert got["c1@b.test"] == "127.0.0.12"
    assert got["c2@b.test"] == "127.0.0.12"
    assert got["n1@a.test"] in ("127.0.0.10", "127.0.0.11")
    assert got["o1@b.test"] in ("127.0.0.10", "127.0.0.11")
    # The dedicated pool's counters saw exactly the two messages it sent.
    status = {s["ip"]: s for s in h.shaped.gate.status(h.clock.now())}
    assert status["127.0.0.10"]["sent_today"] + status["127.0.0.11"]["sent_today"] == 2


async def test_cold_ip_cap_goes_to_transactional_then_engaged_first(
        make: Any, sinks: tuple[Sink, Sink]) -> None:
    """Six bulk messages are queued first, then one transactional and two engaged ones;
    day 1 allows 3 per IP (6). One connection per destination: the ready queue's order
    decides who gets the cap. With a FIFO queue the bulk six would take all of it."""
    a, _ = sinks
    h = await make(caps=[3, 5], per_destination=1)
    for i in range(6):
        await h.submit(f"bulk{i}@a.test", cs="newsletter")
    h.clock.set(START + 1)
    await h.submit("eng0@a.test", tags={"engagement": ["high"]})
    await h.submit("eng1@a.test", cs="engaged")
    await h.submit("tx0@a.test", cs="alerts")
    h.clock.set(START + 2)
    await h.run_until(START + 60)
    sent = [m.rcpt_tos[0] for m in a.messages]
    assert len(sent) == 6
    assert sent[0] == "tx0@a.test"                    # transactional first
    assert set(sent[1:3]) == {"eng0@a.test", "eng1@a.test"}
    assert all(r.startswith("bulk") for r in sent[3:])
    assert Counter(m.peer for m in a.messages) == {"127.0.0.10": 3, "127.0.0.11": 3}
    # The three bulk messages left over wait for day 2.
    assert h.store.message_count() == 3


TRACKED = (b"From: app@example.com\r\nSubject: news\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n"
           b'<html><body><a href="https://shop.example/sale">Sale</a></body></html>\r\n')
TOKEN = re.compile(rb"https://track\.example\.com(/t/[oc]/[A-Za-z0-9_-]{36})")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


async def test_recipients_who_opened_or_clicked_go_first_on_a_cold_ip(
        make: Any, sinks: tuple[Sink, Sink], tmp_path: Path) -> None:
    """Day 1: three tracked newsletters; fan0 opens, fan1 clicks (through the admin
    server's public routes on a real socket), a scanner clicks scan0's link (flagged
    automated). Day 2 allows 2 per IP (4): six bulk messages are queued first, then one
    each to fan0, fan1 and scan0. The two engaged readers' mail goes first; scan0's
    waits behind the bulk mail (a machine's click is not engagement)."""
    a, _ = sinks
    h = await make(caps=[3, 2], per_destination=1, extra_sets=(
        {"name": "tracked", "tracking": {"open": True, "click": True,
                                         "domain": "track.example.com"}},))
    for rcpt in ("fan0@a.test", "fan1@a.test", "scan0@a.test"):
        await h.store.submit_record(NewMessage(
            sender="app@example.com", recipients=[rcpt], body=TRACKED,
            configuration_set="tracked"))
    await h.run_until(START + 60)
    urls = {m.rcpt_tos[0]: [u.decode() for u in TOKEN.findall(m.data)] for m in a.messages}
    assert sorted(urls) == ["fan0@a.test", "fan1@a.test", "scan0@a.test"]
    h.clock.set(START + 3600)   # an hour after delivery: no "right after delivery" rule
    ctx = AdminContext(config=h.parts.config.get, store=h.store, users=h.users,
                       tokens=TokenStore.in_state_dir(tmp_path), events=h.events,
                       metrics=h.parts.metrics, clock=h.clock, verp=h.verp,
                       tracked_links=h.parts.tracked_links,
                       engagement=h.parts.engagement)
    runner = web.AppRunner(make_app(ctx))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hits = [("fan0@a.test", "/t/o/", BROWSER), ("fan1@a.test", "/t/c/", BROWSER),
            ("scan0@a.test", "/t/c/", "Mozilla/5.0 (compatible; Barracuda Sentinel)")]
    try:
        async with aiohttp.ClientSession() as http:
            for rcpt, kind, agent in hits:
                path = next(u for u in urls[rcpt] if u.startswith(kind))
                async with http.get(f"http://127.0.0.1:{port}{path}", allow_redirects=False,
                                    headers={"User-Agent": agent}) as resp:
                    assert resp.status in (200, 302), (rcpt, resp.status)
    finally:
        await runner.cleanup()
    await h.store.write(lambda txn: None)  # after the hits' writes: they are committed
    engagement = h.parts.engagement
    assert engagement is not None
    assert engagement.last("fan0@a.test") == START + 3600
    assert engagement.last("fan1@a.test") == START + 3600
    assert engagement.last("scan0@a.test") is None

    day2 = START + 86400
    h.clock.set(day2)
    for i in range(6):
        await h.submit(f"bulk{i}@a.test", cs="newsletter")
    h.clock.set(day2 + 1)
    for rcpt in ("scan0@a.test", "fan0@a.test", "fan1@a.test"):
        await h.submit(rcpt, cs="newsletter")
    h.clock.set(day2 + 2)
    await h.run_until(day2 + 60)
    sent = [m.rcpt_tos[0] for m in a.messages][3:]
    assert len(sent) == 4
    assert set(sent[:2]) == {"fan0@a.test", "fan1@a.test"}
    assert all(r.startswith("bulk") for r in sent[2:])


class InFlight:
    """A sink policy that observes how many transactions are under way at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, stage: str, arg: str, envelope: Envelope) -> str | None:
        with self._lock:
            if stage == "mail":
                self.now += 1
                self.peak = max(self.peak, self.now)
            elif stage == "data":   # called after the delay, just before the reply
                self.now -= 1
        return None


async def test_site_max_connections_across_source_ips(make: Any,
                                                     sinks: tuple[Sink, Sink]) -> None:
    a, _ = sinks
    h = await make(caps=[1000], prova={"max_connections": 2})
    policy = InFlight(delay=0.15)
    a.policy = policy
    for i in range(5):
        await h.submit(f"u{i}@a.test")
        await h.submit(f"v{i}@a2.test")
    await h.run_until(START + 60)
    assert a.message_count == 10
    assert {m.peer for m in a.messages} == {"127.0.0.10", "127.0.0.11"}
    assert policy.peak == 2                                  # reached, never passed
    assert 0 < h.sender._site_open["prova"] <= 2             # open, idle ones included


async def test_site_messages_per_connection(make: Any, sinks: tuple[Sink, Sink]) -> None:
    a, b = sinks
    h = await make(caps=[1000], per_destination=1, prova={"messages_per_connection": 2})
    h.users.add("app", "pw-app-1234", pool="shared")         # one source IP: 127.0.0.12
    for i in range(6):
        await h.submit(f"u{i}@a.test", user="app")
        await h.submit(f"w{i}@b.test", user="app")
    await h.run_until(START + 60)
    assert a.message_count == 6 and b.message_count == 6
    assert a.connections == 3          # prova: 2 messages per connection
    assert b.connections == 1          # provb: delivery.max_messages_per_connection (100)


async def test_backoff_writes_an_event_and_status_shows_it(
        make: Any, sinks: tuple[Sink, Sink], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = sinks
    h = await make(caps=[3, 5])
    a.policy = Rules(temp_fail_next=1,
                     temp_fail_reply="421 4.7.28 unusual rate of unsolicited mail from your IP")
    await h.submit("u0@a.test")
    await h.run_until(START + 3600)
    assert a.message_count == 1
    await h.close()
    evs = [e for e in read_events(h.events.path) if e["eventType"] == "WarmupBackoff"]
    assert len(evs) == 1
    w: Any = evs[0]["warmup"]
    assert w["provider"] == "prova" and w["ip"] in ("127.0.0.10", "127.0.0.11")
    assert "4.7.28" in w["reason"] and w["action"] == "pause_and_freeze"
    assert w["until"] == "2026-09-22T11:00:00.000Z"           # 4.7.28: two hours
    cfg_path = tmp_path / "relay.toml"
    cfg_path.write_text(_toml(settings(tmp_path, 25, 25, caps=[3, 5])))
    assert main(["warmup", "status", "--config", str(cfg_path), "--json"]) == 0
    rows = {r["ip"]: r for r in json.loads(capsys.readouterr().out)}
    shown = rows[w["ip"]]["events"]
    assert [e["eventType"] for e in shown] == ["WarmupBackoff"]
    assert shown[0]["until"] == w["until"]
    assert main(["warmup", "status", "--config", str(cfg_path)]) == 0
    assert "WarmupBackoff prova until 2026-09-22T11:00:00.000Z" in capsys.readouterr().out


def _toml(d: dict[str, Any]) -> str:
    """Just enough TOML for settings(): tables, arrays of tables, scalars and lists."""
    def value(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    out: list[str] = []
    for k, v in d.items():
        rows = v if isinstance(v, list) else [v]
        for row in rows:
            out.append(f"[[{k}]]" if isinstance(v, list) else f"[{k}]")
            out += [f"{kk} = {value(vv)}" for kk, vv in row.items()]
    return "\n".join(out) + "\n"
