"""PURE identity logic: names, which identity covers an address, sending authorization.

An identity is a domain ("example.com": every address in it and its subdomains) or one
address ("ops@example.com"). Only verified identities may send. A credential's allow list
names identities or address patterns (fnmatch, case-insensitive); an empty list means any
verified identity (like an SES credential allowed ses:SendRawEmail on every identity).
No I/O here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from relay.config import valid_domain


class IdentityError(ValueError):
    """A bad identity name or pattern; one line naming it."""


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def is_address(name: str) -> bool:
    return "@" in name


def domain_of(name: str) -> str:
    return normalize(name.rpartition("@")[2])


def check_identity_name(name: str) -> str:
    """Return the normalized identity name or raise IdentityError."""
    n = normalize(name)
    if is_address(n):
        local, _, dom = n.rpartition("@")
        if not local or "@" in local or not valid_domain(dom) or any(c in n for c in " <>\r\n"):
            raise IdentityError(f"{name!r} is not an email address")
        return n
    if not valid_domain(n):
        raise IdentityError(f"{name!r} is not a domain name or an email address")
    return n


def check_pattern(pattern: str) -> str:
    p = normalize(pattern)
    if not p or any(c in p for c in " <>\r\n,"):
        raise IdentityError(f"{pattern!r} is not an identity or address pattern")
    if not is_address(p) and not any(c in p for c in "*?[") and not valid_domain(p):
        raise IdentityError(f"{pattern!r} is not a domain, an address or a pattern")
    return p


def covering(address: str, identities: Iterable[str]) -> str | None:
    """The identity that covers `address`: the address itself, else its domain or a parent."""
    addr = normalize(address)
    names = set(identities)
    if addr in names:
        return addr
    dom = domain_of(addr)
    parts = dom.split(".")
    for i in range(len(parts) - 1):
        candidate = ".".join(parts[i:])
        if candidate in names:
            return candidate
    return None


def pattern_allows(pattern: str, address: str) -> bool:
    p, addr = normalize(pattern), normalize(address)
    if is_address(p):
        return fnmatch.fnmatchcase(addr, p)
    dom = domain_of(addr)
    if any(c in p for c in "*?["):
        return fnmatch.fnmatchcase(dom, p)
    return dom == p or dom.endswith("." + p)


def allowed(patterns: Iterable[str], address: str) -> bool:
    pats = list(patterns)
    return not pats or any(pattern_allows(p, address) for p in pats)


@dataclass(frozen=True)
class Refusal:
    """Why a sender address may not be used; `reason` names the address."""

    address: str
    reason: str


def authorize(address: str, *, user: str | None, patterns: Iterable[str],
              verified: Mapping[str, bool]) -> Refusal | None:
    """May `user` (None: a trusted-network client) send as `address`?

    `verified` maps every known identity name to whether it is verified.
    """
    ident = covering(address, [n for n, ok in verified.items() if ok])
    if ident is None:
        return Refusal(address, "Email address is not verified. The following identities "
                                f"failed the check: {address}")
    if user is not None and not allowed(patterns, address):
        return Refusal(address, f"Sending authorization failed: credential {user!r} may "
                                f"not send as {address}")
    return None
