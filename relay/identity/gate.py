"""The submission-time MAIL FROM check (SES MailFromDomainNotVerified), as a Submitter.

`MailFromGate` wraps the queue submitter: before a message is queued it asks
`Outbound.submission_failure()` whether the From identity (on_mx_failure = "reject")
has a MAIL FROM domain without MX, and refuses at the end of DATA (554 5.7.1, with a
Reject event; 451 4.4.3 on a DNS temporary failure) instead of bouncing at delivery.
Identities with "use_default" are never looked up here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from relay.identity.outbound import Outbound
from relay.queue.ops import NewMessage
from relay.smtp.replies import Reply
from relay.smtp.session import MessageRefused, Submitter
from relay.tenants.account import Transaction

log = logging.getLogger(__name__)


class MailFromGate:
    def __init__(self, inner: Submitter, outbound: Outbound,
                 reject: Callable[[NewMessage, str], None] | None = None) -> None:
        self.inner = inner
        self.outbound = outbound
        self.reject = reject  # a Reject event for a permanent refusal

    async def submit(self, msg: NewMessage,
                     on_durable: Callable[[str], None] | None = None,
                     account: Transaction | None = None) -> str:
        failure = await self.outbound.submission_failure(msg.sender,
                                                         msg.headers.get("From", ""))
        if failure is not None:
            log.info("message from <%s> refused: %s", msg.sender, failure.text)
            if failure.kind == "bounced" and self.reject is not None:
                self.reject(msg, failure.text)
            raise MessageRefused(Reply(failure.code, failure.enhanced, failure.text))
        return await self.inner.submit(msg, on_durable, account=account)
