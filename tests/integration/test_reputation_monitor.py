"""The reputation monitor over a real spool and event log, on a fake clock: sends, hard
bounces and complaints of each tenant and configuration set move its status; a change is
stored once (two processes deciding it publish one event); the simulator never counts;
a resume is a fresh start; the counts survive a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.clock import FakeClock
from relay.events import model as M
from relay.events.log import EventLog, read_events
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore
from relay.tenants import repstore
from relay.tenants.model import configuration_set_scope, tenant_scope
from relay.tenants.monitor import ReputationMonitor
from relay.tenants.reputation import Lines, ReputationBook
from relay.tenants.store import TenantStore

SIM = "simulator.relay.test"
T0 = 1_800_000_000.0


class Lines_:
    bounce_review = 0.05
    bounce_pause = 0.10
    complaint_review = 0.001
    complaint_pause = 0.005
    min_volume = 100
    window = 7 * 86400.0
    max_window = 30 * 86400.0


def _msg(tenant: str, n: int, *, cs: str = "", domain: str = "example.net") -> MessageRecord:
    return MessageRecord(id=f"{tenant}{n}", sender="app@example.com",
                         recipients=[f"u{n}@{domain}"], received_at=T0, size=10,
                         configuration_set=cs, tenant=tenant)


class Rig:
    def __init__(self, tmp: Path, clock: FakeClock, store: QueueStore) -> None:
        self.clock = clock
        self.store = store
        self.events = EventLog(tmp / "events.jsonl", clock)
        self.tenants = TenantStore(store, clock)
        self.changes: list[tuple[str, str, str]] = []
        self.monitor = ReputationMonitor(
            store, self.tenants, ReputationBook(Lines.of(Lines_())), self.events, clock,
            is_simulator=lambda a: a.endswith("@" + SIM),
            on_change=[lambda s, old, new: self.changes.append((s, old.status, new.status))])
        self.events.subscribers.append(self.monitor)

    def send(self, tenant: str, n: int, **kw: str) -> list[MessageRecord]:
        msgs = [_msg(tenant, i, **kw) for i in range(n)]
        self.events.emit([M.send_event(m) for m in msgs])
        return msgs

    def bounce(self, msgs: list[MessageRecord]) -> None:
        self.events.emit([M.bounce_event(m, m.recipients, "550 5.1.1 no such user",
                                         self.clock.now(), "mx.example.net") for m in msgs])

    def complain(self, msgs: list[MessageRecord]) -> None:
        self.events.emit([M.complaint_event(m, m.recipients, self.clock.now())
                          for m in msgs])


async def test_bounces_pause_one_tenant_and_not_another(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = QueueStore(tmp_path / "queue", clock)
    await store.start()
    rig = Rig(tmp_path, clock, store)
    for name in ("a", "b"):
        await rig.tenants.write(rig.tenants.add_op(name))
    try:
        a = rig.send("a", 200)
        b = rig.send("b", 200)
        rig.send("a", 500, domain=SIM)      # simulator mail: never counted
        await rig.monitor.run_once()
        clock.advance(3600)
        rig.bounce(a[:12])                  # 6 %: under review
        rig.bounce(b[:2])                   # 1 %: healthy
        await rig.monitor.run_once()
        assert rig.tenants.tenant_status("a").status == "UnderReview"
        assert rig.tenants.tenant_status("b").status == "Healthy"
        rig.bounce(a[12:22])                # 11 %: paused
        await rig.monitor.run_once()
        status = rig.tenants.tenant_status("a")
        assert status.status == "Paused" and status.automatic
        assert "bounce rate" in status.reason and status.volume == 200
        assert rig.tenants.paused("a") is not None and rig.tenants.paused("b") is None
        assert rig.changes == [(tenant_scope("a"), "Healthy", "UnderReview"),
                               (tenant_scope("a"), "UnderReview", "Paused")]
        rig.events.close()
        published = [e for e in read_events(tmp_path / "events.jsonl")
                     if e["eventType"] == "ReputationStatusChange"]
        assert [(e["tenant"], e["reputationStatusChange"]["newStatus"])  # type: ignore[index]
                for e in published] == [("a", "UnderReview"), ("a", "Paused")]

        # The figures never lift a pause; an operator's resume is a fresh start, so the
        # same figures do not pause it again.
        clock.advance(3600)
        await rig.monitor.run_once()
        assert rig.tenants.tenant_status("a").paused
        await rig.tenants.write(rig.tenants.resume_op(tenant_scope("a"), who="ops"))
        rig.bounce(a[22:23])
        await rig.monitor.run_once()
        resumed = rig.tenants.tenant_status("a")
        assert resumed.status == "Healthy" and resumed.changed_by == "ops"
        assert resumed.last_fresh_start == clock.now()
    finally:
        await store.close()


async def test_a_configuration_set_has_its_own_status(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = QueueStore(tmp_path / "queue", clock)
    await store.start()
    rig = Rig(tmp_path, clock, store)
    try:
        news = rig.send("a", 100, cs="news")
        rig.send("a", 900)                   # the tenant's other mail is clean
        rig.complain(news[:1])               # 1 % of the set: paused; 0.1 % of the tenant
        await rig.monitor.run_once()
        assert rig.tenants.configuration_set_status("news").status == "Paused"
        assert rig.tenants.tenant_status("a").status == "UnderReview"
        paused = rig.tenants.paused("a", "news")
        assert paused is not None and paused.complaint_rate == 0.01
        assert rig.tenants.paused("a", "other") is None
        assert (configuration_set_scope("news"), "Healthy", "Paused") in rig.changes
    finally:
        await store.close()


async def test_two_processes_publish_a_change_once_and_counts_survive_restart(
        tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = QueueStore(tmp_path / "queue", clock)
    await store.start()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = Rig(tmp_path / "one", clock, store), Rig(tmp_path / "two", clock, store)
    try:
        msgs = one.send("a", 60)             # each process sees half the mail
        two.send("a", 60)
        one.bounce(msgs[:7])
        two.bounce(msgs[7:14])               # 14 of 120 = 11.7 %, only all together
        await one.monitor.run_once()
        await two.monitor.run_once()
        statuses = [one.tenants.tenant_status("a").status]
        # Whichever evaluated last saw the sum; exactly one stored and published the pause.
        await one.monitor.run_once()
        one.tenants.invalidate()
        statuses.append(one.tenants.tenant_status("a").status)
        assert statuses[-1] == "Paused"
        assert len([c for c in one.changes + two.changes if c[2] == "Paused"]) == 1
    finally:
        await store.close()
    # A restart: the counts are in the spool.
    store = QueueStore(tmp_path / "queue", clock)
    await store.start()
    try:
        book = ReputationBook(Lines.of(Lines_()))
        repstore.load(store, book, clock.now())
        assert book.figures(tenant_scope("a"), clock.now()).sends == 120
    finally:
        await store.close()


async def test_bounces_counted_while_a_batch_is_written_are_evaluated(
        tmp_path: Path) -> None:
    # The monitor writes a batch (sends only), and the bounces of that mail arrive while
    # the write is under way: the next batch writes them and evaluates the tenant. (The
    # scope was taken for evaluation after the write, so the bounces' evaluation ran on
    # the counts without them and the next batch evaluated nothing: no pause for up to
    # evaluate_every.)
    clock = FakeClock(T0)
    store = QueueStore(tmp_path / "queue", clock)
    await store.start()
    rig = Rig(tmp_path, clock, store)
    await rig.tenants.write(rig.tenants.add_op("a"))
    try:
        sent = rig.send("a", 100)
        rig.bounce(sent[:1])                    # in the first batch: evaluated, healthy
        first = asyncio.create_task(rig.monitor.run_once())
        await asyncio.sleep(0)                  # the first batch's write has begun
        rig.bounce(sent[1:20])                  # 20 %, counted during that write
        await first
        await rig.monitor.run_once()
        assert rig.tenants.tenant_status("a").status == "Paused"
    finally:
        await store.close()
