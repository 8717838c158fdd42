"""The SES v2 operations (REST-JSON) on relay's own parts: SendEmail, GetAccount and the
email identities.

`SendEmail` builds the message as the SMTP path does (relay/smtp/session.py `_submit`)
and hands it to the same submitter (the MAIL FROM gate over the queue submitter), so
everything after acceptance is shared: the From authorization of the key's credential,
the account gate (pause, sandbox, rate and 24-hour quota) for its tenant, the header
section rules and the Message-ID/Date completion, configuration sets, tags, DKIM, VERP,
events, quotas and suppression. `Content.Raw` is the client's MIME message;
`Content.Simple` is built by relay/sesapi/mime.py. ConfigurationSetName and TenantName
become the X-SES-CONFIGURATION-SET and X-SES-TENANT fields the submitter reads (and
strips) for SMTP; EmailTags join the message tags. The answer, `{"MessageId": <queue
id>}`, is given only after the message's commit synced, as SMTP's 250.

Every API message carries two tags SES itself adds: `ses:operation` ("SendEmail"; SES
says "SendSmtpEmail" for SMTP) and `ses:caller-identity` (the access key id that signed
the request), so its Send, Delivery, ... events say it came from the API and by which key.

Refusals are `ApiError`s (relay/sesapi/errors.py). Must not: touch the network or block
(everything here is dict lookups and a commit awaited).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from email.policy import compat32
from typing import Any, Literal

from relay.clock import Clock
from relay.config import Config
from relay.config.types import valid_domain
from relay.identity.model import IdentityError, check_identity_name
from relay.identity.outbound import mail_from_settings
from relay.identity.store import IdentityRecord, IdentityStore
from relay.queue.committer import StoreFull, StoreUnavailable
from relay.queue.ops import NewMessage
from relay.queue.store import QueueStore
from relay.sesapi import mime, render
from relay.sesapi.errors import (
    ApiError,
    bad_request,
    for_refusal,
    message_rejected,
    not_found,
    service_unavailable,
)
from relay.sesapi.template_api import template_errors
from relay.sesapi.templates import RequestTemplate, TemplateStore, request_template
from relay.smtp.message import (
    complete_and_list_fields,
    header_addresses,
    header_block,
    header_refusal,
    random_uuid,
    scan_header_section,
)
from relay.smtp.session import MessageRefused, SenderCheck, Submitter
from relay.suppression.policy import SUPPRESSION_REASONS, normalize, valid_address
from relay.suppression.store import Entry, SuppressionList
from relay.tenants.access import credential_tenants
from relay.tenants.account import AccountGate, Transaction
from relay.tenants.model import DEFAULT_TENANT, Quota, Tenant, tenant_scope
from relay.tenants.quota import QuotaBook, effective_limits
from relay.tenants.refusals import Refusal
from relay.tenants.store import TenantStore
from relay.users import UserStore

log = logging.getLogger("relay.sesapi")

MAX_RECIPIENTS = 50  # SES: "Recipient count exceeds 50"
MAX_BULK_ENTRIES = 50  # SES: BulkEmailEntries per SendBulkEmail
# SendBulkEmail's per-entry Status for the error a single send would have answered.
_BULK_STATUS = {
    "MessageRejected": "MESSAGE_REJECTED",
    "MailFromDomainNotVerifiedException": "MAIL_FROM_DOMAIN_NOT_VERIFIED",
    "TooManyRequestsException": "ACCOUNT_THROTTLED",
    "LimitExceededException": "ACCOUNT_DAILY_QUOTA_EXCEEDED",
    "BadRequestException": "INVALID_PARAMETER",
    "ServiceUnavailable": "TRANSIENT_FAILURE",
}
OPERATION_TAG = "ses:operation"
CALLER_TAG = "ses:caller-identity"
# SES message tag names and values: letters, digits, '_', '-', '.', '@'; 256 at most.
_TAG_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,256}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LONG_LINE = re.compile(rb"[^\r\n]{999}")
_ADDRESS_RE = re.compile(r"^[^\s<>()\",;:\\]+@[^\s<>()\",;:\\@]+$")
# SES's EnforcementStatus for relay's reputation statuses.
_MX_FAILURE_IN: dict[str, Literal["use_default", "reject"]] = {
    "USE_DEFAULT_VALUE": "use_default", "REJECT_MESSAGE": "reject"}
_MX_FAILURE_OUT = {v: k for k, v in _MX_FAILURE_IN.items()}
_ENFORCEMENT = {"Healthy": "HEALTHY", "UnderReview": "PROBATION", "Paused": "SHUTDOWN"}


@dataclass(frozen=True)
class Caller:
    """Who signed the request: the access key, the credential it sends as, its address."""

    key_id: str
    user: str
    client_ip: str


@dataclass
class ApiContext:
    """What the operations use, given by relay/app.py from the built parts."""

    config: Callable[[], Config]
    clock: Clock
    users: UserStore
    identities: IdentityStore
    tenants: TenantStore
    quotas: QuotaBook
    account: AccountGate
    submitter: Submitter
    store: QueueStore
    templates: TemplateStore | None = None
    # A domain's DKIM selectors: (active, pending), for GetEmailIdentity's DkimAttributes.
    dkim_selectors: Callable[[str], tuple[list[str], list[str]]] | None = None
    # First DKIM keys for a domain that has none (blocking: RSA key generation).
    dkim_keygen: Callable[[str], None] | None = None
    sender_check: SenderCheck | None = None
    # A MAIL FROM domain's MailFromDomainStatus (its MX now): SUCCESS, FAILED or
    # TEMPORARY_FAILURE (Outbound.mail_from_status); None: PENDING.
    mail_from_status: Callable[[str], Awaitable[str]] | None = None
    on_reject: Callable[[NewMessage, str], None] | None = None
    # A template that cannot render with the message's data (SES's Rendering Failure
    # event): (message, template name, error) -> the id the event gives the message.
    on_rendering_failure: Callable[[NewMessage, str, str], str] | None = None
    # [cluster]: this node (relay.cluster.node.ClusterNode): suppression changes made
    # here reach every node's copy. None: one node.
    cluster: Any = None
    # `relay node drain` in effect (relay/drain.py): sends answer 503, as SMTP 421s.
    draining: Callable[[], bool] = lambda: False


# ---------------------------------------------------------------------- request fields


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str,
           required: bool = False) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise bad_request(f"{where}{key} is required")
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise bad_request(f"{where}{key}: expected {_KINDS.get(kind, 'a value')}")
    return value


_KINDS: dict[type, str] = {str: "a string", list: "a list", dict: "an object",
                           bool: "a boolean"}


def _strings(obj: Mapping[str, Any], key: str, where: str) -> list[str]:
    values = _field(obj, key, list, where) or []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise bad_request(f"{where}{key}[{i}]: expected a string")
    return list(values)


def _address(value: str, where: str) -> str:
    """The bare address of `value` ("Name <a@b>" or "a@b"); BadRequest naming `where`."""
    found = header_addresses(value)
    if len(found) != 1 or not _ADDRESS_RE.match(found[0]) or len(found[0]) > 320:
        raise bad_request(f"{where}: {value!r} is not an email address")
    return found[0]


def _tags(obj: Mapping[str, Any], key: str = "EmailTags", prefix: str = ""
          ) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    for i, tag in enumerate(_field(obj, key, list, prefix) or []):
        where = f"{prefix}{key}[{i}]"
        if not isinstance(tag, dict):
            raise bad_request(f"{where}: expected an object with Name and Value")
        name = _field(tag, "Name", str, f"{where}.", required=True)
        value = _field(tag, "Value", str, f"{where}.", required=True)
        if not _TAG_RE.match(name) or not _TAG_RE.match(value):
            raise bad_request(f"{where}: a tag name and value are 1 to 256 letters, digits, "
                              "'_', '-', '.' or '@'")
        if name.lower().startswith("ses:"):
            raise bad_request(f"{where}.Name: {name!r}: the ses: prefix is reserved")
        tags.setdefault(name, []).append(value)
    return tags


# ---------------------------------------------------------------------- SendEmail


def _raw_message(raw: Any) -> bytes:
    if not isinstance(raw, dict):
        raise bad_request("Content.Raw: expected an object with Data")
    data = _field(raw, "Data", str, "Content.Raw.", required=True)
    try:
        body = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("Content.Raw.Data: not base64") from None
    if not body.strip():
        raise bad_request("Content.Raw.Data: the message is empty")
    # SMTP's line ends: a message written with bare LF (as Python's email package and
    # most SDK examples do) is stored and signed with CRLF, as DATA would have carried it.
    body = re.sub(rb"\r?\n", b"\r\n", body)
    # As DATA refuses it (RFC 5322 2.1.1): no line may be longer than 998 octets, or the
    # next MTA would refuse or break it after relay accepted and signed it.
    if _LONG_LINE.search(body):
        raise message_rejected("Content.Raw.Data: a line of the message is longer than "
                               "998 octets (RFC 5322 2.1.1); encode the body "
                               "(quoted-printable or base64)")
    return body


def _name(request: Mapping[str, Any], key: str, prefix: str = "") -> str:
    """A configuration set or tenant name (SES: letters, digits, '_', '-'; 1-64), ""."""
    value = _field(request, key, str, prefix) or ""
    if value and not _NAME_RE.match(value):
        raise bad_request(f"{prefix}{key}: {value[:80]!r}: expected 1 to 64 letters, "
                          "digits, '_' or '-'")
    return value


def _with_fields(body: bytes, fields: Sequence[tuple[str, str]]) -> bytes:
    """`body` with header fields in front (the request's parameters as the headers the
    shared submitter reads for SMTP; it strips them before queueing). Values are names
    checked by `_name` or addresses checked by `_address`: no CR or LF."""
    lines = b"".join(f"{name}: {value}\r\n".encode() for name, value in fields if value)
    return lines + body


class SesV2:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def _credential(self, caller: Caller) -> Any:
        record = self.ctx.users.get(caller.user)
        if record is None:  # the credential was removed after the key was looked up
            raise ApiError(403, "UnrecognizedClientException",
                           "The security token included in the request is invalid.")
        return record

    async def send_email(self, caller: Caller, request: Mapping[str, Any]) -> dict[str, Any]:
        self._credential(caller)
        if self.ctx.draining():
            raise service_unavailable("This relay node is draining and accepts no mail; "
                                      "send through another node")
        content = _field(request, "Content", dict, "", required=True)
        kinds = [k for k in ("Simple", "Raw", "Template") if content.get(k) is not None]
        if len(kinds) != 1:
            raise bad_request("Content: give exactly one of Simple, Raw or Template")
        destination = _field(request, "Destination", dict, "") or {}
        to = _strings(destination, "ToAddresses", "Destination.")
        cc = _strings(destination, "CcAddresses", "Destination.")
        bcc = _strings(destination, "BccAddresses", "Destination.")
        reply_to = _strings(request, "ReplyToAddresses", "")
        from_value = _field(request, "FromEmailAddress", str, "")
        config_set = _name(request, "ConfigurationSetName")
        tenant_name = _name(request, "TenantName")
        if _field(request, "FromEmailAddressIdentityArn", str, "") or \
                _field(request, "FeedbackForwardingEmailAddressIdentityArn", str, ""):
            raise bad_request("identity ARNs (cross-account sending authorization) are not "
                              "supported by relay")
        feedback = _field(request, "FeedbackForwardingEmailAddress", str, "")
        if feedback:
            _address(feedback, "FeedbackForwardingEmailAddress")
        tags = _tags(request)
        if kinds[0] == "Template":
            if not from_value:
                raise bad_request("FromEmailAddress is required with Content.Template")
            rendered = self._render(caller, content["Template"], from_value, to, cc,
                                    reply_to)
            if isinstance(rendered, tuple):  # a Rendering Failure: accepted, never sent
                return {"MessageId": self._rendering_failure(
                    caller, from_value, to + cc + bcc, tags, config_set, *rendered)}
            body = rendered
        elif kinds[0] == "Simple":
            if not from_value:
                raise bad_request("FromEmailAddress is required with Content.Simple")
            try:
                body = mime.simple_message(content["Simple"], from_address=from_value, to=to,
                                           cc=cc, reply_to=reply_to)
            except mime.MessageError as e:
                raise bad_request(str(e)) from None
        else:
            body = _raw_message(content["Raw"])
        mid = await self._deliver(caller, body, kinds[0] == "Raw", from_value, to, cc, bcc,
                                  tags, config_set, tenant_name)
        return {"MessageId": mid}

    async def _deliver(self, caller: Caller, body: bytes, raw: bool, from_value: str | None,
                       to: list[str], cc: list[str], bcc: list[str],
                       tags: dict[str, list[str]], config_set: str, tenant_name: str) -> str:
        """Queue a built message as SMTP would (the queue id), after the request's checks:
        its recipients, its envelope sender."""
        body = _with_fields(body, [("X-SES-CONFIGURATION-SET", config_set),
                                   ("X-SES-TENANT", tenant_name)])
        if not (to or cc or bcc) and raw:
            # SES: a raw message without Destination goes to its To, Cc and Bcc fields.
            to = [a for name in ("To", "Cc", "Bcc")
                  for a in header_addresses(_header(body, name) or "")]
        recipients = [_address(a, "Destination") for a in to + cc + bcc]
        if not recipients:
            raise bad_request("Destination: at least one recipient is required")
        if len(recipients) > MAX_RECIPIENTS:
            raise message_rejected(f"Recipient count exceeds {MAX_RECIPIENTS}.")
        if from_value:
            sender = _address(from_value, "FromEmailAddress")
        else:
            found = header_addresses(_header(body, "From") or "")
            if not found:
                raise bad_request("FromEmailAddress is required when the raw message has "
                                  "no From header")
            sender = _address(found[0], "the raw message's From")
        return await self._submit(caller, sender, recipients, body, tags)

    async def send_bulk_email(self, caller: Caller, request: Mapping[str, Any]
                              ) -> dict[str, Any]:
        """SendBulkEmail: one message per entry, from the default template with the entry's
        data; each entry queued whole or refused with its own status, never half-queued."""
        self._credential(caller)
        from_value = _field(request, "FromEmailAddress", str, "", required=True)
        default = _field(request, "DefaultContent", dict, "", required=True)
        template = _field(default, "Template", dict, "DefaultContent.", required=True)
        entries = _field(request, "BulkEmailEntries", list, "", required=True)
        if not 1 <= len(entries) <= MAX_BULK_ENTRIES:
            raise bad_request(f"BulkEmailEntries: 1 to {MAX_BULK_ENTRIES} entries")
        reply_to = _strings(request, "ReplyToAddresses", "")
        config_set = _name(request, "ConfigurationSetName")
        tenant_name = _name(request, "TenantName")
        default_tags = _tags(request, "DefaultEmailTags")
        resolved = self._resolve(caller, template, "DefaultContent.Template")
        results: list[dict[str, Any]] = []
        for i, entry in enumerate(entries):
            where = f"BulkEmailEntries[{i}]"
            try:
                if not isinstance(entry, dict):
                    raise bad_request(f"{where}: expected an object")
                destination = _field(entry, "Destination", dict, f"{where}.", required=True)
                to = _strings(destination, "ToAddresses", f"{where}.Destination.")
                cc = _strings(destination, "CcAddresses", f"{where}.Destination.")
                bcc = _strings(destination, "BccAddresses", f"{where}.Destination.")
                tags = {**default_tags, **_tags(entry, "ReplacementTags", f"{where}.")}
                data = resolved.data
                replacement = (entry.get("ReplacementEmailContent") or {}).get(
                    "ReplacementTemplate") or {}
                text = replacement.get("ReplacementTemplateData") \
                    if isinstance(replacement, dict) else None
                if text is not None:
                    with template_errors():
                        data = render.parse_data(
                            text, f"{where}.ReplacementEmailContent.ReplacementTemplate."
                            "ReplacementTemplateData")
                rendered = self._render_resolved(resolved, data, template, from_value, to,
                                                 cc, reply_to)
                if isinstance(rendered, tuple):
                    mid = self._rendering_failure(caller, from_value, to + cc + bcc, tags,
                                                  config_set, *rendered)
                else:
                    mid = await self._deliver(caller, rendered, False, from_value, to, cc,
                                              bcc, tags, config_set, tenant_name)
                results.append({"Status": "SUCCESS", "MessageId": mid})
            except ApiError as e:
                results.append({"Status": _bulk_status(e), "Error": e.message})
        return {"BulkEmailEntryResults": results}

    def _render(self, caller: Caller, template: Any, from_value: str, to: list[str],
                cc: list[str], reply_to: list[str]) -> bytes | tuple[str, str]:
        """The message of a `Content.Template`, or (template name, the rendering
        failure's text)."""
        resolved = self._resolve(caller, template, "Content.Template")
        return self._render_resolved(resolved, resolved.data, template, from_value, to, cc,
                                     reply_to)

    def _resolve(self, caller: Caller, template: Any, where: str) -> RequestTemplate:
        store = self.ctx.templates
        if store is None:
            raise bad_request(f"{where}: templates are not available")
        with template_errors():
            return request_template(store, template, tenant=self._tenant(caller),
                                    where=where)

    def _render_resolved(self, resolved: RequestTemplate, data: dict[str, Any],
                         template: Any, from_value: str, to: list[str], cc: list[str],
                         reply_to: list[str]) -> bytes | tuple[str, str]:
        with template_errors():
            try:
                out = render.render(resolved.compiled, data, template_name=resolved.name)
            except render.RenderingFailure as e:
                return resolved.name, str(e)
            return mime.template_message(out.subject, out.text, out.html,
                                         from_address=from_value, to=to, cc=cc,
                                         reply_to=reply_to, template=template)

    def _rendering_failure(self, caller: Caller, from_value: str, recipients: list[str],
                           tags: dict[str, list[str]], config_set: str, name: str,
                           error: str) -> str:
        """SES accepts a message whose template fails to render, sends nothing, and
        reports a Rendering Failure event; the MessageId is the event's."""
        sender = _address(from_value, "FromEmailAddress")
        rcpts = [_address(a, "Destination") for a in recipients]
        body = _with_fields(b"\r\n", [("From", sender), ("To", ", ".join(rcpts)),
                                       ("X-SES-CONFIGURATION-SET", config_set)])
        msg = NewMessage(sender=sender, recipients=rcpts, body=body,
                         client_ip=caller.client_ip, auth_user=caller.user,
                         headers={"From": sender, "To": ", ".join(rcpts)},
                         tags={**tags, OPERATION_TAG: ["SendEmail"],
                               CALLER_TAG: [caller.key_id]},
                         tenant=self._tenant(caller))
        log.info("%s: api key %s: template %r failed to render: %s", caller.client_ip,
                 caller.key_id, name, error)
        if self.ctx.on_rendering_failure is None:
            raise bad_request(f"Content.Template: {error}")
        return self.ctx.on_rendering_failure(msg, name, error)

    async def _submit(self, caller: Caller, sender: str, recipients: list[str],
                      body: bytes, tags: dict[str, list[str]]) -> str:
        ctx = self.ctx
        cfg = ctx.config()
        limits = cfg.limits
        if len(body) > int(limits.max_message_size):
            raise message_rejected(f"Message length is more than {int(limits.max_message_size)} "
                                   "bytes long")
        if ctx.sender_check is not None:  # as at MAIL FROM
            reason = ctx.sender_check(caller.user, sender)
            if reason is not None:
                raise message_rejected(reason)
        txn = await self._begin(caller, recipients)
        try:
            max_hops = limits.max_hop_count
            section = scan_header_section(body, 0, max_hops, int(limits.max_header_size))
            fault = header_refusal(section, max_hops)
            fields = None
            headers = section.headers
            if fault is None:
                now = ctx.clock.now()
                body, added, fields = complete_and_list_fields(
                    body, section, hostname=cfg.server.hostname, now=now,
                    unique=random_uuid())
                headers.update(added)
            refusal = self._check_from(caller, section.from_value) if fault is None else None
            msg_tags = {**section.tags, **tags, OPERATION_TAG: ["SendEmail"],
                        CALLER_TAG: [caller.key_id]}
            msg = NewMessage(sender=sender, recipients=recipients, body=body,
                             client_ip=caller.client_ip, auth_user=caller.user,
                             headers=headers, tags=msg_tags, header_fields=fields)
            if fault is not None or refusal is not None:
                reason = refusal or (fault.text if fault is not None else "")
                if ctx.on_reject is not None:
                    ctx.on_reject(msg, reason)
                if fault is not None:
                    raise for_refusal(fault.code, fault.enhanced, fault.text)
                raise message_rejected(reason)
            try:
                queue_id = await ctx.submitter.submit(msg, account=txn)
            except MessageRefused as e:
                raise for_refusal(e.reply.code, e.reply.enhanced, e.reply.text) from None
            except StoreFull:
                raise ApiError(503, "ServiceUnavailable",
                               "Insufficient system storage; try again later") from None
            except StoreUnavailable:
                log.exception("api: queue unavailable")
                raise ApiError(503, "ServiceUnavailable",
                               "The queue is temporarily unavailable; try again later"
                               ) from None
        finally:
            txn.release()  # nothing left after a commit (accepted() cleared it)
        log.info("%s: api key %s queued %s from=<%s> rcpts=%d size=%d", caller.client_ip,
                 caller.key_id, queue_id, sender, len(recipients), len(msg.body))
        return queue_id

    async def _begin(self, caller: Caller, recipients: Sequence[str]) -> Transaction:
        """The account gate as for MAIL FROM and each RCPT TO of an SMTP transaction
        (with [cluster], the quotas counted in Redis across the nodes)."""
        gate = self.ctx.account
        txn = gate.begin(caller.user)
        if isinstance(txn, Refusal):
            raise for_refusal(*txn)
        # All recipients at once: with [cluster] one round trip to Redis per request.
        limit = await gate.recipients_shared(txn, recipients)
        if limit is not None:
            txn.release()
            raise for_refusal(*limit)
        return txn

    def _check_from(self, caller: Caller, value: str | None) -> str | None:
        """Every From: address must be one the key's credential may send as (SMTP's
        `_check_from`); a message without From: is refused where senders are checked."""
        check = self.ctx.sender_check
        if check is None:
            return None
        addresses = header_addresses(value or "")
        if not addresses:
            return check(caller.user, "")
        for address in addresses:
            reason = check(caller.user, address)
            if reason is not None:
                return reason
        return None

    # ------------------------------------------------------------------ GetAccount

    async def get_account(self, caller: Caller) -> dict[str, Any]:
        ctx = self.ctx
        record = self._credential(caller)
        name = record.tenant or DEFAULT_TENANT
        tenant = ctx.tenants.get(name) or Tenant(name)
        override = (Quota(record.max_24h_send, record.max_send_rate)
                    if record.max_24h_send is not None or record.max_send_rate is not None
                    else None)
        limits = effective_limits(ctx.config().tenants, tenant, override)
        caps = [limits.tenant] + ([limits.credential] if limits.credential else [])
        daily = [c.max_24h_send for c in caps if c.max_24h_send > 0]
        rate = [c.max_send_rate for c in caps if c.max_send_rate > 0]
        status = ctx.tenants.tenant_status(name).status
        return {
            "DedicatedIpAutoWarmupEnabled": False,
            "EnforcementStatus": _ENFORCEMENT.get(status, "HEALTHY"),
            "ProductionAccessEnabled": not tenant.sandbox,
            "SendQuota": {
                "Max24HourSend": float(min(daily)) if daily else -1.0,
                "MaxSendRate": float(min(rate)) if rate else -1.0,
                "SentLast24Hours": float(await self._sent_last_24h(name)),
            },
            "SendingEnabled": ctx.tenants.paused(name) is None,
        }

    async def _sent_last_24h(self, tenant: str) -> int:
        """The tenant's recipients of the last 24 h: with [cluster], every node's (its
        rolling window in Redis; this node's own figure while Redis is unreachable);
        without, this process's quota book."""
        ctx = self.ctx
        if ctx.cluster is not None:
            count, _from_redis = await ctx.cluster.quota.sent_last_24h(tenant)
            return int(count)
        return ctx.quotas.sent_last_24h(tenant_scope(tenant), ctx.clock.now())

    # ------------------------------------------------------------------ identities

    def _tenant(self, caller: Caller) -> str:
        return self.tenant_of(caller.user)

    def tenant_of(self, user: str) -> str:
        """The tenant credential `user` acts as (its own)."""
        return self._credential(Caller("", user, "")).tenant or DEFAULT_TENANT

    def list_email_identities(self, caller: Caller, query: Mapping[str, str]
                              ) -> dict[str, Any]:
        tenant = self._tenant(caller)
        try:
            page_size = int(query.get("PageSize") or 1000)
            start = int(query.get("NextToken") or 0)
        except ValueError:
            raise bad_request("PageSize and NextToken must be numbers") from None
        if not 1 <= page_size <= 1000 or start < 0:
            raise bad_request("PageSize must be between 1 and 1000")
        visible = sorted(n for n, r in self.ctx.identities.all().items()
                         if not r.tenant or r.tenant == tenant)
        page = visible[start:start + page_size]
        out: dict[str, Any] = {"EmailIdentities": [
            {"IdentityType": "EMAIL_ADDRESS" if "@" in n else "DOMAIN",
             "IdentityName": n, "SendingEnabled": True,
             "VerificationStatus": _verification(self.ctx.identities, n)}
            for n in page]}
        if start + page_size < len(visible):
            out["NextToken"] = str(start + page_size)
        return out

    def _own_identity(self, caller: Caller, name: str) -> IdentityRecord:
        tenant = self._tenant(caller)
        rec = self.ctx.identities.get(name.strip().lower())
        if rec is None or (rec.tenant and rec.tenant != tenant):
            raise not_found(f"Email identity {name} does not exist.")
        return rec

    async def get_email_identity(self, caller: Caller, name: str) -> dict[str, Any]:
        rec = self._own_identity(caller, name)
        status = _verification(self.ctx.identities, rec.name)
        active: list[str] = []
        pending: list[str] = []
        if self.ctx.dkim_selectors is not None:
            active, pending = self.ctx.dkim_selectors(rec.name.rpartition("@")[2])
        dkim: dict[str, Any] = {
            "SigningEnabled": bool(active),
            "Status": "SUCCESS" if active and rec.verified else
                      "PENDING" if active or pending else "NOT_STARTED",
            # SES's tokens are the selectors: relay's records are TXT at
            # <selector>._domainkey.<domain> (`relay dkim show DOMAIN`).
            "Tokens": active + pending, "SigningAttributesOrigin": "AWS_SES"}
        out: dict[str, Any] = {
            "IdentityType": "EMAIL_ADDRESS" if "@" in rec.name else "DOMAIN",
            "FeedbackForwardingStatus": True,
            "VerifiedForSendingStatus": rec.verified,
            "VerificationStatus": status,
            "DkimAttributes": dkim,
            "Tags": [],
        }
        mail_from, on_failure = mail_from_settings(
            rec.name, self.ctx.config().identity, self.ctx.identities.all())
        if mail_from:
            check = self.ctx.mail_from_status
            out["MailFromAttributes"] = {
                "MailFromDomain": mail_from,
                "MailFromDomainStatus": await check(mail_from) if check else "PENDING",
                "BehaviorOnMxFailure": _MX_FAILURE_OUT[on_failure]}
        return out

    async def put_email_identity_mail_from_attributes(
            self, caller: Caller, name: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """The identity's custom MAIL FROM domain (a subdomain of its domain; "" or none
        clears it), used for the return path of its mail from now on, over the
        [[identity]] config's mail_from."""
        rec = self._own_identity(caller, name)
        if rec.tenant != ("" if self._tenant(caller) == DEFAULT_TENANT
                          else self._tenant(caller)):
            raise bad_request(f"Email identity {name} is shared; only the default tenant's "
                              "keys change its MAIL FROM domain")
        raw = _field(request, "MailFromDomain", str, "") or ""
        behavior = _field(request, "BehaviorOnMxFailure", str, "") or "USE_DEFAULT_VALUE"
        if behavior not in _MX_FAILURE_IN:
            raise bad_request("BehaviorOnMxFailure: expected USE_DEFAULT_VALUE or "
                              f"REJECT_MESSAGE, got {behavior!r}")
        mail_from = raw.strip().rstrip(".").lower()
        domain = rec.name.rpartition("@")[2]
        if mail_from and (not valid_domain(mail_from)
                          or not mail_from.endswith("." + domain)):
            raise bad_request(f"MailFromDomain: {raw!r} is not a subdomain of the "
                              f"identity's domain {domain}, e.g. bounce.{domain}")
        try:
            await asyncio.to_thread(self.ctx.identities.set_mail_from, rec.name,
                                    mail_from, _MX_FAILURE_IN[behavior])
        except IdentityError:
            raise not_found(f"Email identity {name} does not exist.") from None
        return {}

    async def create_email_identity(self, caller: Caller, request: Mapping[str, Any]
                                    ) -> dict[str, Any]:
        """A new identity of the caller's tenant (shared when it is the default tenant),
        not verified until the operator's `relay identity verify` finds its DNS records;
        a domain gets DKIM keys when it has none (their selectors are the Tokens)."""
        raw = _field(request, "EmailIdentity", str, "", required=True)
        if request.get("DkimSigningAttributes") is not None:
            raise bad_request("DkimSigningAttributes: bring-your-own DKIM keys are not "
                              "supported through the API; use `relay dkim` on the server")
        tenant = self._tenant(caller)
        owner = "" if tenant == DEFAULT_TENANT else tenant
        try:
            name = check_identity_name(raw)
        except IdentityError as e:
            raise bad_request(f"EmailIdentity: {e}") from None
        if self.ctx.identities.get(name) is not None:
            raise ApiError(400, "AlreadyExistsException",
                           f"Email identity {name} already exists.")
        try:
            await asyncio.to_thread(self.ctx.identities.add, name, owner)
        except IdentityError as e:
            raise ApiError(400, "AlreadyExistsException", str(e)) from None
        if "@" not in name and self.ctx.dkim_keygen is not None:
            await asyncio.to_thread(self.ctx.dkim_keygen, name)
        got = await self.get_email_identity(caller, name)
        return {"IdentityType": got["IdentityType"], "VerifiedForSendingStatus": False,
                "DkimAttributes": got["DkimAttributes"]}

    async def delete_email_identity(self, caller: Caller, name: str) -> dict[str, Any]:
        """Remove an identity the caller's tenant owns (a shared one: the default
        tenant's keys only). Its DKIM keys stay on the server."""
        tenant = self._tenant(caller)
        rec = self.ctx.identities.get(name.strip().lower())
        owner = "" if tenant == DEFAULT_TENANT else tenant
        if rec is None or (rec.tenant and rec.tenant != tenant):
            raise not_found(f"Email identity {name} does not exist.")
        if rec.tenant != owner:
            raise bad_request(f"Email identity {name} is shared; only the default tenant's "
                              "keys remove it")
        try:
            await asyncio.to_thread(self.ctx.identities.remove, rec.name)
        except IdentityError:
            raise not_found(f"Email identity {name} does not exist.") from None
        return {}

    # ------------------------------------------------------------------ configuration sets

    def _sets(self, caller: Caller) -> list[Any]:
        tenant = self._tenant(caller)
        return [cs for cs in self.ctx.config().configuration_set
                if not cs.tenant or cs.tenant == tenant]

    def list_configuration_sets(self, caller: Caller, query: Mapping[str, list[str]]
                                ) -> dict[str, Any]:
        names = sorted(cs.name for cs in self._sets(caller))
        try:
            size = int(_one(query, "PageSize") or 1000)
            start = int(_one(query, "NextToken") or 0)
        except ValueError:
            raise bad_request("PageSize and NextToken must be numbers") from None
        out: dict[str, Any] = {"ConfigurationSets": names[start:start + max(size, 1)]}
        if start + size < len(names):
            out["NextToken"] = str(start + size)
        return out

    def get_configuration_set(self, caller: Caller, name: str) -> dict[str, Any]:
        cs = next((c for c in self._sets(caller) if c.name == name), None)
        if cs is None:
            raise not_found(f"Configuration set <{name}> does not exist.")
        reasons = [r for r in cs.suppression_reasons if r != "account"]
        out: dict[str, Any] = {
            "ConfigurationSetName": cs.name,
            "DeliveryOptions": {"TlsPolicy": "REQUIRE" if cs.tls == "require" else "OPTIONAL",
                                **({"SendingPoolName": cs.pool} if cs.pool else {}),
                                **({"MaxDeliverySeconds": int(cs.max_delivery_time)}
                                   if cs.max_delivery_time else {})},
            "ReputationOptions": {"ReputationMetricsEnabled": True},
            "SendingOptions": {"SendingEnabled": self.ctx.tenants.paused(
                self._tenant(caller), cs.name) is None},
            "Tags": []}
        if "account" not in cs.suppression_reasons:
            out["SuppressionOptions"] = {"SuppressedReasons": reasons}
        return out


    # ------------------------------------------------------------------ suppression

    def _suppression(self, caller: Caller, tenant_name: str | None, write: bool
                     ) -> SuppressionList:
        """The list that applies to the mail of the caller's tenant (or of `tenant_name`,
        one its credential may use): the tenant's own with suppression scope "tenant",
        else the account-level list, which only the default tenant's keys change."""
        record = self._credential(caller)
        allowed = credential_tenants(record.tenant, record.allowed_tenants)
        tenant = tenant_name or allowed[0]
        if tenant not in allowed:
            raise bad_request(f"TenantName: {tenant!r} is not a tenant this key may use")
        t = self.ctx.tenants.get(tenant)
        if t is not None and t.suppression_scope == "tenant":
            return SuppressionList(self.ctx.store, tenant)
        if write and tenant != DEFAULT_TENANT:
            raise bad_request(f"tenant {tenant!r} uses the account-level suppression list, "
                              "which only the default tenant's keys change")
        return SuppressionList(self.ctx.store)

    async def put_suppressed_destination(self, caller: Caller, request: Mapping[str, Any]
                                         ) -> dict[str, Any]:
        raw = _field(request, "EmailAddress", str, "", required=True)
        reason = _field(request, "Reason", str, "", required=True)
        if reason not in SUPPRESSION_REASONS:
            raise bad_request(f"Reason: expected one of {', '.join(SUPPRESSION_REASONS)}, "
                              f"got {reason!r}")
        address = normalize(raw)
        if not valid_address(address):
            raise bad_request(f"EmailAddress: {raw!r} is not an email address")
        lst = self._suppression(caller, _field(request, "TenantName", str, ""), write=True)
        entry = Entry(address, reason, self.ctx.clock.now(), "",
                      f"added through the SES API by {caller.key_id}")
        await self.ctx.store.write(lst.add_op([entry]))
        if self.ctx.cluster is not None:
            self.ctx.cluster.suppression.added(lst.tenant, [entry])
        return {}

    def get_suppressed_destination(self, caller: Caller, raw: str,
                                   query: Mapping[str, list[str]]) -> dict[str, Any]:
        lst = self._suppression(caller, _one(query, "TenantName"), write=False)
        entry = lst.get(normalize(raw))
        if entry is None:
            raise not_found(f"Email address {raw} does not exist on your suppression list.")
        return {"SuppressedDestination": {
            "EmailAddress": entry.address, "Reason": entry.reason,
            "LastUpdateTime": entry.created_at,
            "Attributes": {"MessageId": entry.message_id, "FeedbackId": ""}}}

    async def delete_suppressed_destination(self, caller: Caller, raw: str,
                                            query: Mapping[str, list[str]]) -> dict[str, Any]:
        lst = self._suppression(caller, _one(query, "TenantName"), write=True)
        removed = await self.ctx.store.write(lst.remove_one_op(raw))
        if removed is None:
            raise not_found(f"Email address {raw} does not exist on your suppression list.")
        if self.ctx.cluster is not None:
            self.ctx.cluster.suppression.removed(lst.tenant, [removed])
        return {}

    async def list_suppressed_destinations(self, caller: Caller,
                                           query: Mapping[str, list[str]]) -> dict[str, Any]:
        lst = self._suppression(caller, _one(query, "TenantName"), write=False)
        reasons = set(query.get("Reason", []))
        if reasons - set(SUPPRESSION_REASONS):
            raise bad_request(f"Reason: expected {' or '.join(SUPPRESSION_REASONS)}")
        start, end = _date(query, "StartDate"), _date(query, "EndDate")
        try:
            size = int(_one(query, "PageSize") or 1000)
            offset = int(_one(query, "NextToken") or 0)
        except ValueError:
            raise bad_request("PageSize and NextToken must be numbers") from None
        if not 1 <= size <= 1000 or offset < 0:
            raise bad_request("PageSize must be between 1 and 1000")

        def page() -> tuple[list[Entry], bool]:
            rows: list[Entry] = []
            matched = 0
            for e in lst.entries():
                if (reasons and e.reason not in reasons) or \
                        (start is not None and e.created_at < start) or \
                        (end is not None and e.created_at > end):
                    continue
                if matched >= offset + size:
                    return rows, True
                if matched >= offset:
                    rows.append(e)
                matched += 1
            return rows, False

        rows, more = await asyncio.to_thread(page)
        out: dict[str, Any] = {"SuppressedDestinationSummaries": [
            {"EmailAddress": e.address, "Reason": e.reason, "LastUpdateTime": e.created_at}
            for e in rows]}
        if more:
            out["NextToken"] = str(offset + size)
        return out


def _bulk_status(err: ApiError) -> str:
    if err.code == "SendingPausedException":
        return ("CONFIGURATION_SET_SENDING_PAUSED" if "configuration set" in err.message
                else "ACCOUNT_SENDING_PAUSED")
    if err.code == "NotFoundException":
        return ("CONFIGURATION_SET_NOT_FOUND" if err.message.startswith("Configuration Set")
                else "TEMPLATE_NOT_FOUND")
    return _BULK_STATUS.get(err.code, "FAILED")


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _date(query: Mapping[str, list[str]], name: str) -> float | None:
    """A query timestamp as botocore writes it (ISO 8601) or epoch seconds."""
    text = _one(query, name)
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name}: {text!r} is not a timestamp") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _verification(identities: IdentityStore, name: str) -> str:
    rec = identities.get(name)
    return "SUCCESS" if rec is not None and rec.verified else "PENDING"


def _header(body: bytes, name: str) -> str | None:
    """The first `name` field of the header section, unfolded (None when absent)."""
    text = header_block(body).decode("utf-8", "replace")
    value = HeaderParser(policy=compat32).parsestr(text, headersonly=True).get(name)
    return re.sub(r"\r?\n(?=[ \t])", "", value) if isinstance(value, str) else None
