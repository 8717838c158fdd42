"""Sending authorization at submission: the glue between the stores and the pure check.

`SenderPolicy(identities, users)` is called by the SMTP session with the authenticated
user (None for a trusted-network client, which may use any verified identity) and an
address (envelope sender or From:; "" for a message with no From: address); it returns
None or the refusal text naming the address.

`require_verified=False` is `server.sender_authorization = "off"`: any address, verified
or not, except that a credential's explicit allow list (`relay user add --allow`) still
holds: a credential limited to some identities never sends as others, whatever the mode.
"""

from __future__ import annotations

from relay.identity.model import allowed, authorize
from relay.identity.store import IdentityStore
from relay.users import UserStore

NO_FROM = "the message has no From: address"


class SenderPolicy:
    def __init__(self, identities: IdentityStore, users: UserStore, *,
                 require_verified: bool = True) -> None:
        self.identities = identities
        self.users = users
        self.require_verified = require_verified

    def __call__(self, user: str | None, address: str) -> str | None:
        patterns: list[str] = []
        if user is not None:
            record = self.users.get(user)
            if record is None:
                return f"Sending authorization failed: no credential {user!r}"
            patterns = record.allow
        if not self.require_verified and not patterns:
            return None  # nothing to hold this client to
        if not address:
            return NO_FROM
        if not self.require_verified:
            if allowed(patterns, address):
                return None
            return (f"Sending authorization failed: credential {user!r} may not send as "
                    f"{address}")
        refusal = authorize(address, user=user, patterns=patterns,
                            verified=self.identities.verified_map())
        return refusal.reason if refusal is not None else None
