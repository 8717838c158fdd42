"""SMTP listeners: the submission server (TLS, AUTH, session policy) in front of the queue.

Owns: replies (every reply as a constant), authpolicy (pure brute-force defence),
policy (pure HELO/AUTH/MAIL/RCPT/DATA decisions), data (pure DATA end-of-data and
checks), address and message (pure checks at RCPT and DATA), commandlines (pure
command-line cutting), session (the asyncio protocol: the command loop and glue),
server (binding, connection limits, shutdown), admission (implicit TLS counted before its
handshake, the open-file limit, accept() failures).
Must not: touch LMDB directly (it calls a `Submitter`), read the wall clock (a Clock is
injected), or accept mail from a client that is neither authenticated nor trusted.
"""

from __future__ import annotations

from relay.smtp.authpolicy import AuthPolicy
from relay.smtp.server import SubmissionServer
from relay.smtp.session import Submitter

__all__ = ["AuthPolicy", "SubmissionServer", "Submitter"]
