"""The account-level suppression list and its policy.

Owns: `policy` (PURE: which failures suppress, which reasons apply to a message) and
`store` (the list in the queue's LMDB environment, sub-database "suppression").
Must not: decide anything from a report whose VERP token did not verify (suppression
poisoning); that check belongs to relay/feedback before anything here is called.

Nothing is re-exported here: relay.config imports the pure policy's reason names, and
loading the package must not load the LMDB store with them.
"""
