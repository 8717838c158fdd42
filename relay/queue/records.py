"""Queue records and the recipient state machine.

Theory of operation
-------------------
Rule 1: a message body is stored once; each recipient has its own record with
its state, attempt count, next attempt time and last response.
Rule 2: every state change goes through `transition()`, which looks the change
up in TRANSITIONS; a change not in the table is a bug and raises.
Rule 3: records are msgspec Structs encoded as msgpack with a version tag, so a
future field can be added with a default and old spools still load.
"""

from __future__ import annotations

import enum

import msgspec


class State(enum.Enum):
    QUEUED = "queued"        # accepted, never attempted
    DEFERRED = "deferred"    # attempted, temporary failure, waiting for the next try
    INFLIGHT = "inflight"    # leased by the scheduler, a delivery attempt is under way
    DELIVERED = "delivered"
    BOUNCED = "bounced"      # permanent failure (5xx, null MX, NXDOMAIN, operator bounce)
    EXPIRED = "expired"      # temporary failures until max_delivery_time

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({State.DELIVERED, State.BOUNCED, State.EXPIRED})
# The states a recipient waits in, by value (the admin API's queue filter and counts).
PENDING_STATES: list[str] = [s.value for s in State if not s.final]


class Action(enum.Enum):
    LEASE = "lease"          # promoted into an in-memory ready queue
    DELIVER = "deliver"      # remote 2xx
    DEFER = "defer"          # remote 4xx / connection error / timeout
    BOUNCE = "bounce"        # remote 5xx or permanent DNS failure, or operator bounce
    EXPIRE = "expire"        # temporary failure past max_delivery_time
    RECOVER = "recover"      # process died while in flight
    RETRY = "retry"          # operator asked for an attempt now
    RELEASE = "release"      # scheduler gave the lease back without an attempt (shutdown)


TRANSITIONS: dict[tuple[State, Action], State] = {
    (State.QUEUED, Action.LEASE): State.INFLIGHT,
    (State.DEFERRED, Action.LEASE): State.INFLIGHT,
    (State.INFLIGHT, Action.DELIVER): State.DELIVERED,
    (State.INFLIGHT, Action.DEFER): State.DEFERRED,
    (State.INFLIGHT, Action.BOUNCE): State.BOUNCED,
    (State.INFLIGHT, Action.EXPIRE): State.EXPIRED,
    (State.INFLIGHT, Action.RECOVER): State.DEFERRED,
    (State.INFLIGHT, Action.RELEASE): State.DEFERRED,
    (State.QUEUED, Action.RETRY): State.QUEUED,
    (State.DEFERRED, Action.RETRY): State.DEFERRED,
    (State.QUEUED, Action.BOUNCE): State.BOUNCED,
    (State.DEFERRED, Action.BOUNCE): State.BOUNCED,
    (State.QUEUED, Action.EXPIRE): State.EXPIRED,
    (State.DEFERRED, Action.EXPIRE): State.EXPIRED,
}


class IllegalTransition(Exception):
    pass


def transition(state: State, action: Action) -> State:
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        raise IllegalTransition(f"{action.value} is not allowed in state {state.value}") from None


class MessageRecord(msgspec.Struct, array_like=True, tag=1):
    """Everything about a message except its body and per-recipient state."""

    id: str
    sender: str                      # envelope MAIL FROM ("" for a null sender)
    recipients: list[str]            # envelope RCPT TO, index = recipient number
    received_at: float
    size: int
    client_ip: str = ""
    helo: str = ""
    auth_user: str = ""              # "" when accepted from a trusted network
    headers: dict[str, str] = {}     # commonHeaders for events: From, To, Subject, Message-ID, Date
    tags: dict[str, list[str]] = {}  # X-SES-MESSAGE-TAGS and later configuration sets
    configuration_set: str = ""      # X-SES-CONFIGURATION-SET ("" = none)
    # Every header field as sent, for events' mail.headers (relay/events/headers.py: cut
    # at 10 KB, then headers_truncated). Empty in records written before it existed.
    header_fields: list[tuple[str, str]] = []
    headers_truncated: bool = False
    # The tenant that sent it (relay/tenants/model.py); "" in records written before
    # tenants existed, which belong to the default tenant.
    tenant: str = ""
    # X-SES-TRACKING (relay/configsets.py requested_tracking): "" = as the configuration
    # set says; "none", "open", "click": what the message allows of the set's tracking.
    tracking: str = ""


class RecipientRecord(msgspec.Struct, array_like=True, tag=1):
    address: str
    domain: str
    state: State = State.QUEUED
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_attempt_at: float = 0.0
    last_response: str = ""          # the last remote reply or local diagnostic
    remote_mta: str = ""             # host that gave last_response
    updated_at: float = 0.0


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()
