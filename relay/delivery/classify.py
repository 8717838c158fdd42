"""Delivery result classification: SMTP replies, transport failures, failed routes → Outcome.

PURE. This module owns the mapping from what a remote MTA said (or what went
wrong on the way to it) to one of three kinds: delivered (2xx), deferred (4xx
and every transport failure) or bounced (5xx). It must not import asyncio,
ssl, sockets or aiosmtplib: relay/delivery/client.py translates library
exceptions into a `Failure` name at the boundary (STYLE §3 rule 9) and calls
`from_failure`. A destination that could not be routed (relay/dns/route.py) gets
`from_route`. The Outcome type itself is in relay/delivery/outcome.py.

Enhanced status codes (RFC 3463) are taken from the reply text when present and
their class digit agrees with the reply code; otherwise X.0.0 is derived from
the reply class, so every Outcome carries one.
"""

from __future__ import annotations

import re
from typing import Literal

from relay.delivery.outcome import Kind, Outcome
from relay.dns.route import RouteFailure

__all__ = ["BounceType", "Failure", "Kind", "Outcome", "bounce_type", "from_failure",
           "from_reply", "from_route", "split_enhanced"]

# What can go wrong below the SMTP reply level. client.py maps exceptions here.
Failure = Literal[
    "refused",       # TCP connection refused
    "unreachable",   # no route / network unreachable / bind failed
    "dropped",       # connection reset or closed by the peer mid-session
    "timeout",       # connect, command or data timeout
    "tls_failed",    # STARTTLS handshake failed (or STARTTLS refused)
    "tls_required",  # delivery.tls = "require" and no TLS could be had
    "invalid_address",  # CR/LF or other control characters in an address (RFC 5321 §4.1.2)
    "local_error",   # anything else on our side
]


_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")

_KIND_BY_CLASS: dict[int, Kind] = {2: "delivered", 4: "deferred", 5: "bounced"}


def split_enhanced(code: int, text: str) -> tuple[str, str]:
    """Return (enhanced code, text without it) for one reply.

    Multi-line replies (lines joined by "\\n") repeat the enhanced code on each
    line; it is stripped from every line and the lines are joined with a space.
    """
    klass = code // 100
    enhanced = ""
    lines: list[str] = []
    for raw in text.splitlines() or [""]:
        line = raw.strip()
        m = _ENHANCED_RE.match(line)
        if m and int(m.group(1)) == klass:
            if not enhanced:
                enhanced = m.group(0)
            line = line[m.end():].lstrip()
        if line:
            lines.append(line)
    if not enhanced:
        enhanced = f"{klass}.0.0"
    return enhanced, " ".join(lines)


def from_reply(code: int, text: str, remote_mta: str = "") -> Outcome:
    """Classify one SMTP reply (code and the text after it)."""
    klass = code // 100
    kind = _KIND_BY_CLASS.get(klass)
    if kind is None:
        # 1xx/3xx (or garbage) where a final reply was expected: a protocol
        # error on their side; try again later rather than lose the message.
        return Outcome("deferred", 451, "4.5.0",
                       f"unexpected reply {code} {text.strip()}".rstrip(), remote_mta)
    enhanced, clean = split_enhanced(code, text)
    return Outcome(kind, code, enhanced, clean, remote_mta)


_FAILURES: dict[Failure, tuple[Kind, int, str, str]] = {
    "refused": ("deferred", 451, "4.4.1", "connection refused by {host}"),
    "unreachable": ("deferred", 451, "4.4.1", "cannot connect to {host}"),
    "dropped": ("deferred", 451, "4.4.2", "connection dropped by {host}"),
    "timeout": ("deferred", 451, "4.4.7", "timeout talking to {host}"),
    "tls_failed": ("deferred", 451, "4.7.5", "TLS negotiation failed with {host}"),
    "tls_required": ("deferred", 451, "4.7.5", "TLS required but not available"),
    "invalid_address": ("bounced", 501, "5.1.3", "invalid address"),
    "local_error": ("deferred", 451, "4.3.0", "local error delivering to {host}"),
}


def from_failure(failure: Failure, host: str = "", detail: str = "",
                 remote_mta: str = "") -> Outcome:
    """Classify a failure that produced no SMTP reply.

    `host` names the peer in the text; `detail` (e.g. the OS error) is appended.
    """
    kind, code, enhanced, template = _FAILURES[failure]
    text = template.format(host=host or "remote host")
    if detail:
        text = f"{text}: {detail}"
    return Outcome(kind, code, enhanced, text, remote_mta)


def from_route(failure: RouteFailure) -> Outcome:
    """The outcome for every recipient of a destination that could not be routed (null
    MX, no such domain, a DNS failure, a loop...): bounced when permanent."""
    return Outcome("bounced" if failure.permanent else "deferred", failure.code,
                   failure.enhanced, failure.text)


# ---------------------------------------------------------------------------
# SES-shaped bounce type for events (bounceType, bounceSubType)

BounceType = Literal["Permanent", "Transient", "Undetermined"]

_PERMANENT_SUBTYPES: dict[str, str] = {
    "5.1.1": "NoEmail", "5.1.2": "NoEmail", "5.1.3": "NoEmail", "5.1.6": "NoEmail",
    "5.1.10": "NoEmail",
    "5.2.2": "MailboxFull",
    "5.2.3": "MessageTooLarge", "5.3.4": "MessageTooLarge",
    "5.7.1": "ContentRejected",
}
_TRANSIENT_SUBTYPES: dict[str, str] = {
    "4.2.2": "MailboxFull",
    "4.2.3": "MessageTooLarge", "4.3.4": "MessageTooLarge",
    "4.7.1": "ContentRejected",
}


def bounce_type(outcome: Outcome) -> tuple[BounceType, str]:
    """(bounceType, bounceSubType) as in SES bounce events.

    A bounced outcome is Permanent; a deferred one (reported when it finally
    expires) is Transient. A delivered outcome is not a bounce: Undetermined.
    """
    if outcome.kind == "bounced":
        return "Permanent", _PERMANENT_SUBTYPES.get(outcome.enhanced, "General")
    if outcome.kind == "deferred":
        return "Transient", _TRANSIENT_SUBTYPES.get(outcome.enhanced, "General")
    return "Undetermined", "Undetermined"
