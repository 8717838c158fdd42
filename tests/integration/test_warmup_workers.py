"""Warm-up counts with server.workers = N: each worker keeps its own, the operator sees the sum.

Every worker may send from every IP and keeps to its share of each cap. All of them
used to persist their counts under the IP's one record, so the last writer's counts
stood for every worker after a restart (a worker that had sent more could send its
share again) and `relay warmup status` showed one worker's sends. A real LMDB spool, the
real ShapedSender persistence and the real CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.admin.api import AdminContext
from relay.admin.metrics import Metrics
from relay.admin.tokens import TokenStore
from relay.cli import main
from relay.clock import FakeClock
from relay.config import Config, load
from relay.delivery.shaper import ShapedSender
from relay.events.log import EventLog
from relay.queue.store import QueueStore
from relay.users import UserStore
from relay.warmup import counters, gate
from relay.warmup.counters import DayClock

CONFIG = """
[server]
state_dir = "{state}"
[delivery]
pool = "dedicated"
[[pool]]
name = "dedicated"
ips = ["127.0.0.10", "127.0.0.11"]
warmup_plan = "ses-standard"
warmup_start = "2020-01-01"
"""
IP, OTHER = "127.0.0.10", "127.0.0.11"


@pytest.fixture
def now() -> float:
    """The fake clock's start. `relay warmup status` counts today by the system clock, so
    the test's sends must fall on the system's today: the time is taken when the test
    starts (a module-level time.time() was minutes old by then, and a suite that crossed
    midnight UTC failed here), and a start in the last 20 s of a day waits for the next
    one, so the test never straddles the boundary (the config's default, 00:00 UTC)."""
    t = time.time()
    days = DayClock()
    left = days.start_of(days.day_of(t) + 1) - t
    if left < 20:
        time.sleep(left + 0.5)
        t = time.time()
    return t


@pytest.fixture
def cfg_path(tmp_path: Path) -> str:
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    return str(path)


def shaper(cfg: Config, store: QueueStore, clock: FakeClock,
           worker: tuple[int, int]) -> ShapedSender:
    return ShapedSender(cfg, None, store, clock, share=worker)


def record_sends(sh: ShapedSender, ip: str, n: int) -> None:
    """What the gate does for `n` recipients sent from `ip` today."""
    st = sh.gate.state(ip)
    pc = counters.counter(st, "other")
    counters.roll(pc, st, sh.gate.days.day_of(sh.clock.now()))
    pc.sent += n
    sh.gate.dirty.add(ip)


def sent(sh: ShapedSender, ip: str) -> int:
    st = sh.gate.state(ip)
    return sum(counters.sent_today(pc, sh.gate.days.day_of(sh.clock.now()))
               for pc in st.providers.values())


async def open_store(cfg: Config, clock: FakeClock) -> QueueStore:
    store = QueueStore(cfg.state_path / "queue", clock)
    await store.start()
    return store


def status(cfg_path: str, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    capsys.readouterr()
    assert main(["warmup", "status", "--config", cfg_path, "--json"]) == 0
    return {r["ip"]: r for r in json.loads(capsys.readouterr().out)}


async def test_each_worker_keeps_its_own_counts_and_the_status_adds_them(
        cfg_path: str, capsys: pytest.CaptureFixture[str], now: float) -> None:
    cfg = load(cfg_path)
    clock = FakeClock(now)
    store = await open_store(cfg, clock)
    w0, w1 = shaper(cfg, store, clock, (0, 2)), shaper(cfg, store, clock, (1, 2))
    record_sends(w0, IP, 40)
    record_sends(w1, IP, 90)
    await w1.flush()
    await w0.flush()  # worker 0 writes last
    await store.close()

    # A restart: each worker carries on from its own count, not from the last writer's.
    store = await open_store(cfg, clock)
    r0, r1 = shaper(cfg, store, clock, (0, 2)), shaper(cfg, store, clock, (1, 2))
    assert (sent(r0, IP), sent(r1, IP)) == (40, 90)
    await store.close()

    # The operator sees the IP's sends from all workers.
    assert status(cfg_path, capsys)[IP]["sent_today"] == 130

    # An operator's freeze and plan day (the IP's own record) reach every worker; worker 1
    # keeps its count, and takes the plan, not worker 0's count, for an IP new to it.
    assert main(["warmup", "freeze", IP, "--config", cfg_path]) == 0
    assert main(["warmup", "set", OTHER, "--day", "10", "--config", cfg_path]) == 0
    store = await open_store(cfg, clock)
    r0 = shaper(cfg, store, clock, (0, 2))
    record_sends(r0, OTHER, 25)
    await r0.flush()
    r1 = shaper(cfg, store, clock, (1, 2))
    assert r1.gate.state(IP).frozen and sent(r1, IP) == 90
    assert sent(r1, OTHER) == 0
    pool = r1.gate.pools["dedicated"]
    full_cap = pool.plan.cap(10) if pool.plan is not None else None
    assert full_cap is not None
    assert r1.gate.cap(pool, OTHER, "other", clock.now()) == full_cap // 2  # day 10, half
    # The dashboard and the warm-up gauges (worker 0's admin API) show each IP whole too.
    ctx = AdminContext(config=lambda: cfg, store=store,
                       users=UserStore(cfg.state_path / "users.json"),
                       tokens=TokenStore(cfg.state_path / "admin_tokens.json"),
                       events=EventLog(cfg.state_path / "events.jsonl"), metrics=Metrics(),
                       clock=clock, warmup_gate=r0.gate)
    shown = {r["ip"]: r for r in ctx.warmup_status()}
    assert shown[IP]["sent_today"] == 130 and shown[OTHER]["sent_today"] == 25
    assert shown[OTHER]["cap_today"] == full_cap
    ctx.events.close()
    await store.close()
    rows = status(cfg_path, capsys)
    assert rows[IP]["frozen"] is True and rows[IP]["sent_today"] == 130
    assert rows[OTHER]["day"] == 10 and rows[OTHER]["sent_today"] == 25


def settle_sends(sh: ShapedSender, ip: str, provider: str, outcomes: list[tuple[str, str]]
                 ) -> list[str]:
    """What the gate does after a transaction of len(outcomes) recipients from `ip`."""
    pool = sh.gate.pools["dedicated"]
    grant = gate.Grant(ip, ip, pool.name, provider, len(outcomes))
    sh.gate._record(ip, provider, len(outcomes), sh.clock.now())
    return sh.gate.settle(grant, outcomes, sh.clock.now())


@pytest.fixture
async def workers(cfg_path: str, now: float) -> AsyncIterator[tuple[ShapedSender, ShapedSender]]:
    """Worker 0's and worker 1's shapers of server.workers = 2 on one real spool."""
    cfg = load(cfg_path)
    clock = FakeClock(now)
    store = await open_store(cfg, clock)
    try:
        yield shaper(cfg, store, clock, (0, 2)), shaper(cfg, store, clock, (1, 2))
    finally:
        await store.close()


async def test_a_complaint_in_worker_0_is_weighed_against_every_workers_sends(
        workers: tuple[ShapedSender, ShapedSender]) -> None:
    # The feedback listener runs in worker 0, so every complaint lands there, while each
    # worker counts only its own sends. Worker 0 alone (30 sends) is under the rates'
    # minimum of 200 messages and would never freeze; the IP as a whole sent 1,530.
    w0, w1 = workers
    now = w0.clock.now()
    settle_sends(w1, IP, "other", [("delivered", "250 ok")] * 1500)
    await w1.flush()
    settle_sends(w0, IP, "other", [("delivered", "250 ok")] * 30)
    w0.sync()
    assert w0.gate.note_complaint(IP, now) is None  # 1 in 1,530: 0.07 %
    notice = w0.gate.note_complaint(IP, now)  # 2: 0.13 %, over the 0.1 %
    assert notice is not None and "complaint rate" in notice and "1530" in notice
    assert w0.gate.state(IP).frozen
    await w0.flush()

    # Worker 1 holds the IP back too at its next sync (the freeze is the IP's).
    assert not w1.gate.state(IP).frozen
    w1.sync()
    assert w1.gate.state(IP).frozen
    assert "complaint rate" in w1.gate.state(IP).frozen_reason


async def test_a_resume_by_the_operator_is_not_undone_by_a_stale_worker_record(
        cfg_path: str, now: float) -> None:
    cfg = load(cfg_path)
    clock = FakeClock(now)
    store = await open_store(cfg, clock)
    w0, w1 = shaper(cfg, store, clock, (0, 2)), shaper(cfg, store, clock, (1, 2))
    settle_sends(w1, IP, "other", [("delivered", "250 ok")] * 190
                 + [("bounced", "550 5.1.1 no such user")] * 20)
    assert w1.gate.state(IP).frozen  # bounce rate 9.5 % over 210
    await w1.flush()
    w0.sync()
    assert w0.gate.state(IP).frozen
    await w0.flush()
    await store.close()

    assert main(["warmup", "resume", IP, "--config", cfg_path]) == 0
    store = await open_store(cfg, clock)
    try:
        # The running workers' states, as they were before the resume.
        w0.store = w1.store = store
        w0.sync()  # takes the resume, then sees worker 1's record: frozen, but older
        assert not w0.gate.state(IP).frozen
        w1.sync()
        assert not w1.gate.state(IP).frozen
        w0.sync()
        assert not w0.gate.state(IP).frozen
    finally:
        await store.close()


async def test_a_backoff_pause_one_worker_got_holds_the_ip_for_all(
        workers: tuple[ShapedSender, ShapedSender]) -> None:
    w0, w1 = workers
    now = w0.clock.now()
    pool = w0.gate.pools["dedicated"]
    w0.sync()
    assert w0.gate.available(pool, IP, "gmail", now)[0] > 0
    notices = settle_sends(w1, IP, "gmail", [
        ("deferred", "421 4.7.28 Our system has detected an unusual rate of "
                     "unsolicited mail originating from your IP address.")])
    assert notices and "backoff" in notices[0]
    await w1.flush()
    w0.sync()
    n, until = w0.gate.available(pool, IP, "gmail", now)
    assert n == 0 and until == pytest.approx(now + 2 * 3600)
    assert w0.gate.available(pool, OTHER, "gmail", now)[0] > 0
    assert w0.gate.available(pool, IP, "other", now)[0] > 0
