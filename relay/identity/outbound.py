"""What happens to a message on its way out: DKIM signature and VERP return path.

`Outbound.prepare()` runs once per delivery attempt of a message to one destination:
it prepends the (cached) DKIM signature and picks the return-path domain: the
identity's MAIL FROM domain (set through the SES API on its record, else its [[identity]]
`mail_from`) when its MX is published; otherwise the server default
(`on_mx_failure = "use_default"`) or a permanent refusal (`"reject"`). A null sender
(a bounce) is never rewritten. `sender_for()` gives each recipient its own VERP address.
When the message's configuration set has `list_unsubscribe`, or open or click tracking
(`tracking`, not turned off by the message's X-SES-TRACKING), signing waits for
`data_for()`: each recipient's copy gets its RFC 8058 List-Unsubscribe headers (the
token is the recipient's VERP token), its HTML rewritten with that recipient's tracking
tokens (relay/tracking/rewrite.py; the key derived from the VERP secret), and its own DKIM
signature over the copy as sent. The copy is made in a worker thread (the rewrite and the
signature are CPU work) and is the same bytes on every attempt, so its cached signature
stays valid. A tracked copy's links and time go to the spool (relay/tracking/links.py,
with the next group commit) for the open and click routes, which outlive the body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from relay.config import Identity
from relay.configsets import TrackingPlan
from relay.delivery.outcome import Outcome
from relay.dkim.sign import Signer
from relay.dns.answers import Resolver
from relay.identity.model import covering, normalize
from relay.identity.store import IdentityRecord
from relay.queue.records import MessageRecord
from relay.smtp.message import header_addresses
from relay.tracking.links import TrackedLinks
from relay.tracking.rewrite import Link, links_of, rewrite
from relay.tracking.token import KEY_LABEL, Tokens
from relay.verp import Verp

log = logging.getLogger(__name__)

MxFailure = Literal["use_default", "reject"]


@dataclass(frozen=True)
class Prepared:
    data: bytes
    return_domain: str | None  # None: keep the submitted envelope sender
    # Not sent: the refusal every recipient gets ("bounced" or "deferred").
    failure: Outcome | None = None
    # "https://host/unsubscribe/": per-recipient List-Unsubscribe, `data` not signed yet.
    unsubscribe: str = ""
    # Open/click tracking: each recipient's copy rewritten, `data` not signed yet.
    tracking: TrackingPlan | None = None

    @property
    def per_recipient(self) -> bool:
        """Each recipient gets its own copy (data_for), so no two share a transaction."""
        return bool(self.unsubscribe) or self.tracking is not None


def settings_for(address: str, identities: Sequence[Identity]) -> Identity | None:
    """The [[identity]] settings covering `address` (an address entry beats its domain)."""
    by_name = {normalize(i.address or i.domain): i for i in identities}
    name = covering(address, by_name)
    return by_name.get(name) if name else None


def mail_from_settings(address: str, identities: Sequence[Identity],
                       records: Mapping[str, IdentityRecord]) -> tuple[str, MxFailure]:
    """(mail_from, on_mx_failure) of the identity covering `address` (an address beats its
    domain): the MAIL FROM set through the API on its record when there is one, else its
    [[identity]] config's; ("", "use_default") when none has one."""
    by_name = {normalize(i.address or i.domain): i for i in identities}
    api = {n: r for n, r in records.items() if r.mail_from}
    name = covering(address, by_name.keys() | api.keys())
    if name is None:
        return "", "use_default"
    if name in api:
        return api[name].mail_from.lower(), api[name].on_mx_failure
    ident = by_name[name]
    return ident.mail_from.lower(), ident.on_mx_failure


def identity_address(from_header: str, sender: str) -> str:
    """The address whose identity decides the return path: the first From:, else the
    envelope sender."""
    return next((a for a in header_addresses(from_header) if "@" in a), sender)


class Outbound:
    def __init__(self, *, signer: Signer | None, verp: Verp | None, resolver: Resolver,
                 identities: Sequence[Identity], default_domain: str,
                 unsubscribe_base: Callable[[MessageRecord], str] | None = None,
                 records: Callable[[], Mapping[str, IdentityRecord]] | None = None,
                 tracking: Callable[[MessageRecord], TrackingPlan | None] | None = None,
                 tracked_links: TrackedLinks | None = None,
                 now: Callable[[], float] | None = None,
                 ) -> None:
        self.signer = signer
        self.verp = verp
        self.resolver = resolver
        self.identities = list(identities)
        self.default_domain = default_domain
        # The List-Unsubscribe URL prefix for a message ("" = none).
        self.unsubscribe_base = unsubscribe_base
        # The identity records (IdentityStore.all): their API-set MAIL FROM wins.
        self.records = records
        # The tracking of a message (relay.configsets.tracking_plan; None = not tracked).
        self.tracking = tracking
        # Where each tracked copy's links and time are kept for the click and open routes
        # (relay/tracking/links.py), and the clock that times the copies.
        self.tracked_links = tracked_links
        self.now = now
        self.tokens = Tokens(verp.derived_key(KEY_LABEL)) if verp is not None else None

    def mail_from_of(self, address: str) -> tuple[str, MxFailure]:
        """(mail_from, on_mx_failure) for mail from `address` (see mail_from_settings)."""
        return mail_from_settings(address, self.identities,
                                  self.records() if self.records is not None else {})

    async def return_domain(self, address: str) -> str | Outcome:
        mail_from, on_mx_failure = self.mail_from_of(address) if address \
            else ("", "use_default")
        if not mail_from:
            return self.default_domain
        mx = await self.resolver.mx(mail_from)
        if mx.ok and any(not r.is_null for r in mx.records):
            return mail_from
        if mx.temporary:
            return Outcome("deferred", 451, "4.4.3",
                           f"MAIL FROM domain {mail_from}: MX lookup failed ({mx.reason})")
        if on_mx_failure == "use_default":
            log.warning("MAIL FROM domain %s has no MX record; using %s", mail_from,
                        self.default_domain)
            return self.default_domain
        return Outcome("bounced", 550, "5.7.1",
                       f"MAIL FROM domain {mail_from} has no MX record and its identity "
                       f"has on_mx_failure = \"reject\"; message not sent")

    async def mail_from_status(self, mail_from: str) -> str:
        """SES's MailFromDomainStatus of `mail_from` now: SUCCESS (an MX is published),
        TEMPORARY_FAILURE (the lookup failed) or FAILED (no MX)."""
        mx = await self.resolver.mx(mail_from)
        if mx.ok and any(not r.is_null for r in mx.records):
            return "SUCCESS"
        return "TEMPORARY_FAILURE" if mx.temporary else "FAILED"

    async def submission_failure(self, sender: str, from_header: str) -> Outcome | None:
        """At the end of DATA, as SES (MailFromDomainNotVerified): a refusal when the
        identity has on_mx_failure = "reject" and its MAIL FROM domain has no MX now
        ("bounced": 554 5.7.1) or the lookup failed ("deferred": 451 4.4.3). None
        otherwise; `return_domain()` still decides again at delivery (DNS can change)."""
        if sender in ("", "<>") or self.verp is None:
            return None
        address = identity_address(from_header, sender)
        mail_from, on_mx_failure = self.mail_from_of(address)
        if not mail_from or on_mx_failure != "reject":
            return None
        mx = await self.resolver.mx(mail_from)
        if mx.ok and any(not r.is_null for r in mx.records):
            return None
        if mx.temporary:
            return Outcome("deferred", 451, "4.4.3",
                           f"MAIL FROM domain {mail_from}: MX lookup failed ({mx.reason}); "
                           "try again later")
        return Outcome("bounced", 554, "5.7.1",
                       f"Message rejected: MailFromDomainNotVerified: MAIL FROM domain "
                       f"{mail_from} of {address} has no MX record (on_mx_failure = "
                       f"\"reject\")")

    async def prepare(self, msg: MessageRecord, body: bytes) -> Prepared:
        domain: str | None = None
        if msg.sender not in ("", "<>") and self.verp is not None:  # "<>": aiosmtpd's null
            rd = await self.return_domain(
                identity_address(msg.headers.get("From", ""), msg.sender))
            if isinstance(rd, Outcome):
                return Prepared(body, None, rd)
            domain = rd
        base = self.unsubscribe_base(msg) if self.unsubscribe_base is not None else ""
        plan = self.tracking(msg) if self.tracking is not None else None
        if self.verp is not None and (base or plan is not None):
            return Prepared(body, domain, unsubscribe=base, tracking=plan)
        if self.signer is not None:
            sig = await self.signer.sign_message(msg.id, body, msg.headers)
            if sig:
                body = sig + body
        return Prepared(body, domain)

    async def data_for(self, prepared: Prepared, msg: MessageRecord, index: int) -> bytes:
        """What recipient `index` is sent: `prepared.data`, or that recipient's own copy
        (List-Unsubscribe headers, tracked HTML) with a DKIM signature covering it."""
        if (not prepared.unsubscribe and prepared.tracking is None) or self.verp is None:
            return prepared.data
        body, links = await asyncio.to_thread(self._copy_for, prepared, msg, index)
        if links is not None and self.tracked_links is not None and self.now is not None:
            # Back on the loop: the links go with the next group commit (never a sync of
            # their own), before the copy is sent.
            self.tracked_links.remember(msg.id, index, links, self.now())
        return body

    def _copy_for(self, prepared: Prepared, msg: MessageRecord,
                  index: int) -> tuple[bytes, list[Link] | None]:
        """Recipient `index`'s copy, signed, and its tracked links (None: not tracked) (in
        a worker thread: CPU work)."""
        assert self.verp is not None
        body = prepared.data
        links: list[Link] | None = None
        if prepared.tracking is not None:
            body, links = self._tracked(body, prepared.tracking, msg.id, index)
        if prepared.unsubscribe:
            url = prepared.unsubscribe + self.verp.token(msg.id, index)
            body = (f"List-Unsubscribe: <{url}>\r\n"
                    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").encode("ascii") \
                + body
        if self.signer is not None:
            body = self.signer.signature(f"{msg.id}/{index}", body, msg.headers) + body
        return body, links

    def _tracked(self, body: bytes, plan: TrackingPlan, queue_id: str,
                 index: int) -> tuple[bytes, list[Link] | None]:
        """The message with recipient `index`'s open pixel and click redirects, and its
        trackable links (None when the copy is not tracked)."""
        tokens = self.tokens
        assert tokens is not None
        try:
            open_url = plan.open_url(tokens.open_token(queue_id, index)) \
                if plan.open_base else None
            tokens.click_token(queue_id, index, 0)  # the id and index fit a token
        except ValueError as e:  # not a queue id of relay's, or > 65535 recipients
            log.warning("message %s recipient %d not tracked: %s", queue_id, index, e)
            return body, None
        click_url: Callable[[int], str] | None = None
        if plan.click_host:
            # Unless every redirect is https, each keeps the scheme of its link.
            links = [] if plan.click_https else links_of(body)

            def click_url(i: int) -> str:
                return plan.click_url(tokens.click_token(queue_id, index, i),
                                      links[i].url if i < len(links) else "")

        done = rewrite(body, open_url=open_url, click_url=click_url)
        return done.data, done.links

    def sender_for(self, prepared: Prepared, msg: MessageRecord, index: int) -> str:
        if prepared.return_domain is None or self.verp is None:
            return msg.sender
        return self.verp.address(msg.id, index, prepared.return_domain)
