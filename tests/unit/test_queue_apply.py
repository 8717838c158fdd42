"""The pure recipient state change of the queue (relay/queue/ops.py `apply`), as a table
over real records: every allowed (state, action) pair, what it does to the attempt count,
due time, last attempt, last response and remote MTA, and the pairs it refuses."""

from __future__ import annotations

import msgspec
import pytest

from relay.queue.ops import Result, apply
from relay.queue.records import TRANSITIONS, Action, IllegalTransition, RecipientRecord, State

NOW = 1000.0
NEXT = 1600.0
Q, D, I = State.QUEUED, State.DEFERRED, State.INFLIGHT  # noqa: E741


def _record(state: State) -> RecipientRecord:
    return RecipientRecord(address="user@example.test", domain="example.test", state=state,
                           attempts=2, next_attempt_at=500.0, last_attempt_at=400.0,
                           last_response="451 4.7.1 try later", remote_mta="mx.old.test",
                           updated_at=400.0)


# (from state, action, response, remote MTA) -> (state, attempts, next attempt at,
# last attempt at, last response, remote MTA) after the change at NOW with next = NEXT.
TABLE = [
    # A lease takes the due time it is given (the lease expiry); not an attempt.
    ((Q, Action.LEASE, "", ""),
     (I, 2, NEXT, 400.0, "451 4.7.1 try later", "mx.old.test")),
    ((D, Action.LEASE, "", ""),
     (I, 2, NEXT, 400.0, "451 4.7.1 try later", "mx.old.test")),
    # Results of an attempt: counted and timed; a final state keeps its old due time.
    ((I, Action.DELIVER, "250 2.0.0 ok", "mx.new.test"),
     (State.DELIVERED, 3, 500.0, NOW, "250 2.0.0 ok", "mx.new.test")),
    ((I, Action.DEFER, "421 4.3.2 busy", "mx.new.test"),
     (D, 3, NEXT, NOW, "421 4.3.2 busy", "mx.new.test")),
    ((I, Action.BOUNCE, "550 5.1.1 no such user", ""),
     (State.BOUNCED, 3, 500.0, NOW, "550 5.1.1 no such user", "mx.old.test")),
    ((I, Action.EXPIRE, "", ""),
     (State.EXPIRED, 3, 500.0, NOW, "451 4.7.1 try later", "mx.old.test")),
    # Given back without an attempt: due again at the time given, nothing counted.
    ((I, Action.RECOVER, "", ""),
     (D, 2, NEXT, 400.0, "451 4.7.1 try later", "mx.old.test")),
    ((I, Action.RELEASE, "", ""),
     (D, 2, NEXT, 400.0, "451 4.7.1 try later", "mx.old.test")),
    # Operator actions on recipients not in flight: never an attempt.
    ((Q, Action.RETRY, "", ""),
     (Q, 2, NEXT, 400.0, "451 4.7.1 try later", "mx.old.test")),
    ((D, Action.RETRY, "", ""),
     (D, 2, NEXT, 400.0, "451 4.7.1 try later", "mx.old.test")),
    ((Q, Action.BOUNCE, "operator bounce", ""),
     (State.BOUNCED, 2, 500.0, 400.0, "operator bounce", "mx.old.test")),
    ((D, Action.BOUNCE, "operator bounce", ""),
     (State.BOUNCED, 2, 500.0, 400.0, "operator bounce", "mx.old.test")),
    ((Q, Action.EXPIRE, "", ""),
     (State.EXPIRED, 2, 500.0, 400.0, "451 4.7.1 try later", "mx.old.test")),
    ((D, Action.EXPIRE, "", ""),
     (State.EXPIRED, 2, 500.0, 400.0, "451 4.7.1 try later", "mx.old.test")),
]


def test_the_table_covers_every_allowed_change() -> None:
    assert sorted((s.value, a.value) for (s, a, _, _), _ in TABLE) == \
        sorted((s.value, a.value) for s, a in TRANSITIONS)


@pytest.mark.parametrize(("change", "expected"), TABLE,
                         ids=[f"{s.value}-{a.value}" for (s, a, _, _), _ in TABLE])
def test_apply(change: tuple[State, Action, str, str],
               expected: tuple[State, int, float, float, str, str]) -> None:
    state, action, response, remote_mta = change
    before = _record(state)
    kept = msgspec.structs.replace(before)
    after = apply(before, Result("0123456789abcdef0123", 0, action, response, remote_mta,
                                 next_attempt_at=NEXT), NOW)
    assert (after.state, after.attempts, after.next_attempt_at, after.last_attempt_at,
            after.last_response, after.remote_mta) == expected
    assert (after.address, after.domain, after.updated_at) == \
        ("user@example.test", "example.test", NOW)
    assert before == kept  # pure: the record given is not changed


@pytest.mark.parametrize(("state", "action"), [
    (State.DELIVERED, Action.LEASE), (State.BOUNCED, Action.RETRY),
    (State.EXPIRED, Action.DELIVER), (Q, Action.DELIVER), (Q, Action.RECOVER),
    (I, Action.LEASE), (I, Action.RETRY), (D, Action.DEFER),
])
def test_a_change_not_in_the_table_is_refused(state: State, action: Action) -> None:
    with pytest.raises(IllegalTransition):
        apply(_record(state), Result("0123456789abcdef0123", 0, action), NOW)
