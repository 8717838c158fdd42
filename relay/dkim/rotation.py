"""PURE DKIM rotation policy, like SES Easy DKIM.

A rotation creates a *pending* generation; relay switches to it only once every one of
its selectors is seen in DNS with the right key, then the old generation is *retired*
and its record is reported as safe to remove after the grace period. `due()` says when
the schedule (`dkim.rotate_every`) asks for the next rotation. No I/O, no clock reads.
"""

from __future__ import annotations

from collections.abc import Collection

import msgspec

from relay.dkim.keys import DomainKeys, Generation


def due(state: DomainKeys, now: float, rotate_every: float) -> bool:
    """Time for a new pending generation (none pending; the active one is old enough)."""
    active = state.active
    if rotate_every <= 0 or active is None or state.pending is not None:
        return False
    return now >= active.activated_at + rotate_every


def switch(state: DomainKeys, now: float, published: Collection[str]) -> DomainKeys | None:
    """The state after switching to the pending generation, if all its selectors are
    published (`published`: selectors whose DNS record matches); else None."""
    pending = state.pending
    if pending is None or not all(k.selector in published for k in pending.keys):
        return None
    gens: list[Generation] = []
    for g in state.generations:
        if g is pending:
            g = msgspec.structs.replace(g, status="active", activated_at=now)
        elif g.status == "active":
            g = msgspec.structs.replace(g, status="retired", retired_at=now)
        gens.append(g)
    return msgspec.structs.replace(state, generations=gens)


def removable(state: DomainKeys, now: float, grace: float) -> list[Generation]:
    """Retired generations whose public records may now be deleted from DNS."""
    return [g for g in state.with_status("retired") if now >= g.retired_at + grace]


def still_needed(state: DomainKeys, now: float, grace: float) -> list[Generation]:
    """Generations whose records must stay published (active, pending, retired in grace)."""
    gone = {g.name for g in removable(state, now, grace)}
    return [g for g in state.generations if g.name not in gone]
