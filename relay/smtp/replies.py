"""Every SMTP reply the submission server sends, as constants.

Each reply carries an RFC 3463 enhanced status code (RFC 2034 ENHANCEDSTATUSCODES), except
the greeting, EHLO/HELO lines and intermediate 334/354 replies, which RFC 2034 exempts.
The replies of the command loop (empty, over-long or unknown command lines) and of the
commands that decide nothing (NOOP, RSET, QUIT, HELP, VRFY, EXPN) keep aiosmtpd's
wording, which clients and tests have seen, written by the session as those literals;
`enhance()` maps them to ours so no reply leaves without an enhanced code. It changes no
decision: every other command is answered by relay/smtp/policy.py. Tests import these
constants instead of repeating strings.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Reply(NamedTuple):
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


# --- success -------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
QUEUED = Reply(250, "2.0.0", "Ok: queued as {queue_id}")  # text is a template
# A message `relay queue transfer` sent before (relay/queue/transferlog.py): not queued
# again. The sender counts it by "(duplicate transfer" (relay/cli/transfer.py).
TRANSFER_DUPLICATE = Reply(250, "2.0.0", "Ok: already queued as {queue_id} "
                                         "(duplicate transfer {transfer_id})")
BYE = Reply(221, "2.0.0", "Bye")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")

# --- temporary failures --------------------------------------------------------------
TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
SESSION_TIMEOUT = Reply(421, "4.4.2", "Error: session time limit exceeded")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Error: too many connections")
TOO_MANY_CONNECTIONS_FROM_IP = Reply(421, "4.7.0", "Error: too many connections from your IP")
TOO_MANY_MESSAGES = Reply(421, "4.7.0", "Error: too many messages in this connection")
TOO_MANY_AUTH_ATTEMPTS = Reply(421, "4.7.0", "Error: too many AUTH attempts")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Error: too many commands in this connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
# `relay node drain`: this node takes no new mail while it finishes its queue.
DRAINING = Reply(421, "4.3.2", "Service not available on this node (draining), try again later")
AUTH_LOCKED = Reply(454, "4.7.0", "Temporary authentication failure, try again later")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
TOO_MANY_SESSION_RECIPIENTS = Reply(452, "4.5.3",
                                    "Error: too many recipients in this connection")
STORE_FULL = Reply(452, "4.3.1", "Insufficient system storage")
STORE_UNAVAILABLE = Reply(451, "4.3.0", "Error: queue temporarily unavailable, try again later")
INTERNAL_ERROR = Reply(451, "4.3.0", "Error: internal error, try again later")

# --- permanent failures --------------------------------------------------------------
# `relay queue transfer --to` reached the sending node itself (RFC 3463 X.4.6: routing
# loop); the sender stops at this code (relay/cli/transfer.py).
TRANSFER_TO_SELF = Reply(550, "5.4.6", "Transfer refused: {transfer_id} is a message of "
                                       "this node's own queue (a transfer to self)")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
# A STARTTLS listener that requires AUTH, before STARTTLS (AUTH is not offered yet).
STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
# Sending authorization (identities): text is replaced by the reason naming the address.
SENDER_NOT_AUTHORIZED = Reply(550, "5.7.1", "Sender address rejected")
MESSAGE_REJECTED = Reply(554, "5.7.1", "Message rejected")
# Postfix's wording for a message past its hop limit (a mail loop).
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops")
# A field RFC 5322 §3.6 allows once, given twice (Gmail: "Multiple 'From' headers").
HEADER_REPEATED = Reply(554, "5.6.0", "Message rejected: more than one '{name}' header "
                                      "field (RFC 5322 allows one)")
# SES: "554 Configuration Set does not exist: Configuration set <name> does not exist."
CONFIGURATION_SET_UNKNOWN = Reply(554, "5.3.0", "Configuration Set does not exist: "
                                                "Configuration set {name} does not exist.")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication "
                                           "mechanism")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_UNAVAILABLE = Reply(502, "5.5.1", "Error: AUTH not available on this listener")
AUTH_MECHANISM_UNKNOWN = Reply(504, "5.5.4", "Unrecognized authentication type")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH <mechanism> [initial-response]")
NEED_EHLO = Reply(503, "5.5.1", "Error: send EHLO first")
BAD_HELO = Reply(501, "5.5.4", "Syntax: EHLO hostname (printable characters only)")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
SOURCE_ROUTE = Reply(501, "5.1.3", "Source routes are not accepted")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
# limits.max_header_size (Gmail answers "552 5.3.4" for its header size limit too).
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section exceeds the maximum header size")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long (see RFC 5321 4.5.3.1.6)")
BARE_NEWLINE = Reply(550, "5.6.11", "message contains bare CR or LF")
# RFC 5321 §2.3.8: only CRLF ends a command line; a bare LF/CR one is refused, never run.
BARE_NEWLINE_COMMAND = Reply(500, "5.5.2", "Error: bare <CR> or <LF> in command line; "
                                           "lines must end with <CR><LF>")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: HELO hostname")
# MAIL FROM / RCPT TO syntax; with EHLO the parameters are named too.
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM: <address>")
MAIL_SYNTAX_EXTENDED = Reply(501, "5.5.4", "Syntax: MAIL FROM: <address> [SP <mail-parameters>]")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO: <address>")
RCPT_SYNTAX_EXTENDED = Reply(501, "5.5.4", "Syntax: RCPT TO: <address> [SP <mail-parameters>]")
MALFORMED_SENDER = Reply(553, "5.1.3", "Error: malformed address")
BODY_UNKNOWN = Reply(501, "5.5.4", "Error: BODY can only be one of 7BIT, 8BITMIME")
SMTPUTF8_ARGUMENT = Reply(501, "5.5.4", "Error: SMTPUTF8 takes no arguments")
MAIL_PARAMETERS_UNKNOWN = Reply(555, "5.5.4",
                                "MAIL FROM parameters not recognized or not implemented")
RCPT_PARAMETERS_UNKNOWN = Reply(555, "5.5.4",
                                "RCPT TO parameters not recognized or not implemented")
STARTTLS_SYNTAX = Reply(501, "5.5.4", "Syntax: STARTTLS")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")  # Postfix says 554

# --- aiosmtpd's built-in literals → ours ----------------------------------------------
# Exact replies aiosmtpd 1.4.6 produces without an enhanced code.
_EXACT: dict[str, Reply] = {
    "250 OK": OK,
    "221 Bye": BYE,
    "220 Ready to start TLS": READY_TLS,
    "454 TLS not available": TLS_NOT_AVAILABLE,
    "500 Command line too long": Reply(500, "5.5.2", "Error: command line too long"),
    "500 Error: bad syntax": Reply(500, "5.5.2", "Error: bad syntax"),
    "500 Error: strict ASCII mode": Reply(500, "5.6.7", "Error: strict ASCII mode"),
    "554 Command refused due to lack of security": Reply(554, "5.7.0", "Command refused due "
                                                                        "to lack of security"),
    "530 Must issue a STARTTLS command first": STARTTLS_FIRST,
    "503 Error: send HELO first": NEED_HELO,
    "503 Error: send EHLO first": NEED_EHLO,
    "503 Already authenticated": ALREADY_AUTHENTICATED,
    "501 Not enough value": AUTH_SYNTAX,
    "501 Too many values": AUTH_SYNTAX,
    "503 Error: nested MAIL command": NESTED_MAIL,
    "501 Error: BODY can only be one of 7BIT, 8BITMIME": BODY_UNKNOWN,
    "501 Error: SMTPUTF8 takes no arguments": SMTPUTF8_ARGUMENT,
    "501 Error: SMTPUTF8 disabled": Reply(501, "5.6.7", "Error: SMTPUTF8 disabled"),
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_BIG,
    "555 MAIL FROM parameters not recognized or not implemented": MAIL_PARAMETERS_UNKNOWN,
    "555 RCPT TO parameters not recognized or not implemented": RCPT_PARAMETERS_UNKNOWN,
    "503 Error: need MAIL command": NEED_MAIL,
    "503 Error: need RCPT command": NEED_RCPT,
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG,
    "552 Error: Too much mail data": MESSAGE_TOO_BIG,
    "502 EXPN not implemented": Reply(502, "5.5.1", "EXPN not implemented"),
    "252 Cannot VRFY user, but will accept message and attempt delivery": Reply(
        252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"),
}

# Prefixes of parameterised aiosmtpd replies and the enhanced code to insert after the code.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("500 Error: command ", "5.5.1"),  # '500 Error: command "X" not recognized'
    ("501 Syntax: ", "5.5.4"),
    ("250 Syntax: ", "2.0.0"),         # HELP <command>
    ("250 Supported commands: ", "2.0.0"),
    ("501 Supported commands: ", "5.5.4"),
    ("502 Could not VRFY ", "5.1.3"),
    ("500 Error: (", "5.3.0"),         # unhandled exception text; see session.handle_exception
)

_HAS_ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def enhance(status: str) -> str:
    """Return `status` with an enhanced status code if aiosmtpd left it out."""
    if _HAS_ENHANCED.match(status):
        return status
    exact = _EXACT.get(status)
    if exact is not None:
        return str(exact)
    for prefix, enhanced in _PREFIXES:
        if status.startswith(prefix):
            return f"{status[:3]} {enhanced} {status[4:]}"
    return status
