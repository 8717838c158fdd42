"""The suppression check before an attempt and the automatic add after a hard bounce.

`Suppressor.suppressed()` is what the scheduler asks before attempting recipients (one
LMDB read); `Suppressor.after_settle()` is a scheduler settle hook that lists recipients
whose permanent failure is theirs (policy.classify_failure → RECIPIENT). Simulator
addresses are never listed (as with SES's mailbox simulator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from relay.config import Config
from relay.queue.ops import Settled
from relay.queue.records import MessageRecord, State
from relay.queue.store import QueueStore
from relay.suppression.policy import (
    FailureClass,
    Reason,
    auto_adds,
    classify_failure,
    reasons_for,
)
from relay.suppression.store import Entry, SuppressionList

log = logging.getLogger("relay.suppression")

SIMULATOR_DOMAIN = "simulator.relay.test"


class Suppressor:
    def __init__(self, store: QueueStore, config: Callable[[], Config]) -> None:
        self.store = store
        self.list = SuppressionList(store)
        self.config = config

    def suppressed(self, msg: MessageRecord, addresses: Sequence[str]) -> set[str]:
        cfg = self.config()
        cs = cfg.configuration_set_named(msg.configuration_set) \
            if msg.configuration_set else None
        applies = reasons_for(cfg.suppression, cs)
        if not applies:
            return set()
        return {a for a, reason in self.list.reasons(addresses).items() if reason in applies}

    def entry_for_bounce(self, address: str, message_id: str, response: str,
                         now: float) -> Entry | None:
        """An entry to add for a permanent failure, or None (not the recipient's fault)."""
        if address.rpartition("@")[2].lower() == SIMULATOR_DOMAIN:
            return None
        if "OnAccountSuppressionList" in response:
            return None
        if not auto_adds(self.config().suppression, Reason.BOUNCE):
            return None
        if classify_failure(response) is not FailureClass.RECIPIENT:
            return None
        return Entry(address, Reason.BOUNCE.value, now, message_id, response[:300])

    async def after_settle(self, settled: list[Settled], now: float) -> None:
        entries = [e for s in settled if s.recipient.state is State.BOUNCED
                   and (e := self.entry_for_bounce(s.recipient.address, s.message.id,
                                                   s.recipient.last_response, now))]
        if entries:
            added = await self.store.write(self.list.add_op(entries, replace=False))
            if added:
                log.info("suppression: added %d address(es) after hard bounces", added)
