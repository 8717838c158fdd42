"""PURE: may a sandbox tenant mail this recipient? (SES's sandbox rule)

In the sandbox a tenant may send only to its own verified identities (the address
itself, or its domain) and to the mailbox simulator; any other recipient is refused at
RCPT with SES's answer, naming the address:
`554 5.7.1 Message rejected: Email address is not verified. The following identities
failed the check: ADDRESS` (SES adds "in region R"; relay has no regions).
The caller gives the tenant's verified identities (a set of lower-case addresses and
domains, or a predicate) and the simulator test (relay/simulator.py: the domain
`simulator.relay.test`); nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from relay.tenants.refusals import Refusal, not_verified


def decide_sandbox_recipient(recipient: str,
                             verified_identities: Container[str] | Callable[[str], bool],
                             is_simulator: Callable[[str], bool]) -> Refusal | None:
    """None when a sandbox tenant may mail `recipient`, else the 554 refusal naming it.
    `verified_identities(identity)` or `identity in verified_identities` is asked for the
    lower-cased address, then its domain; `is_simulator(address)` first."""
    address = recipient.strip().lower()
    if is_simulator(address):
        return None
    verified = (verified_identities if callable(verified_identities)
                else verified_identities.__contains__)
    local, _, domain = address.rpartition("@")
    if local and domain and (verified(address) or verified(domain)):
        return None
    return not_verified(recipient)
