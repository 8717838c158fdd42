"""Asynchronous feedback: bounces (RFC 3464 DSN) and complaints (RFC 5965 ARF).

Owns: `parse` (PURE: bytes → Report, with best-effort text classification and
out-of-office recognition), `processor` (VERP decode → message and recipient → events,
suppression, warm-up reputation), `listener` (the `role = "feedback"` SMTP listener).
Must not: change suppression for a report whose VERP token does not verify (V13), send
any mail in reply (never a DSN for a DSN), or let one bad report stop the listener.
"""
