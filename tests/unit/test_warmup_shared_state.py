"""The pure side of warm-up shared across nodes (relay/warmup/counters.py, gate.py): a
counter taken on as the cluster has it (with this node's units not yet in Redis), an
IP's whole state, the restrictions a node publishes, and the gate's whole cap with
[cluster] (not a worker's split)."""

from __future__ import annotations

import pytest

from relay.warmup import counters
from relay.warmup.counters import DayClock, IpState
from relay.warmup.gate import Grant, IpSpec, PoolSpec, WarmupGate
from relay.warmup.plans import Plan

NOW = 1_790_035_200.0 + 9 * 3600
TODAY = DayClock().day_of(NOW)


def test_a_counter_takes_the_clusters_count_plus_what_is_in_flight() -> None:
    st = IpState()
    pc = counters.counter(st, "gmail")
    pc.paused_until, pc.pause_reason = NOW + 60, "mine"
    counters.adopt_counter(pc, advanced=3, day=TODAY, sent=40, hour=7, hour_sent=4,
                           freeze_day=-1, paused_until=NOW + 30, pause_reason="theirs",
                           in_flight=2)
    assert (pc.advanced, pc.day, pc.sent, pc.hour, pc.hour_sent) == (3, TODAY, 42, 7, 6)
    assert (pc.paused_until, pc.pause_reason) == (NOW + 60, "mine")  # the later pause
    # refunds not yet sent make it lower, never below 0
    counters.adopt_counter(pc, advanced=3, day=TODAY, sent=1, hour=7, hour_sent=1,
                           freeze_day=TODAY, paused_until=0.0, in_flight=-5)
    assert (pc.sent, pc.hour_sent, pc.freeze_day) == (0, 0, TODAY)


def test_an_ips_whole_state_and_a_malformed_one() -> None:
    st = IpState(frozen=True, frozen_reason="old")
    counters.adopt_state(st, {
        "ip": "192.0.2.1", "frozen": False, "reason": "", "base": 4,
        "providers": {"gmail": {"adv": 5, "day": TODAY, "sent": 9, "hour": 3, "hs": 2,
                                "fz": -1, "pu": NOW + 10, "pr": "421"}}},
        lambda provider: 1)
    assert not st.frozen and st.base_advanced == 4
    pc = st.providers["gmail"]
    assert (pc.advanced, pc.sent, pc.hour_sent, pc.paused_until) == (5, 10, 3, NOW + 10)
    assert counters.plan_day(pc, st, TODAY) == 6
    # an empty provider table (Lua's cjson encodes an empty table as {}) is fine
    counters.adopt_state(st, {"frozen": True, "reason": "r", "base": 0, "providers": {}})
    assert st.frozen
    with pytest.raises(KeyError):
        counters.adopt_state(st, {"frozen": True})


def test_restrictions_name_the_pauses_and_frozen_days_only() -> None:
    st = IpState()
    counters.counter(st, "gmail").paused_until = NOW + 3600
    counters.counter(st, "yahoo").freeze_day = TODAY
    counters.counter(st, "other").paused_until = NOW - 1  # over
    counters.freeze(st, TODAY, "bounce rate 9%")
    frozen, reason, held = counters.restrictions(st, TODAY, NOW)
    assert (frozen, reason) == (True, "bounce rate 9%")
    assert sorted(held) == [("gmail", NOW + 3600, "", False), ("yahoo", 0.0, "", True)]


def test_with_cluster_the_gate_keeps_to_the_whole_cap_and_gives_back_a_shortfall() -> None:
    pool = PoolSpec("p", (IpSpec("192.0.2.1", ""),), Plan("t", (100,)))
    split = WarmupGate({"p": pool}, share=(1, 4))
    whole = WarmupGate({"p": pool}, pacing="none", share=(1, 4), whole_caps=True)
    assert split.cap(pool, "192.0.2.1", "gmail", NOW) == 25
    assert whole.cap(pool, "192.0.2.1", "gmail", NOW) == 100
    decision = whole.acquire("p", "gmail", 30, NOW)
    assert [g.count for g in decision.grants] == [30]
    whole.give_back(Grant("192.0.2.1", "", "p", "gmail", 30), 12, NOW)
    pc = whole.state("192.0.2.1").providers["gmail"]
    assert counters.sent_today(pc, TODAY) == 18
