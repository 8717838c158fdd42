"""Sections of the process and its listeners: [server], [[listener]], [tls], [dns],
[limits] (submission's bounds), [feedback] (the feedback listener's bounds), [admin].
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from relay.config.types import Address, Duration, Nameserver, Network, PositiveInt, Size


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
    # PROXY protocol v1/v2 (a TCP load balancer such as HAProxy's send-proxy-v2): every
    # connection must come from `proxy_trusted` and start with the header, whose client
    # address then stands for the connection's own everywhere.
    proxy_protocol: bool = False
    proxy_trusted: list[Network] = []

    def __post_init__(self) -> None:
        if self.role == "submission" and self.auth == "none" and not self.trusted_networks:
            raise ValueError(
                "auth = \"none\" on a submission listener needs trusted_networks; "
                "relay is never an open relay")
        if self.proxy_protocol and not self.proxy_trusted:
            raise ValueError(
                "proxy_protocol = true needs proxy_trusted: expected the load balancers' "
                "CIDRs, like [\"10.0.0.5/32\"] (a header from anyone else is refused)")
        if self.proxy_protocol and self.role != "submission":
            raise ValueError(
                f"proxy_protocol = true on a role = \"{self.role}\" listener: expected "
                "it on role = \"submission\" listeners only")


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
    # On a proxy_protocol listener: the PROXY header not complete after this long closes
    # the connection (no greeting is sent before it).
    proxy_header_timeout: Duration = Duration(5.0)
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
        if self.proxy_header_timeout <= 0:
            raise ValueError(f"proxy_header_timeout = {self.proxy_header_timeout}: "
                             "expected a duration above 0, like \"5s\"")


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
    # Reverse proxies (addresses or CIDRs) whose X-Forwarded-For gives a tracking hit's
    # client address (relay/admin/api/tracking.py); [] = the peer address.
    trusted_proxies: list[Network] = []
    # How long a tracked message's click links keep redirecting (its link list is kept
    # this long in the spool; a link in a months-old newsletter must not break). Its
    # Open/Click events need the message record, kept for suppression.feedback_window:
    # a hit after that still redirects, and publishes nothing.
    tracked_link_retention: Duration = Duration(365 * 86400.0)
