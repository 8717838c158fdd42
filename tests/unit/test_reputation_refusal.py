"""A reputation refusal reported after the send → the IP's warm-up backoff (pure, no I/O).

relay.warmup.reputation.note_refusal hands its extra rule to gate.settle; the gate's own
rules are never changed, not even for the duration of the call.
"""

from __future__ import annotations

from relay.clock import FakeClock
from relay.warmup import backoff
from relay.warmup.counters import DayClock
from relay.warmup.gate import IpSpec, PoolSpec, WarmupGate
from relay.warmup.plans import Plan
from relay.warmup.reputation import REFUSAL_RULE, note_refusal

T0 = FakeClock().now()
HOUR = 3600.0
IP = "10.0.0.10"
REFUSAL = "550 5.7.1 Service unavailable; client host blocked using a reputation list"


def gate(*rules: backoff.Rule) -> WarmupGate:
    days = DayClock()
    pools = {"dedicated": PoolSpec("dedicated", (IpSpec(IP, "mta1"),), Plan("p", (10, 20)),
                                   days.day_of(T0), "defer")}
    return WarmupGate(pools, days, "none", 1.0, (*rules, *backoff.BUILTIN_RULES))


def test_an_unmatched_permanent_refusal_pauses_and_freezes_toward_the_provider() -> None:
    g = gate()
    rules = g.rules
    notices = note_refusal(g, IP, "gmail", REFUSAL, T0)
    assert notices and "pause_and_freeze" in notices[0]
    pc = g.state(IP).providers["gmail"]
    assert pc.paused_until == T0 + REFUSAL_RULE.duration
    assert pc.freeze_day == g.days.day_of(T0)
    assert g.rules is rules and REFUSAL_RULE not in g.rules
    assert "microsoft" not in g.state(IP).providers


def test_a_configured_rule_that_matches_comes_first() -> None:
    mine = backoff.rule(r"blocked", "pause", 600.0, "gmail")
    g = gate(mine)
    notices = note_refusal(g, IP, "gmail", REFUSAL, T0)
    assert notices and " pause for 600s" in notices[0]
    pc = g.state(IP).providers["gmail"]
    assert pc.paused_until == T0 + 600.0 and pc.freeze_day != g.days.day_of(T0)


def test_the_extra_rule_is_a_parameter() -> None:
    g = gate()
    short = backoff.rule(r"5\.7\.1", "pause", 120.0)
    note_refusal(g, IP, "gmail", REFUSAL, T0, rule=short)
    assert g.state(IP).providers["gmail"].paused_until == T0 + 120.0
    # The next refusal without a rule argument gets the default again.
    note_refusal(g, IP, "yahoo", REFUSAL, T0)
    assert g.state(IP).providers["yahoo"].paused_until == T0 + REFUSAL_RULE.duration


def test_an_ip_of_no_pool_is_ignored() -> None:
    g = gate()
    assert note_refusal(g, "192.0.2.1", "gmail", REFUSAL, T0) == []
    assert g.dirty == set()
