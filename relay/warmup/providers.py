"""Mailbox providers and sites, recognised by MX host names.

A *site* is what one throttle covers: every domain whose MX hosts belong to a
known provider shares that provider's site ("gmail"), like KumoMTA's shaping by
site; any other domain's site is its set of MX hosts. Warm-up caps are kept per
provider; unknown MX hosts all count as provider "other".

Patterns are shell-style (`*.google.com`), matched against the lower-cased host
name without its trailing dot; `*.x` also matches `x` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

OTHER = "other"


@dataclass(frozen=True)
class SiteLimits:
    """Traffic shaping for one site (0 = no limit)."""

    max_connections: int = 0
    messages_per_connection: int = 0
    messages_per_second: float = 0.0
    messages_per_hour: int = 0


@dataclass(frozen=True)
class ProviderRule:
    name: str
    patterns: tuple[str, ...]
    limits: SiteLimits = SiteLimits()


# Defaults sensible for the big providers (their published and observed guidance:
# few connections per IP, modest reuse; hourly limits come from warm-up pacing).
BUILTIN_PROVIDERS: tuple[ProviderRule, ...] = (
    ProviderRule("gmail", ("*.google.com", "*.googlemail.com"),
                 SiteLimits(max_connections=20, messages_per_connection=100)),
    ProviderRule("microsoft", ("*.outlook.com", "*.hotmail.com", "*.msn.com"),
                 SiteLimits(max_connections=10, messages_per_connection=20)),
    ProviderRule("yahoo", ("*.yahoodns.net", "*.yahoo.com", "*.aol.com"),
                 SiteLimits(max_connections=10, messages_per_connection=20)),
    ProviderRule("apple", ("*.icloud.com", "*.me.com", "*.apple.com"),
                 SiteLimits(max_connections=10, messages_per_connection=50)),
)
BUILTIN_PROVIDER_NAMES = frozenset(p.name for p in BUILTIN_PROVIDERS)


@dataclass(frozen=True)
class Site:
    provider: str   # a provider name, or OTHER
    key: str        # the throttle key: the provider name, or "mx:" + sorted MX hosts
    limits: SiteLimits


def _matches(host: str, pattern: str) -> bool:
    if fnmatchcase(host, pattern):
        return True
    return pattern.startswith("*.") and host == pattern[2:]


class ProviderMap:
    """Configured rules first (a configured name replaces the built-in), then built-ins."""

    def __init__(self, rules: Sequence[ProviderRule] = (), *, builtins: bool = True,
                 default_limits: SiteLimits = SiteLimits()) -> None:
        names = {r.name for r in rules}
        self.rules: tuple[ProviderRule, ...] = tuple(rules) + tuple(
            r for r in (BUILTIN_PROVIDERS if builtins else ()) if r.name not in names)
        self.default_limits = default_limits
        self._cache: dict[tuple[str, ...], Site] = {}

    def names(self) -> list[str]:
        return [r.name for r in self.rules]

    def limits_of(self, key: str) -> SiteLimits:
        for r in self.rules:
            if r.name == key:
                return r.limits
        return self.default_limits

    def site(self, hosts: Sequence[str]) -> Site:
        key = tuple(sorted({h.lower().rstrip(".") for h in hosts if h}))
        found = self._cache.get(key)
        if found is not None:
            return found
        for rule in self.rules:
            if any(_matches(h, p) for h in key for p in rule.patterns):
                found = Site(rule.name, rule.name, rule.limits)
                break
        else:
            found = Site(OTHER, "mx:" + ",".join(key), self.default_limits)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = found
        return found
