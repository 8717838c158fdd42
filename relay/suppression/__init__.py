"""The account-level suppression list and its policy.

Owns: `policy` (PURE: which failures suppress, which reasons apply to a message) and
`store` (the list in the queue's LMDB environment, sub-database "suppression").
Must not: decide anything from a report whose VERP token did not verify (RELIABILITY V13);
that check belongs to relay/feedback before anything here is called.
"""

from __future__ import annotations

from relay.suppression.policy import Reason, classify_failure, reasons_for
from relay.suppression.store import Entry, SuppressionList

__all__ = ["Entry", "Reason", "SuppressionList", "classify_failure", "reasons_for"]
