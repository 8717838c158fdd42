"""relay/wiring.py's build(): one complete graph, every part given what it needs when it is
made, and nothing set on a part afterwards (relay/app.py only starts what build() made).

The graphs are built from the embedded development config and from a pool/warm-up config,
then started and stopped through relay/testing/harness.py; the parts are checked for being
connected to each other (the same objects, not copies), and one message goes through the
production graph to a loopback DNS server's null-MX domain: a Bounce event, journaled, and a
suppression entry.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from relay.cli import default_config_path
from relay.clock import FakeClock
from relay.config import Config, load
from relay.events.log import read_events
from relay.queue.ops import NewMessage
from relay.suppression.store import SuppressionList
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.harness import Harness
from relay.wiring import Components, Late, LiveConfig, Overrides, build

ROOT = Path(__file__).resolve().parents[2]


def dev_config(state_dir: Path) -> Config:
    cfg = load(default_config_path())
    return msgspec.structs.replace(
        cfg, server=msgspec.structs.replace(cfg.server, state_dir=str(state_dir)))


def pool_config(make_config: Callable[..., Config]) -> Config:
    return make_config(
        delivery={"pool": "dedicated"},
        warmup_plan=[{"name": "tiny", "caps": [3, 5]}],
        pool=[{"name": "dedicated", "warmup_plan": "tiny", "warmup_start": "2026-09-22",
               "ips": ["127.0.0.10", "127.0.0.11"]},
              {"name": "shared", "ips": ["127.0.0.12"]}],
        configuration_set=[{"name": "receipts", "pool": "shared",
                            "priority": "transactional"}])


def assert_connected(p: Components) -> None:
    """Every part holds the very parts build() made for it."""
    missing = [f.name for f in dataclasses.fields(p)
               if getattr(p, f.name) is None and f.name not in ("shaped", "worker", "cluster")]
    assert missing == []
    s = p.scheduler
    assert s.store is p.store and s.router is p.router and s.events is p.events
    assert s.sender is p.delivery and s.outbound is p.outbound
    assert s.suppression is p.suppressor and s.after_settle == [p.suppressor.after_settle]
    assert s.journal is p.journal and s.simulator is p.simulator and s.gate is p.gate
    assert s.configuration_set is not None and s.lane_of is not None
    assert p.attempts.inner is p.sender
    assert p.submitter.journal is p.journal and p.submitter.scheduler is s
    assert p.submitter.on_accept == [p.metrics.accepted.inc, p.gate.accepted]
    assert p.mail_from_gate.inner is p.submitter and p.mail_from_gate.outbound is p.outbound
    assert p.mail_from_gate.reject == p.submitter.reject
    assert p.events.subscribers[:2] == [p.event_router, p.metrics.observe_event]
    # and the reputation monitor (through a Late), and the history recorder
    assert len(p.events.subscribers) == 4 and p.events.subscribers[3] is p.recorder
    # The history hears every attempt, the network's and the simulator's.
    assert p.recorder is not None and p.history is not None and p.stats is not None
    assert p.recorder.observe_attempt in p.attempts.observers
    assert p.recorder.observe_attempt in getattr(p.simulator, "observers", [])
    assert p.recorder.history is p.history and p.recorder.store is p.store
    assert p.pruner is not None and p.pruner.history is p.history
    assert p.pruner.stats is p.stats
    assert p.metrics.history_usage is not None
    assert p.monitor.tenants is p.tenants and p.monitor.store is p.store
    assert s.paused is not None
    assert p.journal.store is p.store and p.journal.log is p.events
    assert p.outbound.signer is p.signer and p.outbound.verp is p.verp
    assert p.feedback.verp is p.verp and p.feedback.events is p.events
    assert p.feedback.unparsed.on_kept == p.metrics.observe_unparsed_kept
    assert p.feedback.unparsed.on_dropped == p.metrics.observe_unparsed_dropped
    assert p.sent_from.store is p.store and p.reputation.sent_from is p.sent_from
    # The forward references resolve to the parts built after them.
    assert p.reputation.shell() is p.shaped
    assert p.metrics.complaint_source is not None
    p.gate.on_open[0]()
    assert s._wake.is_set()  # the gate's end of a hold wakes this scheduler
    assert p.sender_policy.identities is p.identities and p.sender_policy.users is p.users


async def test_the_dev_config_builds_a_complete_connected_graph(tmp_path: Path) -> None:
    h = Harness(dev_config(tmp_path / "state"))
    p = h.parts
    assert_connected(p)
    assert p.shaped is None and p.scheduler.sender is p.attempts
    assert p.store.shard is None and p.scheduler.poll_interval == 1.0
    assert p.event_router.drain is True
    assert p.sender_policy.require_verified is False  # the dev config's "off"
    await h.start()
    await h.close()


async def test_history_disabled_builds_no_history_parts(
        make_config: Callable[..., Config]) -> None:
    h = Harness(make_config(history={"enabled": False}))
    p = h.parts
    assert (p.history, p.stats, p.recorder, p.pruner) == (None, None, None, None)
    assert len(p.events.subscribers) == 3
    assert p.attempts.observers == [p.metrics.observe_attempt, p.reputation.remember_attempt]
    assert p.metrics.history_usage is None
    await h.start()
    await h.close()


async def test_a_pool_config_puts_the_shaper_in_the_chain(
        make_config: Callable[..., Config]) -> None:
    h = Harness(pool_config(make_config))
    p = h.parts
    assert_connected(p)
    assert p.shaped is not None and p.scheduler.sender is p.shaped
    assert p.shaped.sender is p.attempts and p.shaped.event_log is p.events
    assert p.shaped.choose is not None
    msg = NewMessage(sender="a@example.com", recipients=["b@example.org"], body=b"",
                     configuration_set="receipts")
    assert p.shaped.choose(msg) == ("shared", 0)   # the set's pool, transactional lane
    assert p.shaped.choose(NewMessage(sender="", recipients=[], body=b""))[0] == "dedicated"
    await h.start()
    await h.close()


async def test_a_worker_gets_its_shard_and_polls_more_often(
        make_config: Callable[..., Config]) -> None:
    p = build(pool_config(make_config), FakeClock(), worker=(1, 3))
    try:
        assert p.store.shard == (1, 3) and p.secondary
        assert p.scheduler.poll_interval == 0.2
        assert p.event_router.drain is False and p.event_router.poll == 1.0
        assert p.shaped is not None
    finally:
        await p.sender.close()
        p.store.env.close()


async def test_parts_read_the_live_config_a_reload_replaces(
        make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    live = LiveConfig(cfg)
    p = build(cfg, FakeClock(), Overrides(poll_interval=0.05), live=live)
    try:
        assert p.config is live and p.scheduler.poll_interval == 0.05
        assert p.suppressor.config() is cfg and p.submitter.config is not None
        newer = make_config(configuration_set=[{"name": "later"}])
        live.replace(newer)
        assert p.suppressor.config() is newer and p.submitter.config() is newer
        assert p.scheduler.configuration_set is not None
        assert p.scheduler.configuration_set("later") is not None
    finally:
        await p.sender.close()
        p.store.env.close()


def test_a_forward_reference_is_set_once_and_only_read_once_set() -> None:
    late: Late[int | None] = Late("the part")
    with pytest.raises(RuntimeError, match="the part is used before it is built"):
        late()
    assert late.set(None) is None and late() is None  # None is a value (no shaper)
    with pytest.raises(RuntimeError, match="the part is built twice"):
        late.set(1)


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    return dns_server({"nullmx.test": [("MX", "0 .")]})


async def test_the_production_graph_journals_the_bounce_and_suppresses(
        make_config: Callable[..., Config], dns_server: DnsServer) -> None:
    h = Harness(make_config(dns={"nameservers": [dns_server.nameserver], "timeout": "2s"},
                            delivery={"mta_sts": False}))
    await h.start()
    try:
        mid = await h.submitter.submit(NewMessage(
            sender="app@example.com", recipients=["x@nullmx.test"],
            body=b"From: app@example.com\r\nSubject: hi\r\n\r\nhello\r\n",
            headers={"Subject": "hi", "From": "app@example.com"}))
        await h.deliver_until()
        await h.journal.flush(force=True)
        kinds = [e["eventType"] for e in read_events(h.events.path)
                 if e["mail"]["messageId"] == mid]  # type: ignore[index]
        assert kinds == ["Send", "Bounce"]
        assert h.store.message(mid) is None
        entry = SuppressionList(h.store).get("x@nullmx.test")
        assert entry is not None and entry.reason == "BOUNCE"
        assert h.store.read_db("event_outbox") == []  # staged, published, then cleared
    finally:
        await h.close()


# --- no wiring by mutation ------------------------------------------------------------------

# Lists of callbacks a part calls: appending to one after construction is wiring by mutation.
HOOK_LISTS = {"subscribers", "after_settle", "observers", "on_commit", "on_open", "on_tick",
              "on_accept", "collectors"}


def mutations(source: str) -> list[str]:
    """Where `source` sets an attribute of anything but `self` (`x.y = ...`, `self.x.y = ...`,
    `setattr(...)`), or appends to a part's hook list (`x.on_open.append(...)`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        while targets:
            t = targets.pop()
            if isinstance(t, ast.Tuple | ast.List | ast.Starred):
                targets.extend(t.elts if not isinstance(t, ast.Starred) else [t.value])
            elif isinstance(t, ast.Attribute) and not (
                    isinstance(t.value, ast.Name) and t.value.id == "self"):
                found.append(f"line {t.lineno}: {ast.unparse(t)} = ...")
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "setattr":
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
            if (isinstance(func, ast.Attribute)
                    and func.attr in ("append", "extend", "insert")
                    and isinstance(func.value, ast.Attribute)
                    and (func.value.attr in HOOK_LISTS or func.value.attr.startswith("on_"))):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("snippet", [
    "self.scheduler.gate = gate",
    "scheduler.journal = journal",
    "self.shaped.choose = self._pool_and_lane",
    "ctx.admit = counted",
    "self.events.subscribers.append(self.event_router)",
    "gate.on_open.append(scheduler.wake)",
    "submitter.on_accept.append(metrics.accepted.inc)",
    "setattr(server, 'reuse_port', True)",
    "a, self.feedback.unparsed.on_kept = 1, metrics.observe_unparsed_kept",
])
def test_the_check_finds_wiring_by_mutation(snippet: str) -> None:
    assert mutations(snippet) != []


@pytest.mark.parametrize("snippet", [
    "self.store = parts.store",
    "self.listeners.append(server)",
    "self.own_addresses.update(_bound(server.sockets))",
])
def test_the_check_lets_the_app_keep_its_own_state(snippet: str) -> None:
    assert mutations(snippet) == []


@pytest.mark.parametrize(("module", "scope"), [("relay/app.py", "RelayApp"),
                                               ("relay/wiring.py", "build")])
def test_nothing_is_set_on_a_built_part(module: str, scope: str) -> None:
    """RelayApp (its start, reload and stop) and build() set nothing on a part. serve()
    is left out: its signal handler sets a flag on the early-signals record, no part."""
    tree = ast.parse((ROOT / module).read_text())
    (node,) = [n for n in tree.body
               if isinstance(n, ast.ClassDef | ast.FunctionDef) and n.name == scope]
    assert mutations(ast.unparse(node)) == []


def test_every_part_is_a_field_of_components() -> None:
    """RelayApp keeps no part that build() did not make (its own state aside)."""
    names = {f.name for f in dataclasses.fields(Components)}
    tree = ast.parse((ROOT / "relay/app.py").read_text())
    taken: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "parts":
            taken.add(node.attr)
    assert taken and taken <= names, taken - names
