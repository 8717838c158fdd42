"""Table tests for relay.delivery.settle: what the queue does after an outcome, which events.

Pure: real MessageRecord/RecipientRecord values, times from a FakeClock, every outcome
made by the code that makes it in delivery (classify, the mailbox simulator, the route
failures, warm-up holds); no event loop, no store.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from relay.clock import FakeClock
from relay.delivery.classify import from_failure, from_reply, from_route
from relay.delivery.outcome import LOCAL_ERROR, Outcome, held, outcomes_of
from relay.delivery.settle import Decision, Retry, decide, events_for
from relay.dns.route import dns_tempfail, loops_back, no_such_domain, null_mx
from relay.events.model import iso
from relay.queue.records import Action, MessageRecord, RecipientRecord, State
from relay.simulator import Simulator

T0 = FakeClock().now()
HOUR = 3600.0
SCHEDULE = (60.0, 300.0, 1800.0)
POLICY = Retry(SCHEDULE, max_delivery_time=HOUR)
DEADLINE = T0 + HOUR
MX = "mx.dest.test"


def message(received_at: float = T0) -> MessageRecord:
    return MessageRecord("m1", "app@example.com", ["a@dest.test", "b@dest.test"],
                         received_at, 100)


def recipient(attempts: int = 0, address: str = "a@dest.test",
              state: State = State.INFLIGHT, **kw: object) -> RecipientRecord:
    return RecipientRecord(address, address.rpartition("@")[2], state=state,
                           attempts=attempts, **kw)  # type: ignore[arg-type]


def simulated(address: str) -> Outcome:
    return Simulator(clock=FakeClock(T0)).outcomes(message(), [address])[0]


# (name, outcome, attempts before this one, seconds after receipt, expected decision)
CASES: list[tuple[str, Outcome | None, int, float, Decision]] = [
    ("delivered", from_reply(250, "2.0.0 Ok: queued as X", MX), 0, 5.0,
     Decision(Action.DELIVER, "250 2.0.0 Ok: queued as X", MX)),
    ("4xx first attempt: first delay of the schedule", from_reply(451, "4.3.0 later", MX),
     0, 5.0, Decision(Action.DEFER, "451 4.3.0 later", MX, T0 + 5.0 + 60.0)),
    ("4xx third attempt: third delay", from_reply(421, "4.7.0 busy", MX), 2, 100.0,
     Decision(Action.DEFER, "421 4.7.0 busy", MX, T0 + 100.0 + 1800.0)),
    ("4xx after the last delay: the last one repeats, cut at the deadline",
     from_reply(421, "4.7.0 busy", MX), 7, 3000.0,
     Decision(Action.DEFER, "421 4.7.0 busy", MX, DEADLINE)),
    ("4xx at max_delivery_time: expired", from_reply(451, "4.3.0 later", MX), 4, HOUR,
     Decision(Action.EXPIRE, "451 4.3.0 later", MX)),
    ("4xx past max_delivery_time: expired", from_reply(451, "4.3.0 later", MX), 4,
     HOUR + 50.0, Decision(Action.EXPIRE, "451 4.3.0 later", MX)),
    ("connection refused: deferred like a 4xx", from_failure("refused", MX), 0, 5.0,
     Decision(Action.DEFER, f"451 4.4.1 connection refused by {MX}", "", T0 + 65.0)),
    ("5xx: bounced", from_reply(550, "5.1.1 <a@dest.test>: no such user", MX), 0, 5.0,
     Decision(Action.BOUNCE, "550 5.1.1 <a@dest.test>: no such user", MX)),
    ("5xx past max_delivery_time: still a bounce, not an expiry",
     from_reply(554, "5.7.1 rejected", MX), 3, HOUR + 1.0,
     Decision(Action.BOUNCE, "554 5.7.1 rejected", MX)),
    ("held by warm-up: released to its window, not an attempt",
     held("warm-up: cap reached", T0 + 500.0), 3, 5.0,
     Decision(Action.RELEASE, "451 4.7.0 warm-up: cap reached", "", T0 + 500.0)),
    ("held by warm-up past the deadline: released at the deadline",
     held("warm-up: cap reached", T0 + 9 * HOUR), 0, 5.0,
     Decision(Action.RELEASE, "451 4.7.0 warm-up: cap reached", "", DEADLINE)),
    ("held by warm-up at max_delivery_time: expired",
     held("warm-up: cap reached", T0 + 9 * HOUR), 0, HOUR,
     Decision(Action.EXPIRE, "451 4.7.0 warm-up: cap reached", "", DEADLINE)),
    ("DNS permanent (null MX): bounced", from_route(null_mx("dest.test")), 0, 5.0,
     Decision(Action.BOUNCE, "556 5.1.10 Recipient address has null MX (dest.test)")),
    ("DNS permanent (no such domain): bounced", from_route(no_such_domain("dest.test")),
     0, 5.0, Decision(Action.BOUNCE, "550 5.1.2 Recipient domain dest.test does not exist")),
    ("mail loop: bounced", from_route(loops_back("dest.test")), 0, 5.0,
     Decision(Action.BOUNCE, "554 5.4.6 mail for dest.test loops back to myself")),
    ("DNS temporary: deferred on the schedule",
     from_route(dns_tempfail("dest.test", "SERVFAIL")), 1, 5.0,
     Decision(Action.DEFER, "451 4.4.3 DNS temporary failure looking up dest.test: SERVFAIL",
              "", T0 + 5.0 + 300.0)),
    ("simulator success: delivered", simulated("success@simulator.relay.test"), 0, 5.0,
     Decision(Action.DELIVER, "250 2.0.0 Ok: delivered by the mailbox simulator",
              "simulator.relay.test")),
    ("simulator bounce: bounced", simulated("bounce+x@simulator.relay.test"), 0, 5.0,
     Decision(Action.BOUNCE, "550 5.1.1 simulator: the email account does not exist",
              "simulator.relay.test")),
    ("simulator softbounce: deferred on the schedule",
     simulated("softbounce@simulator.relay.test"), 0, 5.0,
     Decision(Action.DEFER,
              "450 4.2.1 simulator: mailbox temporarily unavailable, try again later",
              "simulator.relay.test", T0 + 65.0)),
    ("simulator softbounce at max_delivery_time: expired",
     simulated("softbounce@simulator.relay.test"), 5, HOUR,
     Decision(Action.EXPIRE,
              "450 4.2.1 simulator: mailbox temporarily unavailable, try again later",
              "simulator.relay.test")),
    ("no outcome (the delivery raised): deferred as a local error", None, 0, 5.0,
     Decision(Action.DEFER, "451 4.3.0 local error during delivery", "", T0 + 65.0)),
]


@pytest.mark.parametrize(("outcome", "attempts", "after", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(outcome: Outcome | None, attempts: int, after: float,
                expected: Decision) -> None:
    assert decide(message(), recipient(attempts), outcome, T0 + after, POLICY) == expected


def test_configuration_set_limit_is_the_policy_deadline() -> None:
    """A shorter max delivery time (a configuration set's) expires sooner."""
    short = Retry(SCHEDULE, max_delivery_time=600.0)
    o = from_reply(451, "4.3.0 later", MX)
    assert decide(message(), recipient(1), o, T0 + 500.0, short) == \
        Decision(Action.DEFER, "451 4.3.0 later", MX, T0 + 600.0)
    assert decide(message(), recipient(2), o, T0 + 600.0, short).action is Action.EXPIRE


def test_jitter_comes_from_the_injected_rng() -> None:
    policy = Retry(SCHEDULE, max_delivery_time=HOUR, jitter=0.2)
    o = from_reply(451, "4.3.0 later", MX)
    firsts = [decide(message(), recipient(0), o, T0, policy, random.Random(seed))
              for seed in range(20)]
    assert all(T0 + 48.0 <= d.next_attempt_at <= T0 + 72.0 for d in firsts)
    assert len({d.next_attempt_at for d in firsts}) > 1
    again = decide(message(), recipient(0), o, T0, policy, random.Random(3))
    assert again == firsts[3]


def test_outcome_response_is_the_stored_reply() -> None:
    assert from_reply(250, "Ok", MX).response == "250 2.0.0 Ok"
    # An enhanced code the text already starts with is not repeated.
    assert Outcome("bounced", 550, "5.1.1", "5.1.1 no such user").response == \
        "550 5.1.1 no such user"
    assert LOCAL_ERROR.hold_until is None and held("x", T0).hold_until == T0


def test_outcomes_of_a_list_or_a_transaction() -> None:
    @dataclass
    class Transaction:
        outcomes: list[Outcome]

    one = [from_reply(250, "Ok", MX)]
    assert outcomes_of(one) is one
    assert outcomes_of(Transaction(one)) == one


# ---------------------------------------------------------------------------- events


@dataclass
class Settled:
    """A recipient as the store returns it after a settle (the fields events_for reads)."""

    message: MessageRecord
    recipient: RecipientRecord


def settled(address: str, state: State, response: str, remote: str = "") -> Settled:
    return Settled(message(), recipient(1, address, state, last_response=response,
                                        remote_mta=remote))


def limit(msg: MessageRecord) -> float:
    return HOUR


def test_events_for_each_settled_state() -> None:
    now = T0 + 10.0
    events = events_for([
        settled("a@dest.test", State.DELIVERED, "250 2.0.0 Ok", MX),
        settled("b@dest.test", State.DELIVERED, "250 2.0.0 Ok", MX),
        settled("c@dest.test", State.DELIVERED, "250 2.0.0 Ok other"),
        settled("d@dest.test", State.BOUNCED, "550 5.1.1 no such user"),
        settled("e@dest.test", State.EXPIRED, "451 4.3.0 later"),
        settled("f@dest.test", State.DEFERRED, "451 4.3.0 later"),
        settled("g@dest.test", State.INFLIGHT, "451 4.3.0 later"),  # not settled: no event
    ], now, "relay.test", limit)
    kinds = [e.eventType for e in events]
    assert kinds == ["Delivery", "Delivery", "Bounce", "Bounce", "DeliveryDelay"]
    first, second, bounce, expired, delay = events
    # Recipients with the same answer share one event.
    assert first.delivery is not None and first.delivery.recipients == ["a@dest.test",
                                                                        "b@dest.test"]
    assert first.delivery.reportingMTA == MX
    # A delivery that named no remote MTA reports this host.
    assert second.delivery is not None and second.delivery.reportingMTA == "relay.test"
    assert bounce.bounce is not None and bounce.bounce.bounceType == "Permanent"
    assert bounce.bounce.bounceSubType == "NoEmail"
    assert expired.bounce is not None and expired.bounce.bounceType == "Transient"
    assert delay.deliveryDelay is not None
    assert delay.deliveryDelay.expirationTime == iso(T0 + HOUR)
    assert [r.emailAddress for r in delay.deliveryDelay.delayedRecipients] == ["f@dest.test"]


def test_events_for_nothing_settled() -> None:
    assert events_for([], T0, "relay.test", limit) == []
