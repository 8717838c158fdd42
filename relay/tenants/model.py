"""PURE records of the account model: a tenant, its quota, and a reputation status.

A tenant is an isolated sender inside one relay (SES's tenants): its own credentials,
identities, configuration sets, pools, event destinations, suppression scope, quota,
sandbox and reputation status. Every install has the `default` tenant, which existing
credentials and messages belong to without any configuration.

A `StatusRecord` is kept per *scope*: a tenant ("tenant:NAME") or a configuration set
("configuration-set:NAME"). It holds SES's reputation status (Healthy, UnderReview,
Paused), why, who changed it and when, and `last_fresh_start`: the time an operator
resumed it, from which the reputation window counts again (SES's LastFreshStart), so
the figures that caused a pause do not pause it again at once. No I/O here.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

DEFAULT_TENANT = "default"

# SES tenant names: 1-64 letters, digits, '-' and '_'.
TENANT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

ReputationStatus = Literal["Healthy", "UnderReview", "Paused"]
REPUTATION_STATUSES: list[str] = ["Healthy", "UnderReview", "Paused"]

SuppressionScope = Literal["account", "tenant"]
SUPPRESSION_SCOPES: list[str] = ["account", "tenant"]


def valid_tenant_name(name: str) -> bool:
    return bool(TENANT_NAME_RE.fullmatch(name))


def tenant_scope(name: str) -> str:
    """The status scope key of a tenant."""
    return f"tenant:{name}"


def configuration_set_scope(name: str) -> str:
    """The status scope key of a configuration set."""
    return f"configuration-set:{name}"


class Quota(msgspec.Struct, frozen=True, omit_defaults=True):
    """Sending limits (SES's Max24HourSend and MaxSendRate). None: not set here, so the
    next level decides (a credential's override, then its tenant, then [tenants]);
    0 at the last level means unlimited."""

    # Recipients accepted in a rolling 24-hour window.
    max_24h_send: int | None = None
    # Recipients per second (a token bucket of this rate, one second deep).
    max_send_rate: float | None = None


class Tenant(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    created_at: float = 0.0
    # In the sandbox: recipients must be the tenant's verified identities or the mailbox
    # simulator, with the sandbox's own low limits. `relay tenant production` ends it.
    sandbox: bool = False
    production_at: float | None = None
    quota: Quota = Quota()
    # "tenant": the tenant's own suppression list is consulted (and fed) instead of the
    # account-level one (SES's SuppressionScope).
    suppression_scope: SuppressionScope = "account"


class StatusRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """Reputation status of one scope (see the module docstring)."""

    status: ReputationStatus = "Healthy"
    reason: str = ""
    # True when set by the reputation figures, False when set by an operator.
    automatic: bool = False
    changed_at: float = 0.0
    changed_by: str = ""
    last_fresh_start: float = 0.0
    # The figures when the status last changed.
    bounce_rate: float = 0.0
    complaint_rate: float = 0.0
    volume: int = 0

    @property
    def paused(self) -> bool:
        return self.status == "Paused"
