"""TOML → typed, validated configuration.

Rule: every key relay reads is declared here, with its default, as a frozen
msgspec Struct. `load()` walks the raw TOML against these declarations and
collects *every* problem (unknown key, wrong type, bad unit, out of range) with
its key path, the value it saw and what it expected, so `relay check-config`
can print them all at once. Nothing else in relay parses configuration.
"""

from __future__ import annotations

import ipaddress
import math
import re
import ssl
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from datetime import date as _date
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from relay.events.model import EVENT_TYPE_NAMES, EventTypeName
from relay.suppression.policy import SuppressionReason
from relay.tenants.model import valid_tenant_name
from relay.warmup.plans import BUILTIN_PLANS
from relay.warmup.providers import BUILTIN_PROVIDER_NAMES

# ---------------------------------------------------------------------------
# Value types with their own syntax


class Duration(float):
    """Seconds, written in config as "30s", "5m", "72h", "90d" or a plain number of seconds."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"30s\", \"5m\", \"72h\" or \"90d\"")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError("expected a finite, non-negative duration")
        return Duration(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return Duration(float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    raise ValueError("expected a duration like \"30s\", \"5m\", \"72h\" or \"90d\"")


class Size(int):
    """Bytes, written as 40000000, "40MB", "512KiB"."""


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
               "gb": 1000**3, "gib": 1024**3}


def parse_size(value: object) -> Size:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Size(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return Size(int(m.group(1)) * _UNIT_BYTES[unit])
    raise ValueError("expected a size in bytes like 40000000 or \"40MB\"")


class HostPort(msgspec.Struct, frozen=True):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: object, default_port: int | None = None) -> HostPort:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected \"host:port\"")
    text = value.strip()
    m = re.match(r"^\[([^\]]*)\](?::(.*))?$", text)  # [v6] or [v6]:port
    if m:
        host, port_s = m.group(1), m.group(2)
        if not _is_ipv6(host):
            raise ValueError("expected an IPv6 address inside [brackets]")
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    elif text.count(":") > 1:  # a bare IPv6 literal; a port needs [brackets]
        if not _is_ipv6(text):
            raise ValueError("expected \"host:port\", with an IPv6 address as \"[::1]:port\"")
        host, port_s = text, None
    else:
        host, port_s = text, None
    if port_s is None:
        if default_port is None:
            raise ValueError("expected \"host:port\" (the port is missing)")
        port = default_port
    else:
        if not re.fullmatch(r"[0-9]{1,5}", port_s) or not 0 < int(port_s) < 65536:
            raise ValueError("expected a port between 1 and 65535")
        port = int(port_s)
    if not host:
        raise ValueError("expected \"host:port\" (the host is missing)")
    return HostPort(host, port)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


class Address(HostPort, frozen=True):
    """A listen address "host:port"."""


class Nameserver(HostPort, frozen=True):
    """A DNS server "host" or "host:port" (default port 53)."""


class NextHop(HostPort, frozen=True):
    """A fixed next hop "host:port" (default port 25), like a Postfix transport entry."""


class Network(str):
    """A CIDR like "10.0.0.0/8" or "::1/128"."""


def parse_network(value: object) -> Network:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR like \"10.0.0.0/8\"")
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("expected a CIDR like \"10.0.0.0/8\"") from None
    return Network(value)


_CUSTOM: dict[type, Any] = {
    Duration: parse_duration,
    Size: parse_size,
    Address: lambda v: Address(**msgspec.structs.asdict(parse_host_port(v))),
    Nameserver: lambda v: Nameserver(**msgspec.structs.asdict(parse_host_port(v, 53))),
    NextHop: lambda v: NextHop(**msgspec.structs.asdict(parse_host_port(v, 25))),
    Network: parse_network,
}


class PoolIp(msgspec.Struct, frozen=True):
    """A source IP of a pool, with its EHLO name ("" = server.hostname or the pool's ehlo table)."""

    address: str
    ehlo: str = ""


def parse_pool_ip(value: object) -> PoolIp:
    expected = 'expected "IP" or {address = "IP", ehlo = "name"}'
    address: object = value
    ehlo: object = ""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"address", "ehlo"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (known keys: address, ehlo)")
        address, ehlo = value.get("address"), value.get("ehlo", "")
    if not isinstance(address, str) or not isinstance(ehlo, str):
        raise ValueError(expected)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address") from None
    return PoolIp(address, ehlo)


_CUSTOM[PoolIp] = parse_pool_ip

# Bounded numbers (Postfix-style min/max tables), checked by load() with the key path.
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]

# ---------------------------------------------------------------------------
# Sections


class Server(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hostname: str = "localhost"
    state_dir: str = "./var"
    # LMDB map size; a sparse reservation, grown on MapFull when the disk allows.
    queue_map_size: Size = Size(1 << 30)
    # Group commit: gather submissions for up to this long, or this many, per fsync.
    commit_window: Duration = Duration(0.002)
    commit_batch_max: PositiveInt = 256
    # Write a development credential on first start and print it once (make run).
    dev_credential: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Domain of the VERP return path (envelope sender) when an identity has no mail_from
    # or its MX is missing with on_mx_failure = "use_default". Empty: server.hostname.
    return_path_domain: str = ""
    # "verified": the From header and envelope sender must be a verified identity the
    # credential may use (554 5.7.1 otherwise). "off": no verification (development
    # only); a credential's explicit allow list still holds.
    sender_authorization: Literal["verified", "off"] = "verified"
    # Processes serving the listeners (SO_REUSEPORT) and delivering (each owns the
    # destinations whose domain hashes to it). 1: a single process, no supervisor.
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1


class Listener(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    address: Address
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    auth: Literal["required", "none"] = "required"
    role: Literal["submission", "feedback"] = "submission"
    trusted_networks: list[Network] = []

    def __post_init__(self) -> None:
        if self.role == "submission" and self.auth == "none" and not self.trusted_networks:
            raise ValueError(
                "auth = \"none\" on a submission listener needs trusted_networks; "
                "relay is never an open relay")


class Tls(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Empty: a self-signed certificate is made under state_dir on first start.
    cert: str = ""
    key: str = ""


class Dns(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    nameservers: list[Nameserver] = []
    timeout: Duration = Duration(5.0)
    # Upper bound on how long any answer is cached, whatever its TTL.
    max_cache_ttl: Duration = Duration(3600.0)
    negative_cache_ttl: Duration = Duration(300.0)


DEFAULT_RETRY_SCHEDULE = ["1m", "5m", "15m", "30m", "1h", "2h"]


class Delivery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    port: Port = 25
    tls: Literal["opportunistic", "require"] = "opportunistic"
    max_delivery_time: Duration = Duration(72 * 3600)
    # Delay before retry N (1-based); the last entry repeats. RFC 5321 §4.5.4.1.
    retry_schedule: Annotated[list[Duration], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [parse_duration(d) for d in DEFAULT_RETRY_SCHEDULE])
    retry_jitter: Fraction = 0.1
    connect_timeout: Duration = Duration(30.0)
    command_timeout: Duration = Duration(300.0)
    data_timeout: Duration = Duration(600.0)
    # 20: Postfix's default_destination_concurrency_limit.
    max_connections_per_destination: PositiveInt = 20
    max_messages_per_connection: PositiveInt = 100
    # Idle delivery connections kept open for reuse, all destinations together (each
    # destination keeps at most max_connections_per_destination); over it the oldest is
    # closed. Bounds fds and memory with many destinations. 0: no connection is kept.
    max_idle_connections: Annotated[int, msgspec.Meta(ge=0)] = 1000
    max_recipients_per_transaction: PositiveInt = 100
    # In-memory ready queue per destination (Postfix's active queue limit). The excess
    # of a promotion is given back for 5 poll intervals: at 1000 a destination taking
    # 400 msgs/s sat idle half the time (bench/RESULTS.md, the throughput work's fifth pass:
    # "accept first, and a one-destination backlog").
    ready_queue_limit: PositiveInt = 5000
    # Total recipients held in memory across all destinations.
    active_limit: PositiveInt = 20000
    # Accept first: while a burst of submissions saturates a process's event loop,
    # delivery holds to two transactions in flight for at most this long, then shares
    # the loop again until the burst ends (relay/delivery/yielding.py). 0: never.
    accept_first_max_hold: Duration = Duration(60.0)
    # Idle pooled connections are closed after this long.
    idle_connection_timeout: Duration = Duration(10.0)
    routes: dict[str, NextHop] = {}
    # Source address to bind for outbound connections (empty: the kernel's choice).
    source_address: str = ""
    # Verify the remote MX certificate (chain and host name) whenever TLS is required:
    # delivery.tls = "require" or a configuration set's tls = "require".
    verify_certificates: bool = False
    # Honour destinations' MTA-STS policies (RFC 8461): under "enforce", only the policy's
    # MX hosts, STARTTLS with a verified certificate, else a 4.7.5 deferral.
    mta_sts: bool = True
    # Timeout of one policy fetch (https://mta-sts.<domain>/.well-known/mta-sts.txt).
    mta_sts_timeout: Duration = Duration(10.0)
    # The pool (see [[pool]]) mail is sent from when nothing chooses another ("" = no pool:
    # source_address above, no warm-up).
    pool: str = ""
    # MX/A answers pointing into these networks (CIDRs) are not connected to; a domain left
    # with no other address is deferred (451 4.4.4). Fixed next hops (routes) are exempt.
    deny_networks: list[Network] = []
    # Per delivery attempt: the MX addresses considered at most (the first in preference
    # order), and the SMTP sessions (connections that got a greeting) opened at most
    # (Postfix's smtp_mx_address_limit and smtp_mx_session_limit). A domain with 100 MX
    # hosts cannot make relay connect to 100 hosts.
    mx_address_limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    mx_session_limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 2


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_message_size: Size = Size(40 * 1000 * 1000)  # the SES limit
    max_recipients: PositiveInt = 50
    max_messages_per_connection: PositiveInt = 1000
    line_length_limit: PositiveInt = 1000  # RFC 5321 §4.5.3.1.6, incl. CRLF
    idle_timeout: Duration = Duration(300.0)
    # Absolute cap on one connection, however active (slowloris that keeps sending).
    session_timeout: Duration = Duration(3600.0)
    max_connections: PositiveInt = 1000
    max_connections_per_ip: PositiveInt = 100
    # A TLS handshake (implicit TLS, STARTTLS) that has not completed after this long is
    # closed; the connection holds its slot under the caps above until then.
    tls_handshake_timeout: Duration = Duration(10.0)
    # Authentication failures: growing delay, then a per-IP lockout.
    auth_failure_delay: Duration = Duration(0.5)
    auth_max_failures: PositiveInt = 5
    auth_lockout: Duration = Duration(900.0)
    # Command lines one connection may send (421 4.7.0 and close beyond), and recipients
    # it may give across all its transactions (452 4.5.3 beyond).
    max_commands_per_session: PositiveInt = 100_000
    max_recipients_per_session: PositiveInt = 10_000
    # Received: header fields a submitted message may carry (Postfix hopcount_limit); past
    # it the message is refused at DATA (554 5.4.6), so a mail loop ends.
    max_hop_count: PositiveInt = 50
    # The header section of a submitted message at most (552 5.3.4 beyond): bounds the
    # work of reading it at DATA (Exim's header_maxsize is 1 MB).
    max_header_size: Size = Size(1_000_000)

    def __post_init__(self) -> None:
        if self.tls_handshake_timeout <= 0:
            raise ValueError(f"tls_handshake_timeout = {self.tls_handshake_timeout}: "
                             "expected a duration above 0, like \"10s\"")


class Feedback(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The role = "feedback" listener (bounces and complaints from anyone on the internet).
    # Largest report accepted (552 5.3.4 beyond); real DSNs and ARF reports are small.
    max_message_size: Size = Size(10 * 1000 * 1000)
    # MIME parts and multipart nesting of one report (554 5.6.0 beyond, not kept).
    max_mime_parts: PositiveInt = 100
    max_mime_depth: PositiveInt = 10
    # Reports are parsed in a separate process; one that takes longer is kept unparsed.
    parse_timeout: Duration = Duration(30.0)
    # Reports that cannot be parsed are kept under state_dir/feedback/unparsed/ for a
    # look by hand; the oldest are removed beyond this total size or past this age.
    unparsed_max_size: Size = Size(100 * 1000 * 1000)
    unparsed_max_age: Duration = Duration(30 * 86400)


class Admin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    address: Address = Address("127.0.0.1", 8025)
    enabled: bool = False
    # Whether GET /metrics needs a bearer token too (Prometheus: `authorization` in the
    # scrape config). The JSON API always does; tokens: `relay admin token add`.
    metrics_auth: bool = False
    # How often the dashboard's queue-depth history is sampled (kept in memory, 360 points).
    history_interval: Duration = Duration(10.0)
    # Where the internet reaches the admin server's public route (/unsubscribe/, RFC 8058
    # one-click), i.e. the HTTPS reverse proxy in front of `address`: List-Unsubscribe
    # URLs are built on it. "": https://<server.hostname>.
    public_url: str = ""


# An AWS region name as clients configure it ("us-east-1", "eu-central-1", "local").
_REGION_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class Api(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The region SES API clients sign for (AWS Signature V4's credential scope) and SES
    # SMTP passwords are derived for (`relay user keys smtp-password`).
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        if len(self.region) > 32 or not _REGION_RE.match(self.region):
            raise ValueError(f"region {self.region!r}: expected a region name like "
                             "\"us-east-1\" (at most 32 lower-case letters, digits and "
                             "single '-')")


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


class Suppression(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The account-level suppression list: recipients on it are not attempted.
    enabled: bool = True
    # Which reasons put an address on the list automatically and keep it from being mailed.
    reasons: list[SuppressionReason] = msgspec.field(
        default_factory=lambda: ["BOUNCE", "COMPLAINT"])
    # How long a sent message's record is kept so a late bounce or complaint can be matched.
    feedback_window: Duration = Duration(14 * 86400)


class Tenants(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Sending quotas (SES's Max24HourSend and MaxSendRate) of a tenant that sets none of
    its own, and the sandbox's limits (relay/tenants/quota.py)."""

    # Recipients per rolling 24 hours, and per second (a token bucket one second deep).
    # 0: unlimited. A tenant's own quota, then a credential's override, replace these.
    max_24h_send: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_send_rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # A tenant in the sandbox sends at most this many (its own lower limits hold).
    sandbox_max_24h_send: PositiveInt = 200
    sandbox_max_send_rate: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # Queued mail of a paused tenant or configuration set is held, not bounced, and looked
    # at again this often until the resume (or its max delivery time).
    paused_recheck: Duration = Duration(60)


# A rate line: a fraction strictly between 0 and 1 (0.05 = 5 %).
RateLine = Annotated[float, msgspec.Meta(gt=0, lt=1)]


class Reputation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Reputation status per tenant and configuration set (relay/tenants/reputation.py):
    UnderReview at the review lines, Paused at the pause lines, over a representative
    volume (the last `window`, widened up to `max_window` to hold `min_volume` sends)."""

    bounce_review: RateLine = 0.05
    bounce_pause: RateLine = 0.10
    complaint_review: RateLine = 0.001
    complaint_pause: RateLine = 0.005
    min_volume: PositiveInt = 1000
    window: Duration = Duration(7 * 86400)
    max_window: Duration = Duration(30 * 86400)

    def __post_init__(self) -> None:
        problems = []
        for kind in ("bounce", "complaint"):
            review = getattr(self, f"{kind}_review")
            pause = getattr(self, f"{kind}_pause")
            if review >= pause:
                problems.append(f"{kind}_review = {review}: expected below {kind}_pause "
                                f"({pause}), the review line comes before the pause line")
        if self.window < 3600:
            problems.append(f"window = {_duration_text(self.window)}: expected at least "
                            "1 hour, like \"7d\" (counts are kept per hour)")
        elif self.max_window < self.window:
            problems.append(f"max_window = {_duration_text(self.max_window)}: expected at "
                            f"least window ({_duration_text(self.window)})")
        if problems:
            raise ValueError("; ".join(problems))


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"\"{int(seconds // size)}{unit}\""
    return f"\"{seconds:g}s\""


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

    def __post_init__(self) -> None:
        if self.tenant and not valid_tenant_name(self.tenant):
            raise ValueError(_TENANT_PROBLEM.format(self.tenant))


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
            raise ValueError(_TENANT_PROBLEM.format(self.tenant))


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def valid_domain(name: str) -> bool:
    return bool(_DOMAIN_RE.match(name))


_TENANT_PROBLEM = ("tenant {!r}: expected \"\" (shared) or a tenant name of 1-64 letters, "
                   "digits, '-' or '_'")


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


class Pool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A named set of source IPs with a warm-up plan and an overflow policy."""

    name: str
    ips: Annotated[list[PoolIp], msgspec.Meta(min_length=1)]
    # EHLO name per IP, for IPs given as plain strings: { "203.0.113.10" = "mta1.example.com" }.
    ehlo: dict[str, str] = {}
    # A built-in plan (ses-standard, double-every-other-day) or a [[warmup_plan]] name;
    # "" = the IPs are already warm (no caps).
    warmup_plan: str = ""
    # Day 1 of the plan, "YYYY-MM-DD" (required with warmup_plan); the IPs send nothing before.
    warmup_start: str = ""
    # Where mail beyond the caps goes: another pool's name, or "defer" (wait for the next window).
    overflow: str = "defer"
    # The tenant that owns it ("" = shared by every tenant). Tenants live in the spool
    # (`relay tenant add`), so only the name's syntax is checked here.
    tenant: str = ""

    def __post_init__(self) -> None:
        if self.tenant and not valid_tenant_name(self.tenant):
            raise ValueError(_TENANT_PROBLEM.format(self.tenant))
        if self.warmup_start:
            try:
                _date.fromisoformat(self.warmup_start)
            except ValueError:
                raise ValueError(f"warmup_start {self.warmup_start!r} is not a date "
                                 "like \"2026-11-23\"") from None
        elif self.warmup_plan:
            raise ValueError("warmup_start (day 1 of the plan) is required with warmup_plan")


class WarmupPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    caps: Annotated[list[PositiveInt], msgspec.Meta(min_length=1)]


class Warmup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # UTC time of day "HH:MM" at which a warm-up day begins.
    day_boundary: str = "00:00"
    # hourly: at most ceil(cap * burst_factor / 24) per IP per provider in a clock hour.
    # none: only the daily cap.
    pacing: Literal["hourly", "none"] = "hourly"
    burst_factor: Annotated[float, msgspec.Meta(ge=1, le=24)] = 2.0
    # Freeze an IP's plan when its bounce or complaint rate over the window exceeds these
    # (once at least reputation_min_messages were sent in the window).
    bounce_rate_limit: Fraction = 0.05
    complaint_rate_limit: Fraction = 0.001
    reputation_window: Duration = Duration(24 * 3600)
    reputation_min_messages: PositiveInt = 200

    def __post_init__(self) -> None:
        if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", self.day_boundary):
            raise ValueError(f"day_boundary {self.day_boundary!r} is not a time like \"00:00\"")

    @property
    def boundary_seconds(self) -> float:
        hours, minutes = self.day_boundary.split(":")
        return int(hours) * 3600.0 + int(minutes) * 60.0


class Provider(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A mailbox provider recognised by MX host patterns; its site's shaping limits."""

    name: str
    mx: Annotated[list[str], msgspec.Meta(min_length=1)]
    max_connections: PositiveInt = 10
    messages_per_connection: PositiveInt = 100
    messages_per_second: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # 0 = no limit
    messages_per_hour: Annotated[int, msgspec.Meta(ge=0)] = 0      # 0 = no limit


class Backoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A response pattern (regular expression) and what it does to the IP toward the provider."""

    pattern: str
    action: Literal["pause", "freeze", "pause_and_freeze"] = "pause_and_freeze"
    duration: Duration = Duration(3600.0)
    provider: str = ""   # "" = any provider

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {e}") from None


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server: Server = Server()
    listener: list[Listener] = []
    tls: Tls = Tls()
    dns: Dns = Dns()
    delivery: Delivery = Delivery()
    limits: Limits = Limits()
    feedback: Feedback = Feedback()
    admin: Admin = Admin()
    api: Api = Api()
    events: Events = Events()
    identity: list[Identity] = []
    dkim: Dkim = Dkim()
    pool: list[Pool] = []
    warmup_plan: list[WarmupPlan] = []
    warmup: Warmup = Warmup()
    provider: list[Provider] = []
    backoff: list[Backoff] = []
    suppression: Suppression = Suppression()
    tenants: Tenants = Tenants()
    reputation: Reputation = Reputation()
    configuration_set: list[ConfigurationSet] = []
    event_destination: list[EventDestination] = []

    def configuration_set_named(self, name: str) -> ConfigurationSet | None:
        for cs in self.configuration_set:
            if cs.name.lower() == name.lower():
                return cs
        return None

    @property
    def state_path(self) -> Path:
        return Path(self.server.state_dir)


# ---------------------------------------------------------------------------
# Loading


class ConfigError(Exception):
    """Every problem found in one config file, each naming key path, value and expectation."""

    def __init__(self, problems: list[str], source: str = "",
                 warnings: list[str] | None = None) -> None:
        self.problems = problems
        self.source = source
        self.warnings = warnings or []  # relay.config.config_warnings of what was valid
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


def _bounds(meta: msgspec.Meta) -> str:
    if meta.ge is not None and meta.le is not None:
        return f"between {meta.ge} and {meta.le}"
    if meta.ge is not None and meta.lt is not None:
        return f"in [{meta.ge}, {meta.lt})"
    parts = [f"{op} {v}" for op, v in ((">=", meta.ge), (">", meta.gt), ("<=", meta.le),
                                        ("<", meta.lt)) if v is not None]
    if meta.min_length is not None:
        parts.append(f"with at least {meta.min_length} item(s)")
    return " and ".join(parts)


def _within(value: Any, meta: msgspec.Meta) -> bool:
    return not (
        (meta.ge is not None and value < meta.ge) or (meta.gt is not None and value <= meta.gt)
        or (meta.le is not None and value > meta.le) or (meta.lt is not None and value >= meta.lt)
        or (meta.min_length is not None and len(value) < meta.min_length))


_NAMES: dict[Any, str] = {
    Duration: 'a duration like "30s"',
    Size: 'a size like "40MB"',
    Address: '"host:port"',
    Nameserver: '"host" or "host:port"',
    NextHop: '"host" or "host:port"',
    Network: 'a CIDR like "10.0.0.0/8"',
    PoolIp: '"IP" or {address = "IP", ehlo = "name"}',
}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        bounds = [_bounds(m) for m in extras if isinstance(m, msgspec.Meta)]
        return " ".join([_describe(base), *[b for b in bounds if b]])
    if origin is Literal:
        return " | ".join(repr(a).replace("'", '"') for a in typing.get_args(tp))
    if origin is list:
        return f"a list (each {_describe(typing.get_args(tp)[0])})"
    if origin is dict:
        return f"a table (each value {_describe(typing.get_args(tp)[1])})"
    if tp in _NAMES:
        return _NAMES[tp]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _walk(raw: object, tp: Any, path: str, problems: list[str]) -> Any:
    """Convert raw TOML data to `tp`, appending every problem to `problems`."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        inner: list[str] = []
        value = _walk(raw, base, path, inner)
        if inner:  # a bare number names its bounds too; a container keeps item-level detail
            problems.extend([f"{path}: expected {_describe(tp)}, got {_show(raw)}"]
                            if base in (int, float) else inner)
            return None
        for meta in extras:
            if isinstance(meta, msgspec.Meta) and not _within(value, meta):
                problems.append(f"{path}: expected {_describe(tp)}, got {_show(raw)}")
                return None
        return value
    if tp in _CUSTOM:
        try:
            return _CUSTOM[tp](raw)
        except ValueError as e:
            problems.append(f"{path}: {e}, got {_show(raw)}")
            return None
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if not isinstance(raw, dict):
            problems.append(f"{path}: expected a table, got {_show(raw)}")
            return None
        fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
        for key in raw:
            if key not in fields:
                known = ", ".join(sorted(fields))
                problems.append(f"{path}.{key}: unknown key (known keys: {known})".lstrip("."))
        values: dict[str, Any] = {}
        before = len(problems)
        hints = typing.get_type_hints(tp, include_extras=True)
        for name, field in fields.items():
            sub = f"{path}.{name}" if path else name
            if name in raw:
                values[field.name] = _walk(raw[name], hints[field.name], sub, problems)
            elif field.required:
                problems.append(f"{sub}: missing, expected {_describe(hints[field.name])}")
        if len(problems) > before:
            return None
        try:
            return tp(**values)
        except (ValueError, TypeError) as e:
            problems.append(f"{path or '(top level)'}: {e}")
            return None
    if origin is list:
        if not isinstance(raw, list):
            problems.append(f"{path}: expected {_describe(tp)}, got {_show(raw)}")
            return None
        (item_tp,) = typing.get_args(tp)
        return [_walk(item, item_tp, f"{path}[{i}]", problems) for i, item in enumerate(raw)]
    if origin is dict:
        if not isinstance(raw, dict):
            problems.append(f"{path}: expected {_describe(tp)}, got {_show(raw)}")
            return None
        _, val_tp = typing.get_args(tp)
        return {k: _walk(v, val_tp, f"{path}.{k}", problems) for k, v in raw.items()}
    if origin in (typing.Union, types.UnionType):
        try:
            return msgspec.convert(raw, tp, strict=True)
        except msgspec.ValidationError:
            problems.append(f"{path}: expected {_describe(tp)}, got {_show(raw)}")
            return None
    try:
        if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        return msgspec.convert(raw, tp, strict=True)
    except msgspec.ValidationError:
        problems.append(f"{path}: expected {_describe(tp)}, got {_show(raw)}")
        return None


def _hosts_overlap(a: str, b: str) -> bool:
    """Whether binding both hosts on one port clashes ("::" also takes IPv4 on Linux)."""
    if a == b or {a, b} & {"::", "*", ""}:
        return True
    if "0.0.0.0" in (a, b):
        other = b if a == "0.0.0.0" else a
        return ":" not in other
    return False


def _check_whole(cfg: Config, skip: AbstractSet[str] = frozenset()) -> Iterable[str]:
    """Rules that span sections; a rule reading a section in `skip` (one that failed its
    own validation, so `cfg` has its defaults there) is left out."""
    for sections, rule in _RULES:
        if not sections & skip:
            yield from rule(cfg)


def _check_binds(cfg: Config) -> Iterable[str]:
    binds = [(f"listener[{i}].address", lst.address) for i, lst in enumerate(cfg.listener)]
    if cfg.admin.enabled:
        binds.append(("admin.address", cfg.admin.address))
    for i, (name, addr) in enumerate(binds):
        for other_name, other in binds[:i]:
            if addr.port == other.port and _hosts_overlap(addr.host, other.host):
                yield f"{name}: \"{addr}\" clashes with {other_name} \"{other}\""
                break


def _check_identities(cfg: Config) -> Iterable[str]:
    seen: set[str] = set()
    for i, ident in enumerate(cfg.identity):
        name = (ident.address or ident.domain).lower()
        if name in seen:
            yield f"identity[{i}]: \"{name}\" is declared twice"
        seen.add(name)


def _check_tls(cfg: Config) -> Iterable[str]:
    if bool(cfg.tls.cert) != bool(cfg.tls.key):
        yield "tls: cert and key must be given together (or both left out for a self-signed one)"
    missing = False
    for name, path in (("tls.cert", cfg.tls.cert), ("tls.key", cfg.tls.key)):
        if path and not Path(path).is_file():
            missing = True
            yield f"{name}: file \"{path}\" does not exist"
    if cfg.tls.cert and cfg.tls.key and not missing:
        problem = _cert_key_problem(cfg.tls.cert, cfg.tls.key)
        if problem:
            yield (f"tls.cert, tls.key: expected a PEM certificate chain and its unencrypted "
                   f"private key, but {problem}")


def _cert_key_problem(cert: str, key: str) -> str:
    """Why the pair cannot serve TLS ("" when it can): unreadable, not PEM, an encrypted
    key (relay has no passphrase), a key that does not match the certificate."""
    try:
        cert_text = Path(cert).read_bytes()[:1 << 20]
        key_text = Path(key).read_bytes()[:1 << 20]
    except OSError as e:
        return f"cannot read {e.filename}: {e.strerror}"
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        return f"{cert} has no PEM certificate (-----BEGIN CERTIFICATE-----)"
    if b"PRIVATE KEY-----" not in key_text:
        return f"{key} has no PEM private key (-----BEGIN PRIVATE KEY-----)"
    if b"ENCRYPTED" in key_text:
        return f"{key} is encrypted; relay needs an unencrypted key (mode 0600)"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            return "the private key does not belong to the certificate"
        return f"OpenSSL: {(e.reason or str(e)).lower().replace('_', ' ')}"
    except OSError as e:
        return f"cannot read {e.filename or cert}: {e.strerror}"
    return ""


def _check_server(cfg: Config) -> Iterable[str]:
    if not valid_hostname(cfg.server.hostname):
        yield (f"server.hostname: expected a host name (RFC 1123: dot-separated labels of "
               f"letters, digits and inner hyphens, at most 63 characters each and 253 in "
               f"all), e.g. \"mail.example.com\", got {_show(cfg.server.hostname)}")


def _check_public_url(cfg: Config) -> Iterable[str]:
    if cfg.admin.public_url and not _is_public_https_url(cfg.admin.public_url):
        yield (f"admin.public_url: expected an https:// URL with a host name and no query "
               f"or fragment, e.g. \"https://mail.example.com\" (RFC 8058 one-click "
               f"unsubscribe needs HTTPS), got \"{cfg.admin.public_url}\"")


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*$")


def valid_hostname(name: str) -> bool:
    """An RFC 1123 host name ("localhost" and "mail.example.com", not "a b!" or "-x.")."""
    return bool(_HOSTNAME_RE.match(name))


def config_warnings(cfg: Config) -> list[str]:
    """Settings that are valid but unsafe where they are: reported by `check-config`
    (and at start), never a reason to refuse the config."""
    out: list[str] = []
    if cfg.server.sender_authorization == "off" and not cfg.server.dev_credential:
        out.append('server.sender_authorization: "off" lets every credential send as any '
                   'address; it is meant for the development config (server.dev_credential '
                   '= true). Use "verified" in production')
    return out


def _is_public_https_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a bad port raises ValueError
    except ValueError:
        return False
    return (parts.scheme == "https" and bool(parts.hostname) and not parts.query
            and not parts.fragment and not parts.username and not parts.password
            and not any(c.isspace() or c in "<>\"" for c in url))


def _check_configuration_sets(cfg: Config) -> Iterable[str]:
    names: set[str] = set()
    pools = {p.name for p in cfg.pool}
    pool_owner = {p.name: p.tenant for p in cfg.pool}
    set_owner = {cs.name.lower(): cs.tenant for cs in cfg.configuration_set}
    for i, cs in enumerate(cfg.configuration_set):
        if not cs.name or cs.name.lower() in names:
            yield f"configuration_set[{i}].name: \"{cs.name}\" is empty or used twice"
        names.add(cs.name.lower())
        if cs.pool and cs.pool not in pools:
            yield f"configuration_set[{i}].pool: no [[pool]] named \"{cs.pool}\""
        elif cs.pool and pool_owner.get(cs.pool) not in ("", cs.tenant):
            yield (f"configuration_set[{i}].pool: pool \"{cs.pool}\" belongs to tenant "
                   f"\"{pool_owner[cs.pool]}\", expected a shared pool or one of tenant "
                   f"\"{cs.tenant or '(shared)'}\"")
        if cs.max_delivery_time > cfg.delivery.max_delivery_time:
            yield (f"configuration_set[{i}].max_delivery_time: must not be longer than "
                   "delivery.max_delivery_time")
    dests: set[str] = set()
    for i, d in enumerate(cfg.event_destination):
        if d.name in dests:
            yield f"event_destination[{i}].name: \"{d.name}\" is used twice"
        dests.add(d.name)
        if d.configuration_set and d.configuration_set.lower() not in names:
            yield (f"event_destination[{i}].configuration_set: no [[configuration_set]] "
                   f"named \"{d.configuration_set}\"")
        elif d.configuration_set and d.tenant \
                and set_owner[d.configuration_set.lower()] not in ("", d.tenant):
            yield (f"event_destination[{i}].configuration_set: configuration set "
                   f"\"{d.configuration_set}\" belongs to tenant "
                   f"\"{set_owner[d.configuration_set.lower()]}\", expected a shared one or "
                   f"one of tenant \"{d.tenant}\"")


def _check_pools(cfg: Config) -> Iterable[str]:
    """Pools, warm-up plans, providers and backoff rules refer to each other by name."""
    plans: set[str] = set()
    for i, plan in enumerate(cfg.warmup_plan):
        if plan.name in BUILTIN_PLANS or plan.name in plans:
            yield f"warmup_plan[{i}].name: \"{plan.name}\" is already a plan name"
        plans.add(plan.name)
    pools: dict[str, int] = {}
    owner: dict[str, str] = {}
    for i, pool in enumerate(cfg.pool):
        if pool.name in pools or pool.name == "defer" or not pool.name:
            yield f"pool[{i}].name: \"{pool.name}\" is empty, \"defer\" or used twice"
        pools.setdefault(pool.name, i)
        for j, ip in enumerate(pool.ips):
            if ip.address in owner:
                yield (f"pool[{i}].ips[{j}]: \"{ip.address}\" is already in pool "
                       f"\"{owner[ip.address]}\"")
            owner.setdefault(ip.address, pool.name)
        addresses = {ip.address for ip in pool.ips}
        for ip_text in pool.ehlo:
            if ip_text not in addresses:
                yield f"pool[{i}].ehlo.{ip_text}: not one of this pool's ips"
        if pool.warmup_plan and pool.warmup_plan not in BUILTIN_PLANS \
                and pool.warmup_plan not in plans:
            known = ", ".join(sorted({*BUILTIN_PLANS, *plans}))
            yield (f"pool[{i}].warmup_plan: no plan \"{pool.warmup_plan}\" "
                   f"(known plans: {known})")
    for i, pool in enumerate(cfg.pool):
        if pool.overflow != "defer" and (pool.overflow not in pools
                                         or pool.overflow == pool.name):
            yield (f"pool[{i}].overflow: expected \"defer\" or another pool's name, "
                   f"got \"{pool.overflow}\"")
    if cfg.delivery.pool and cfg.delivery.pool not in pools:
        yield f"delivery.pool: no [[pool]] named \"{cfg.delivery.pool}\""
    providers: set[str] = set()
    for i, prov in enumerate(cfg.provider):
        if prov.name in providers or prov.name == "other":
            yield f"provider[{i}].name: \"{prov.name}\" is \"other\" or used twice"
        providers.add(prov.name)
    for i, rule in enumerate(cfg.backoff):
        if rule.provider and rule.provider not in providers | BUILTIN_PROVIDER_NAMES | {"other"}:
            yield f"backoff[{i}].provider: no provider \"{rule.provider}\""


# Cross-section rules and the top-level sections each reads.
_RULES: list[tuple[frozenset[str], Callable[[Config], Iterable[str]]]] = [
    (frozenset({"warmup_plan", "pool", "delivery", "provider", "backoff"}), _check_pools),
    (frozenset({"configuration_set", "pool", "delivery", "event_destination"}),
     _check_configuration_sets),
    (frozenset({"listener", "admin"}), _check_binds),
    (frozenset({"identity"}), _check_identities),
    (frozenset({"tls"}), _check_tls),
    (frozenset({"admin"}), _check_public_url),
    (frozenset({"server"}), _check_server),
]
_SECTION = re.compile(r"[A-Za-z_]+")


def _partial(raw: dict[str, Any], problems: list[str]) -> tuple[Config | None, set[str]]:
    """The config made of the sections that passed their own validation (defaults for the
    others) and the names of the failed ones, so the cross-section rules and warnings
    still look at what is good: one run reports every problem."""
    failed = {m.group(0) for p in problems if (m := _SECTION.match(p))}
    known = set(Config.__struct_fields__)
    good = {k: v for k, v in raw.items() if k in known and k not in failed}
    scratch: list[str] = []
    partial = _walk(good, Config, "", scratch)
    return (partial if isinstance(partial, Config) and not scratch else None), failed


def from_dict(raw: dict[str, Any], source: str = "") -> Config:
    problems: list[str] = []
    cfg = _walk(raw, Config, "", problems)
    if isinstance(cfg, Config):
        problems.extend(_check_whole(cfg))
        if problems:
            raise ConfigError(problems, source, config_warnings(cfg))
        return cfg
    warnings: list[str] = []
    if isinstance(raw, dict):
        partial, failed = _partial(raw, problems)
        if partial is not None:
            problems.extend(_check_whole(partial, skip=failed))
            if "server" not in failed:
                warnings = config_warnings(partial)
    raise ConfigError(problems, source, warnings)


def loads(text: str, source: str = "") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], source) from None
    return from_dict(raw, source)


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"cannot read config file: {e.strerror}"], str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError(["config file is not UTF-8 text"], str(p)) from None
    return loads(text, str(p))
