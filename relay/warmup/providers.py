"""Mailbox providers and sites, recognised by MX host names.

A *site* is what one throttle covers: every domain whose MX hosts belong to a
known provider shares that provider's site ("gmail"), like KumoMTA's shaping by
site; any other domain's site is its set of MX hosts. Warm-up caps are kept per
provider; unknown MX hosts all count as provider "other".

Patterns are shell-style (`*.google.com`), matched against the lower-cased host
name without its trailing dot; `*.x` also matches `x` itself.

The built-in providers are data: relay/data/shaping.toml, read and validated when this
module is imported (as the config is at start: unknown keys and values out of range
are errors naming the key), so a damaged copy stops relay before it sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib import resources
from typing import Annotated

import msgspec

from relay import datafile

OTHER = "other"
# The key of a site of no known provider: "mx:" + its sorted MX hosts.
MX_SITE = "mx:"


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


class ShapingError(Exception):
    """The shipped shaping file is not valid; names the file, the key and the problem."""


_Count = Annotated[int, msgspec.Meta(ge=0)]


class _Provider(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One [[provider]] of shaping.toml: the keys of a [[provider]] in relay.toml, all
    required (a shipped default is never left to a default)."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    mx: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
    max_connections: _Count
    messages_per_connection: _Count
    messages_per_second: Annotated[float, msgspec.Meta(ge=0)]
    messages_per_hour: _Count


class _ShapingFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: list[_Provider]


SHAPING_FILE = "data/shaping.toml"


def parse_shaping(text: str, source: str = SHAPING_FILE) -> tuple[ProviderRule, ...]:
    """The provider rules of a shaping file; ShapingError names what is wrong."""
    data = datafile.load(text, source, _ShapingFile,
                         {"": _ShapingFile, "provider": _Provider}, ShapingError)
    seen: set[str] = set()
    for i, p in enumerate(data.provider):
        if p.name == OTHER or p.name in seen:
            why = "is reserved for unknown MX hosts" if p.name == OTHER else "is used twice"
            raise ShapingError(f"{source}: provider[{i}].name: {p.name!r} {why}")
        seen.add(p.name)
    return tuple(
        ProviderRule(p.name, tuple(p.mx), SiteLimits(
            p.max_connections, p.messages_per_connection, p.messages_per_second,
            p.messages_per_hour))
        for p in data.provider)


def _load_builtin() -> tuple[ProviderRule, ...]:
    path = resources.files("relay").joinpath(SHAPING_FILE)
    return parse_shaping(path.read_text(encoding="utf-8"), f"relay/{SHAPING_FILE}")


# Defaults sensible for the big providers: relay/data/shaping.toml.
BUILTIN_PROVIDERS: tuple[ProviderRule, ...] = _load_builtin()
BUILTIN_PROVIDER_NAMES = frozenset(p.name for p in BUILTIN_PROVIDERS)


@dataclass(frozen=True)
class Site:
    provider: str   # a provider name, or OTHER
    key: str        # the throttle key: the provider name, or "mx:" + sorted MX hosts
    limits: SiteLimits


def is_provider_site(key: str) -> bool:
    """Whether site `key` is a provider's (built-in or [[provider]]), whose limits are
    the provider's own and so, with [cluster], hold for all nodes together. Any other
    destination's max_connections is delivery.max_connections_per_destination, a
    per-node limit."""
    return bool(key) and not key.startswith(MX_SITE)


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
            found = Site(OTHER, MX_SITE + ",".join(key), self.default_limits)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = found
        return found
