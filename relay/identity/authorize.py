"""Sending authorization at submission: the glue between the stores and the pure check.

`SenderPolicy(identities, users)` is called by the SMTP session with the authenticated
user (None for a trusted-network client, which may use any verified identity) and an
address (envelope sender or From:); it returns None or the refusal text naming the address.
"""

from __future__ import annotations

from relay.identity.model import authorize
from relay.identity.store import IdentityStore
from relay.users import UserStore


class SenderPolicy:
    def __init__(self, identities: IdentityStore, users: UserStore) -> None:
        self.identities = identities
        self.users = users

    def __call__(self, user: str | None, address: str) -> str | None:
        patterns: list[str] = []
        if user is not None:
            record = self.users.get(user)
            if record is None:
                return f"Sending authorization failed: no credential {user!r}"
            patterns = record.allow
        refusal = authorize(address, user=user, patterns=patterns,
                            verified=self.identities.verified_map())
        return refusal.reason if refusal is not None else None
