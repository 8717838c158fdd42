"""Priority lanes and warm-up notices: pure parts (lanes, LaneQueue, the gate's claims)."""

from __future__ import annotations

import math

from relay.config import from_dict
from relay.delivery.scheduler import LaneQueue, Task
from relay.queue.records import MessageRecord
from relay.warmup.counters import DAY, DayClock
from relay.warmup.gate import CLAIM_GRACE, IpSpec, PoolSpec, Reputation, WarmupGate
from relay.warmup.lanes import BULK, ENGAGED, TRANSACTIONAL, pool_of, priority_of
from relay.warmup.plans import Plan

T0 = 1_790_035_200.0 + 9 * 3600   # 09:00 on plan day 1
PLAN = Plan("tiny", (4, 6))


def _gate(*, overflow: str = "defer") -> WarmupGate:
    days = DayClock()
    pools = {
        "dedicated": PoolSpec("dedicated", (IpSpec("10.0.0.10", "mta1"),), PLAN,
                              days.day_of(T0), overflow),
        "shared": PoolSpec("shared", (IpSpec("10.0.0.20", "shared1"),)),
    }
    return WarmupGate(pools, days, "none", 2.0,
                      reputation=Reputation(min_messages=10, bounce_rate_limit=0.2))


def _msg(cs: str = "", tags: dict[str, list[str]] | None = None,
         user: str = "") -> MessageRecord:
    return MessageRecord("m1", "a@example.com", ["b@example.net"], T0, 10, auth_user=user,
                         tags=tags or {}, configuration_set=cs)


CFG = from_dict({
    "delivery": {"pool": "dedicated"},
    "pool": [{"name": "dedicated", "ips": ["10.0.0.10"]},
             {"name": "shared", "ips": ["10.0.0.20"]},
             {"name": "tx", "ips": ["10.0.0.30"]}],
    "configuration_set": [{"name": "receipts", "priority": "transactional", "pool": "tx"},
                          {"name": "vip", "engaged": True},
                          {"name": "news"}],
})


def test_lane_and_pool_of_a_message() -> None:
    assert priority_of(CFG, _msg("receipts")) == TRANSACTIONAL
    assert priority_of(CFG, _msg("vip")) == ENGAGED
    assert priority_of(CFG, _msg("news", {"engagement": ["high"]})) == ENGAGED
    assert priority_of(CFG, _msg("news", {"engagement": ["low"]})) == BULK
    assert priority_of(CFG, _msg()) == BULK
    assert pool_of(CFG, _msg("receipts"), "shared") == "tx"      # the set wins
    assert pool_of(CFG, _msg("news"), "shared") == "shared"      # then the credential
    assert pool_of(CFG, _msg("news"), "gone") == "dedicated"     # unknown: delivery.pool
    assert pool_of(CFG, _msg()) == "dedicated"


def test_lane_queue_serves_higher_lanes_first_fifo_within() -> None:
    q = LaneQueue()
    m = _msg()
    order = [("b1", BULK), ("e1", ENGAGED), ("b2", BULK), ("t1", TRANSACTIONAL),
             ("e2", ENGAGED)]
    for dest, lane in order:
        q.append(Task(m, dest, priority=lane))
    assert len(q) == 5 and [t.destination for t in q] == ["t1", "e1", "e2", "b1", "b2"]
    assert [q.popleft().destination for _ in range(5)] == ["t1", "e1", "e2", "b1", "b2"]
    assert not q


def test_scarce_cap_goes_to_the_higher_lane_whoever_asks_first() -> None:
    """Day 1: an engaged task wants 6 of a cap of 4 and is held for 2; day 2 (cap 6): a
    bulk task at another destination asks first, yet gets only 4 and the engaged 2 go."""
    g = _gate()
    d = g.acquire("dedicated", "gmail", 6, T0, ENGAGED)
    assert sum(x.count for x in d.grants) == 4 and d.deferred == 2
    day2 = g.days.start_of(g.days.day_of(T0) + 1)
    assert d.retry_at == day2
    bulk = g.acquire("dedicated", "gmail", 6, day2 + 1, BULK)
    assert sum(x.count for x in bulk.grants) == 4 and bulk.deferred == 2
    assert bulk.retry_at == day2 + CLAIM_GRACE    # when the claim lapses
    eng = g.acquire("dedicated", "gmail", 2, day2 + 2, ENGAGED)
    assert sum(x.count for x in eng.grants) == 2 and eng.deferred == 0
    # The claim is used up: nothing is held back for it any more.
    assert g._reserved(("dedicated", "gmail"), BULK, day2 + 3) == (0, math.inf)


def test_claims_send_bulk_to_the_overflow_pool_and_lapse() -> None:
    g = _gate(overflow="shared")
    g.acquire("dedicated", "gmail", 4, T0, BULK)             # day 1's cap is gone
    # Transactional mail overflows too (nothing is deferred, so nothing is claimed) ...
    d = g.acquire("dedicated", "gmail", 3, T0 + 1, TRANSACTIONAL)
    assert [(x.pool, x.count) for x in d.grants] == [("shared", 3)]
    assert g._reserved(("dedicated", "gmail"), BULK, T0 + 2) == (0, math.inf)
    # ... but with defer, a held transactional task claims tomorrow's cap ahead of bulk.
    g2 = _gate()
    g2.acquire("dedicated", "gmail", 4, T0, BULK)
    held = g2.acquire("dedicated", "gmail", 3, T0 + 1, TRANSACTIONAL)
    assert held.deferred == 3
    day2 = held.retry_at
    assert g2._reserved(("dedicated", "gmail"), ENGAGED, day2) == (3, day2 + CLAIM_GRACE)
    assert g2._reserved(("dedicated", "gmail"), TRANSACTIONAL, day2) == (0, math.inf)
    # Nobody came for it: after the grace period bulk gets the whole cap again.
    late = g2.acquire("dedicated", "gmail", 6, day2 + CLAIM_GRACE + 1, BULK)
    assert sum(x.count for x in late.grants) == 6


def test_backoff_and_reputation_freeze_are_noticed() -> None:
    g = _gate()
    (grant,) = g.acquire("dedicated", "gmail", 1, T0).grants
    g.settle(grant, [("deferred", "421 4.7.28 unusual rate of unsolicited mail")], T0 + 5)
    (n,) = g.events
    assert (n.kind, n.ip, n.provider, n.action) == ("WarmupBackoff", "10.0.0.10", "gmail",
                                                    "pause_and_freeze")
    assert "4.7.28" in n.reason and n.until is not None and n.until > T0 + 5
    g.events.clear()
    (grant,) = g.acquire("dedicated", "yahoo", 4, T0 + DAY).grants
    for _ in range(3):
        g.settle(grant, [("bounced", "550 5.1.1 no such user")] * 4, T0 + DAY + 10)
    freezes = [e for e in g.events if e.kind == "WarmupFreeze"]
    assert len(freezes) == 1
    assert freezes[0].ip == "10.0.0.10" and freezes[0].until is None
    assert "bounce rate" in freezes[0].reason
