"""The one result of a delivery attempt for one recipient, and the sender chain's shape.

PURE (a leaf: msgspec and the routing Target only). Every path that answers for a
recipient gives an `Outcome`: the network client (relay/delivery/classify.py maps SMTP
replies and transport failures), the mailbox simulator (relay/simulator.py), a local
refusal before sending (suppression list, MAIL FROM domain without MX in
relay/identity/outbound.py), a route that failed (classify.from_route) and a recipient
held back by warm-up caps or shaping (`held`, with `hold_until`). relay/delivery/settle.py
decides from it what the queue does next.

`Sender` is the one protocol of the sender chain the scheduler calls (shaper → attempt
recorder → SMTP client): each link has the client's `send()` and answers with one
Outcome per recipient, as a list or as an object holding `outcomes` (`outcomes_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

from relay.dns.route import Target

Kind = Literal["delivered", "deferred", "bounced"]


class Outcome(msgspec.Struct, frozen=True):
    kind: Kind
    code: int
    enhanced: str
    text: str
    remote_mta: str = ""
    # Set only for a recipient held back by warm-up caps or shaping: no attempt was made,
    # and it is due again at this time (never past its max delivery time).
    hold_until: float | None = None

    @property
    def response(self) -> str:
        """The reply as stored in last_response and put in events ("550 5.1.1 text")."""
        text = self.text
        if self.enhanced and not text.startswith(self.enhanced):
            text = f"{self.enhanced} {text}"
        return f"{self.code} {text}".strip()

    @property
    def diagnostic(self) -> str:
        """RFC 3464 Diagnostic-Code value (after the "smtp; " type)."""
        return f"{self.code} {self.enhanced} {self.text}".rstrip()

    def __str__(self) -> str:
        return self.diagnostic


def held(reason: str, until: float) -> Outcome:
    """A recipient not sent now because of warm-up caps or shaping; due again at `until`."""
    return Outcome("deferred", 451, "4.7.0", reason, "", until)


# A delivery that raised before it had an outcome (a bug or an unexpected error): the
# recipient is tried again later rather than lost.
LOCAL_ERROR = Outcome("deferred", 451, "4.3.0", "local error during delivery")


class HasOutcomes(Protocol):
    """A transaction's result (relay.delivery.client.TransactionResult)."""

    @property
    def outcomes(self) -> Sequence[Outcome]: ...


SendResult = list[Outcome] | HasOutcomes


def outcomes_of(result: SendResult) -> list[Outcome]:
    """The per-recipient outcomes of a send, in the order the recipients were given."""
    if isinstance(result, list):
        return result
    return list(result.outcomes)


class Sender(Protocol):
    """What the scheduler (and each link of the chain below it) sends through."""

    async def send(self, destination: str, targets: Sequence[Target], sender: str,
                   recipients: Sequence[str], data: bytes, *,
                   source_address: str | None = None, ehlo: str | None = None,
                   tls: str | None = None, site: str = "", max_connections: int = 0,
                   messages_per_connection: int = 0) -> SendResult: ...
