"""What the queue does with one recipient after an attempt, and which events say so.

PURE: no I/O, no clock (times come in as `now`), randomness (retry jitter) as an
injected random.Random. The scheduler (relay/delivery/scheduler.py) calls `decide` for
every recipient of a finished transaction, writes the decisions to the store in one
commit, and publishes `events_for` what the store says was settled (the store's
transition table has the last word: a recipient bounced by the operator meanwhile is
not delivered again).

`decide`, by outcome:
- delivered → DELIVER; bounced (5xx, permanent route failure, local refusal) → BOUNCE;
- held by warm-up caps or shaping (`hold_until` set) → RELEASE, not an attempt: due
  again at hold_until, never past the deadline (received_at + max delivery time); at
  or past the deadline → EXPIRE;
- any other deferral (4xx, transport failure, temporary route failure) → DEFER at the
  next time of the retry schedule (relay/delivery/retry.py), or EXPIRE when the
  deadline has passed;
- no outcome at all (the delivery raised) → as a deferral with LOCAL_ERROR.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.delivery import retry
from relay.delivery.outcome import LOCAL_ERROR, Outcome
from relay.events.model import Event, bounce_event, delay_event, delivery_event
from relay.queue.records import Action, MessageRecord, RecipientRecord, State


@dataclass(frozen=True)
class Retry:
    """The retry policy for one message: delivery.retry_schedule and retry_jitter, and
    its max delivery time (delivery.max_delivery_time, or its configuration set's)."""

    schedule: Sequence[float]
    max_delivery_time: float
    jitter: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What to write for one recipient (the store's Result without its key)."""

    action: Action
    response: str
    remote_mta: str = ""
    next_attempt_at: float = 0.0


def decide(msg: MessageRecord, recipient: RecipientRecord, outcome: Outcome | None,
           now: float, policy: Retry, rng: random.Random | None = None) -> Decision:
    """The queue's next step for `recipient` of `msg` after `outcome` at `now`."""
    o = LOCAL_ERROR if outcome is None else outcome
    response = o.response
    if o.kind == "delivered":
        return Decision(Action.DELIVER, response, o.remote_mta)
    if o.kind == "bounced":
        return Decision(Action.BOUNCE, response, o.remote_mta)
    deadline = msg.received_at + policy.max_delivery_time
    if o.hold_until is not None:
        # No attempt was made, so none is counted and no retry delay applies.
        return Decision(Action.EXPIRE if now >= deadline else Action.RELEASE, response,
                        next_attempt_at=min(o.hold_until, deadline))
    at = retry.next_attempt_at(
        received_at=msg.received_at, attempts=recipient.attempts + 1, now=now,
        schedule=policy.schedule, max_delivery_time=policy.max_delivery_time,
        jitter=policy.jitter, rng=rng)
    return Decision(Action.EXPIRE if at is None else Action.DEFER, response, o.remote_mta,
                    next_attempt_at=at or 0.0)


class SettledLike(Protocol):
    """A recipient as the store left it after a settle (relay.queue.store.Settled)."""

    @property
    def message(self) -> MessageRecord: ...
    @property
    def recipient(self) -> RecipientRecord: ...


def events_for(settled: Sequence[SettledLike], now: float, hostname: str,
               max_delivery_time: Callable[[MessageRecord], float]) -> list[Event]:
    """One event per (message, new state, response): recipients of one transaction that
    got the same answer share an event, as in SES. `hostname` is the reporting MTA (and
    the remote MTA of a delivery that named none); `max_delivery_time` gives a message's
    limit, for a DeliveryDelay's expiration time."""
    groups: dict[tuple[str, State, str], list[SettledLike]] = {}
    for s in settled:
        groups.setdefault((s.message.id, s.recipient.state, s.recipient.last_response),
                          []).append(s)
    out: list[Event] = []
    for (_, state, response), group in groups.items():
        msg = group[0].message
        rcpts = [s.recipient.address for s in group]
        remote = group[0].recipient.remote_mta
        if state is State.DELIVERED:
            out.append(delivery_event(msg, rcpts, response, now, remote or hostname))
        elif state is State.BOUNCED:
            out.append(bounce_event(msg, rcpts, response, now, hostname))
        elif state is State.EXPIRED:
            out.append(bounce_event(msg, rcpts, response, now, hostname, expired=True))
        elif state is State.DEFERRED:
            out.append(delay_event(msg, rcpts, response, now,
                                   msg.received_at + max_delivery_time(msg), hostname))
    return out
