"""Sections of outbound delivery: [delivery], the source IP pools ([[pool]]), warm-up
([[warmup_plan]], [warmup]), mailbox providers' shaping ([[provider]]) and [[backoff]] rules.
"""

from __future__ import annotations

import re
from datetime import date as _date
from typing import Annotated, Literal

import msgspec

from relay.config.types import (
    TENANT_PROBLEM,
    Duration,
    Fraction,
    Network,
    NextHop,
    PoolIp,
    Port,
    PositiveInt,
    parse_duration,
)
from relay.tenants.model import valid_tenant_name

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
            raise ValueError(TENANT_PROBLEM.format(self.tenant))
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
    # A recipient who opened or clicked (a person's hit, not a machine's) within this
    # window counts as engaged: its mail takes the engaged lane. 0: no engagement signal.
    engaged_window: Duration = Duration(30 * 86400)

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
