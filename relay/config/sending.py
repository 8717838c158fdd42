"""Sections of what mail is sent as and what is said about it: [[identity]], [dkim],
[[configuration_set]], [events], [[event_destination]] and [suppression].
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from relay.config.types import TENANT_PROBLEM, Duration, valid_domain
from relay.events.model import EVENT_TYPE_NAMES, EventTypeName
from relay.suppression.policy import SuppressionReason
from relay.tenants.model import valid_tenant_name


class Identity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of one sending identity (the identity itself is added with `relay identity`)."""

    domain: str
    # Set to one address in `domain` to make this an address identity.
    address: str = ""
    # Custom MAIL FROM: a subdomain of `domain` for the VERP return path ("" = the default).
    mail_from: str = ""
    on_mx_failure: Literal["use_default", "reject"] = "use_default"

    def __post_init__(self) -> None:
        domain = self.domain.lower()
        if not valid_domain(domain):
            raise ValueError(f"domain {self.domain!r} is not a domain name")
        if self.address and self.address.rpartition("@")[2].lower() != domain:
            raise ValueError(f"address {self.address!r} is not in domain {self.domain!r}")
        mf = self.mail_from.lower()
        if mf and (not valid_domain(mf) or not mf.endswith("." + domain)):
            raise ValueError(f"mail_from {self.mail_from!r} must be a subdomain of "
                             f"{self.domain!r}, e.g. \"bounce.{domain}\"")


class Dkim(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Key types `relay dkim keygen` makes by default: rsa | ed25519 | both (dual signing).
    key_type: Literal["rsa", "ed25519", "both"] = "both"
    rsa_bits: Annotated[int, msgspec.Meta(ge=1024, le=4096)] = 2048
    # Start a new selector this long after the current one became active ("0" = never).
    rotate_every: Duration = Duration(90 * 86400)
    # After a switch, the old public record is reported safe to remove after this long.
    grace_period: Duration = Duration(7 * 86400)
    # How often the server checks DNS for pending selectors and rotation schedules.
    check_interval: Duration = Duration(3600)


class Tracking(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[configuration_set.tracking]: open and click tracking of the set's HTML mail."""

    # An open pixel in every HTML part; HTML links rewritten to signed redirects.
    open: bool = False
    click: bool = False
    # The custom tracking domain the pixel and the redirects use, served by relay's HTTP
    # side behind the operator's TLS proxy (required when open or click is true).
    domain: str = ""
    # SES's HttpsPolicy: "require" (pixel and links over https), "require_open_only"
    # (the pixel over https, a link with the scheme of the link it replaces), "optional"
    # (the pixel over http, each link with its own scheme).
    https_policy: Literal["require", "require_open_only", "optional"] = "require"

    def __post_init__(self) -> None:
        if self.domain and not valid_domain(self.domain.lower()):
            raise ValueError(f"domain {self.domain!r}: expected a domain name "
                             "such as \"track.example.com\"")
        if (self.open or self.click) and not self.domain:
            raise ValueError("domain \"\": expected the tracking domain (e.g. "
                             "\"track.example.com\") when open or click is true")


class ConfigurationSet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Chosen per message with X-SES-CONFIGURATION-SET (or X-Relay-Configuration-Set)."""

    name: str
    # Which suppression reasons apply to its mail; ["account"] = those of [suppression].
    suppression_reasons: list[Literal["account", SuppressionReason]] = msgspec.field(
        default_factory=lambda: ["account"])
    # "" = delivery.tls; "require" refuses plain-text delivery (and verifies the
    # certificate with delivery.verify_certificates, as the global "require" does).
    # "opportunistic" never lowers a global delivery.tls = "require".
    tls: Literal["", "opportunistic", "require"] = ""
    # "0" = delivery.max_delivery_time; otherwise shorter than it.
    max_delivery_time: Duration = Duration(0.0)
    # "" = delivery.pool (or the credential's default pool).
    pool: str = ""
    # Priority lanes (relay/warmup/lanes.py): "transactional" mail goes before any other
    # in the ready queues and takes a scarce warm-up cap first; engaged = true puts the
    # set's mail (like a message tagged engagement=high) ahead of bulk on a cold IP.
    priority: Literal["bulk", "transactional"] = "bulk"
    engaged: bool = False
    # Whether events carry the message's headers (mail.headers).
    include_original_headers: bool = True
    # RFC 8058 one-click unsubscribe: each recipient's copy gets List-Unsubscribe (an
    # https URL on the admin server, /unsubscribe/TOKEN) and List-Unsubscribe-Post, both
    # DKIM-signed; a POST there publishes a Subscription event.
    list_unsubscribe: bool = False
    # Whether such an unsubscribe also puts the address on the suppression list
    # (reason COMPLAINT); false leaves the decision to the sender, as SES does.
    unsubscribe_suppresses: bool = False
    # The tenant that owns it ("" = shared by every tenant). Tenants live in the spool
    # (`relay tenant add`), so only the name's syntax is checked here.
    tenant: str = ""
    # Open and click tracking (relay/tracking/); a message turns it off for itself with
    # X-SES-TRACKING (relay/configsets.py).
    tracking: Tracking = msgspec.field(default_factory=Tracking)

    def __post_init__(self) -> None:
        if self.tenant and not valid_tenant_name(self.tenant):
            raise ValueError(TENANT_PROBLEM.format(self.tenant))


class Events(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # JSON lines; relative paths are under server.state_dir.
    log: str = "events.jsonl"
    # Webhook delivery (durable outbox): timeout per POST, backoff between retries
    # (doubling from webhook_retry_min up to webhook_retry_max), and how long an event
    # is kept trying before it is dropped (logged).
    webhook_timeout: Duration = Duration(10.0)
    webhook_retry_min: Duration = Duration(5.0)
    webhook_retry_max: Duration = Duration(600.0)
    webhook_max_age: Duration = Duration(7 * 86400)


class EventDestination(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where events go: a JSON-lines file or a webhook (HTTP POST, HMAC-signed)."""

    name: str
    # A [[configuration_set]] name; "" = every message (account-level).
    configuration_set: str = ""
    type: Literal["file", "webhook"] = "file"
    # file: JSON lines; relative paths are under server.state_dir ("" = "<name>.jsonl").
    path: str = ""
    # webhook: the URL POSTed to, and the secret of the X-Relay-Signature HMAC-SHA256.
    url: str = ""
    secret: str = ""
    event_types: list[EventTypeName] = msgspec.field(
        default_factory=lambda: list(EVENT_TYPE_NAMES))
    enabled: bool = True
    # The tenant that owns it ("" = shared by every tenant). Tenants live in the spool
    # (`relay tenant add`), so only the name's syntax is checked here.
    tenant: str = ""

    def __post_init__(self) -> None:
        if self.type == "webhook" and not re.match(r"^https?://", self.url):
            raise ValueError("a webhook event destination needs url = \"http(s)://...\"")
        if self.tenant and not valid_tenant_name(self.tenant):
            raise ValueError(TENANT_PROBLEM.format(self.tenant))


class Suppression(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The account-level suppression list: recipients on it are not attempted.
    enabled: bool = True
    # Which reasons put an address on the list automatically and keep it from being mailed.
    reasons: list[SuppressionReason] = msgspec.field(
        default_factory=lambda: ["BOUNCE", "COMPLAINT"])
    # How long a sent message's record is kept so a late bounce or complaint can be matched.
    feedback_window: Duration = Duration(14 * 86400)
