"""PURE MTA-STS (RFC 8461): the TXT record, the policy file, MX matching and the decision.

Owns: parsing `_mta-sts.<domain>` TXT records (§3.1) and the policy body (§3.2), matching
MX host names against the policy's `mx` patterns (§4.1, a `*.` wildcard covers exactly one
leftmost label), the cache rules (§5.1: valid for max_age, refreshed when the TXT id
changes) and what a policy does to a route (§5): in `enforce` mode only matching MX hosts
are used and each must offer STARTTLS with a certificate valid for its name, so a
downgrade is a 4.7.5 deferral, never plaintext (no outbound TLS downgrade); `testing` mode
delivers as usual and reports what enforce would have refused; `none` changes nothing.
Must not: do I/O, import asyncio/aiohttp/dnspython or read a clock. The fetch and the
cache files live in relay/delivery/mtasts_fetch.py; relay/delivery/routing.py applies it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from relay.dns.route import Route, RouteFailure, Target, Targets

Mode = Literal["enforce", "testing", "none"]

MAX_AGE_LIMIT = 31557600           # §3.2: max_age at most about one year
MAX_POLICY_BYTES = 64 * 1024       # §3.3: senders may limit policy bodies to 64 KiB
WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy, with the TXT id it was fetched under and when (epoch seconds)."""

    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    id: str = ""
    fetched_at: float = 0.0

    def expires_at(self) -> float:
        return self.fetched_at + self.max_age


def txt_id(records: Sequence[str]) -> str | None:
    """The `id` of the one STSv1 TXT record (§3.1), or None when there is none or several.

    Records not starting with "v=STSv1" are ignored; a record without a valid id, or more
    than one STSv1 record, means "no policy" (§3.1: senders must then not apply one).
    """
    found = [r for r in records if r.strip().startswith("v=STSv1")]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1":
        return None
    ident = fields.get("id", "")
    if not (1 <= len(ident) <= 32 and ident.isascii() and ident.isalnum()):
        return None
    return ident


def parse_policy(text: str, *, policy_id: str = "", fetched_at: float = 0.0) -> Policy | str:
    """The policy in `text` (§3.2), or a one-line reason it is not valid."""
    version = ""
    mode = ""
    max_age = ""
    mx: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            return f"policy line without ':' ({line[:60]!r})"
        key, value = key.strip(), value.strip()
        if key == "version":
            version = version or value
        elif key == "mode":
            mode = mode or value
        elif key == "max_age":
            max_age = max_age or value
        elif key == "mx":
            mx.append(value.lower().rstrip("."))
        # other keys: ignored (§3.2, extensibility)
    if version != "STSv1":
        return f"policy version is {version!r}, not 'STSv1'"
    if mode not in ("enforce", "testing", "none"):
        return f"policy mode {mode!r} is not enforce, testing or none"
    if not (max_age.isascii() and max_age.isdigit()) or len(max_age) > 10:
        return f"policy max_age {max_age!r} is not a number of seconds"
    if mode != "none" and not mx:
        return f"policy in mode {mode} lists no mx"
    bad = [p for p in mx if not _valid_pattern(p)]
    if bad:
        return f"policy mx pattern {bad[0]!r} is not valid"
    return Policy(cast(Mode, mode), tuple(dict.fromkeys(mx)), min(int(max_age), MAX_AGE_LIMIT),
                  policy_id, fetched_at)


def _valid_pattern(pattern: str) -> bool:
    name = pattern[2:] if pattern.startswith("*.") else pattern
    return bool(name) and "*" not in name and " " not in name and "." in name


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: exact match, or `*.example.com` for exactly one label more (case-insensitive)."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def allowed(policy: Policy, host: str) -> bool:
    return any(mx_matches(p, host) for p in policy.mx)


def usable(cached: Policy | None, now: float) -> Policy | None:
    """A cached policy still within its max_age (§5.1), else None."""
    if cached is None or now >= cached.expires_at():
        return None
    return cached


def needs_fetch(cached: Policy | None, record_id: str | None, now: float) -> bool:
    """Whether to fetch the policy: a TXT id and no valid cache, or a different id (§5.1)."""
    if record_id is None:
        return False
    live = usable(cached, now)
    return live is None or live.id != record_id


def no_matching_mx(domain: str, hosts: Sequence[str]) -> RouteFailure:
    shown = ", ".join(dict.fromkeys(hosts)) or "none"
    return RouteFailure(False, 451, "4.7.5",
                        f"MTA-STS policy of {domain} (enforce) allows none of its MX hosts "
                        f"({shown})")


def apply(domain: str, policy: Policy | None, route: Route) -> tuple[Route, list[str]]:
    """The route to use under `policy`, and report lines (what testing mode tolerated).

    enforce: targets whose MX name the policy does not list are dropped (none left: a 4.7.5
    deferral) and the rest are marked tls="verify" (STARTTLS required, certificate checked
    against the MX host name, RFC 8461 §4.2). testing: the route is unchanged; MX hosts
    enforce would refuse are reported. none (or no policy): unchanged.
    """
    if policy is None or policy.mode == "none" or not isinstance(route, Targets):
        return route, []
    good = [t for t in route.hosts if allowed(policy, t.host_name)]
    bad = [t.host_name for t in route.hosts if not allowed(policy, t.host_name)]
    if policy.mode == "testing":
        notes = [f"MTA-STS testing policy of {domain}: MX {h} does not match "
                 f"{', '.join(policy.mx)}" for h in dict.fromkeys(bad)]
        return route, notes
    if not good:
        return no_matching_mx(domain, bad), []
    return Targets([_verified(t) for t in good]), []


def _verified(t: Target) -> Target:
    return dataclasses.replace(t, tls="verify")
