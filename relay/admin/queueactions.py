"""What the operator's queue actions share between the admin API and `relay queue`: the
responses they settle recipients with, the size of a per-destination action's ops, and
the Bounce events of an operator bounce.
"""

from __future__ import annotations

from relay.events.model import Event, bounce_event
from relay.queue.ops import Settled

OPERATOR_BOUNCE = "554 5.0.0 bounced by the operator"
# A recipient removed by a per-destination delete from a message that keeps recipients
# elsewhere: settled without a bounce event, with this as its last response.
OPERATOR_DELETE = "554 5.0.0 deleted by the operator (no bounce sent)"
# Messages per op of a per-destination action: no one transaction grows with the queue.
DOMAIN_CHUNK = 200


def bounce_events(settled: list[Settled], now: float, hostname: str) -> list[Event]:
    """One Bounce event per message of `settled` (an operator bounce)."""
    by_message: dict[str, list[Settled]] = {}
    for s in settled:
        by_message.setdefault(s.message.id, []).append(s)
    return [bounce_event(group[0].message, [s.recipient.address for s in group],
                         group[0].recipient.last_response, now, hostname)
            for group in by_message.values()]
