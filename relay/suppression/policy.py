"""PURE suppression policy: which failures put a recipient on the list, which reasons apply.

Classify before suppressing: only a failure that is the *recipient's* (RFC 3463 5.1.x
unknown user / bad mailbox / bad domain, null MX, NXDOMAIN) suppresses. A refusal
because of the *sender's* reputation or policy (5.7.x low reputation, blocklists,
DMARC/SPF/DKIM failures) is not the recipient's fault: it never suppresses and goes to
the warm-up backoff of the IP that got it instead. No I/O here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Literal, Protocol


class Reason(enum.Enum):
    BOUNCE = "BOUNCE"
    COMPLAINT = "COMPLAINT"


# The reasons as configuration and the admin API spell them ([suppression].reasons,
# [[configuration_set]].suppression_reasons, ?reason=); the same values as `Reason`.
SuppressionReason = Literal["BOUNCE", "COMPLAINT"]
SUPPRESSION_REASONS: list[str] = [r.value for r in Reason]


class Settings(Protocol):
    """The account's suppression settings (relay.config.Suppression)."""

    @property
    def enabled(self) -> bool: ...

    @property
    def reasons(self) -> Sequence[str]: ...


class SetSettings(Protocol):
    """What a configuration set says about suppression (relay.config.ConfigurationSet)."""

    @property
    def suppression_reasons(self) -> Sequence[str]: ...


class FailureClass(enum.Enum):
    RECIPIENT = "recipient"     # suppress (a hard bounce)
    REPUTATION = "reputation"   # the sender's IP/domain: backoff, never suppress
    OTHER = "other"             # report only (mailbox full, too large, content, ...)


_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPUTATION = re.compile(
    r"reputation|blocklist|blacklist|block list|black list|spamhaus|barracuda|spamcop|"
    r"\bsorbs\b|\brbl\b|\bdnsbl\b|listed (at|on|in)|dmarc|\bspf\b|\bdkim\b|"
    r"unsolicited|spam|policy|not authorized to send|sender address rejected|"
    r"\bS3150\b|\bS3140\b|\bS775\b|\[TSS?\d\d\]|access denied|banned sending ip|"
    r"poor reputation|sending ip|your ip|ip address .* (block|list)", re.IGNORECASE)
_RECIPIENT_TEXT = re.compile(
    r"user unknown|unknown user|no such user|does not exist|doesn't exist|"
    r"recipient not found|recipientnotfound|mailbox unavailable|mailbox not found|"
    r"no mailbox|invalid recipient|address rejected|account (is )?disabled|"
    r"account has been disabled|no such (mailbox|recipient|address)|unrouteable|"
    r"unroutable|host not found|domain not found|nxdomain|null mx|accepts no mail|"
    r"doesn't have a .* account|not our customer|undeliverable address", re.IGNORECASE)


def enhanced(response: str) -> str:
    m = _ENHANCED.search(response)
    return m.group(0) if m else ""


def classify_failure(response: str) -> FailureClass:
    """What a permanent failure (an SMTP reply or DSN diagnostic) means for suppression."""
    code = enhanced(response)
    if code.startswith("5.1.") or code == "5.4.4":  # 5.1.10 null MX; 5.4.4 no such domain
        return FailureClass.RECIPIENT
    if code.startswith("5.7.") or _REPUTATION.search(response):
        return FailureClass.REPUTATION
    generic = code in ("", "5.0.0") or code.startswith("5.5.")
    if generic and _RECIPIENT_TEXT.search(response):
        return FailureClass.RECIPIENT
    return FailureClass.OTHER


def reasons_for(settings: Settings, cs: SetSettings | None) -> frozenset[Reason]:
    """The reasons that keep a message of configuration set `cs` from a listed address."""
    if not settings.enabled:
        return frozenset()
    account = frozenset(Reason(r) for r in settings.reasons)
    if cs is None or "account" in cs.suppression_reasons:
        return account
    return frozenset(Reason(r) for r in cs.suppression_reasons if r != "account")


def is_suppressed(entry_reason: Reason | None, applies: frozenset[Reason]) -> bool:
    return entry_reason is not None and entry_reason in applies


def auto_adds(settings: Settings, reason: Reason) -> bool:
    """Whether a hard bounce / complaint adds to the list automatically."""
    return settings.enabled and reason.value in settings.reasons


def normalize(address: str) -> str:
    return address.strip().strip("<>").lower()


def parse_reason(text: str) -> Reason:
    try:
        return Reason(text.strip().upper())
    except ValueError:
        raise ValueError(f"reason must be BOUNCE or COMPLAINT, got {text!r}") from None


def valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and "." in domain and not any(c.isspace() for c in address))


def sample(values: Sequence[str], n: int = 3) -> str:
    return ", ".join(values[:n]) + (" ..." if len(values) > n else "")
