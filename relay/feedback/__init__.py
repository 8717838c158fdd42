"""Asynchronous feedback: bounces (RFC 3464 DSN) and complaints (RFC 5965 ARF).

Owns: `parse` (PURE: bytes → Report, with best-effort text classification and
out-of-office recognition), `bounds` (PURE: MIME part and depth limits of a report),
`offload` (parsing in a separate process, off the event loop), `dataread` (the DATA
section read in chunks), `unparsed` (the store of unparseable mail, bounded in size and
age), `processor` (VERP decode → message and recipient → events, suppression, warm-up
reputation), `listener` (the `role = "feedback"` SMTP listener, with connection caps).
Must not: change suppression for a report whose VERP token does not verify (suppression
poisoning), send any mail in reply (never a DSN for a DSN), let one bad report stop the listener, or
let a stranger's report cost the event loop more than a bounded, C-speed look at it.
"""
