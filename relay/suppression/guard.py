"""The suppression check before an attempt and the automatic add after a hard bounce.

`Suppressor.suppressed()` is what the scheduler asks before attempting recipients (one
LMDB read); `Suppressor.after_settle()` is a scheduler settle hook that lists recipients
whose permanent failure is theirs (policy.classify_failure → RECIPIENT). Simulator
addresses are never listed (as with SES's mailbox simulator).

Which list: the account-level one, or the message's tenant's own list when that tenant's
suppression scope is "tenant" (`scope_of(tenant)` answers the list's tenant, "" for the
account list), so a bounce or complaint against one tenant's mail never stops another's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from relay.config import Config
from relay.events.model import bounce_feedback_id
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
from relay.tenants.model import DEFAULT_TENANT

log = logging.getLogger("relay.suppression")

SIMULATOR_DOMAIN = "simulator.relay.test"


def account_scope(tenant: str) -> str:
    """Every tenant uses the account-level list (no tenant has a list of its own)."""
    return ""


class Suppressor:
    def __init__(self, store: QueueStore, config: Callable[[], Config],
                 scope_of: Callable[[str], str] = account_scope,
                 on_added: Callable[[str, list[Entry]], None] | None = None) -> None:
        """`on_added(tenant, entries)`: told what an automatic add put on a list ("" the
        account's), e.g. to share it with the other nodes of a cluster."""
        self.store = store
        self.on_added = on_added
        self.list = SuppressionList(store)
        self.config = config
        self.scope_of = scope_of
        self._tenant_lists: dict[str, SuppressionList] = {}

    def list_for(self, msg: MessageRecord) -> SuppressionList:
        """The list that applies to `msg`: its tenant's own, or the account's."""
        scope = self.scope_of(msg.tenant or DEFAULT_TENANT)
        if not scope:
            return self.list
        lst = self._tenant_lists.get(scope)
        if lst is None:
            lst = self._tenant_lists[scope] = SuppressionList(self.store, scope)
        return lst

    def suppressed(self, msg: MessageRecord, addresses: Sequence[str]) -> set[str]:
        cfg = self.config()
        cs = cfg.configuration_set_named(msg.configuration_set) \
            if msg.configuration_set else None
        applies = reasons_for(cfg.suppression, cs)
        if not applies:
            return set()
        return {a for a, reason in self.list_for(msg).reasons(addresses).items()
                if reason in applies}

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
        # The Bounce event of this settle (relay/delivery/settle.py) has the same `now`.
        return Entry(address, Reason.BOUNCE.value, now, message_id, response[:300],
                     bounce_feedback_id(message_id, now))

    async def after_settle(self, settled: list[Settled], now: float) -> None:
        by_list: dict[int, tuple[SuppressionList, list[Entry]]] = {}
        for s in settled:
            if s.recipient.state is not State.BOUNCED:
                continue
            e = self.entry_for_bounce(s.recipient.address, s.message.id,
                                      s.recipient.last_response, now)
            if e is not None:
                lst = self.list_for(s.message)
                by_list.setdefault(id(lst), (lst, []))[1].append(e)
        for lst, entries in by_list.values():
            added = await self.store.write(lst.add_op(entries, replace=False))
            if self.on_added is not None:
                self.on_added(lst.tenant, entries)
            if added:
                log.info("suppression: added %d address(es) after hard bounces%s", added,
                         f" (tenant {lst.tenant})" if lst.tenant else "")
