"""PURE: what the submission server answers to HELO, EHLO, AUTH, MAIL, RCPT and DATA.

Each `decide_*` takes the facts of the session as plain values (HELO name given, EHLO
or HELO, authenticated, TLS active, trusted, counts and limits) and the command's
argument, and returns the refusal as a `Reply` constant of `replies`, or what was
accepted (None, a `Mailbox`, an AUTH mechanism). The checks run in the order a client
sees them, so the first fault decides. The session (relay/smtp/session.py) gathers the
facts, calls these and writes the reply; a 421 reply closes the connection there.
No I/O, no asyncio, no aiosmtpd.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from relay.smtp import replies as R
from relay.smtp.address import parse_path, recipient_syntax_error

_CONTROL_RE = re.compile("[\x00-\x1f\x7f]")  # C0 controls and DEL
# The RFC 4954 AUTH= parameter of MAIL FROM (a mailbox as xtext, or "<>").
_AUTH_PARAMETER = re.compile(r"[ \t]+AUTH=[^ \t]*", re.IGNORECASE)
AUTH_MECHANISMS = ("PLAIN", "LOGIN")


class Mailbox(NamedTuple):
    """An accepted MAIL FROM or RCPT TO: the address and its parameters (upper-cased)."""

    address: str
    options: list[str]
    smtputf8: bool = False


def has_control(text: str) -> bool:
    return _CONTROL_RE.search(text) is not None


def _strip_keyword(keyword: str, arg: str) -> str | None:
    """The argument after "FROM:" / "TO:" (any case), stripped; None without it."""
    n = len(keyword)
    return arg[n:].strip() if arg[:n].upper() == keyword else None


def _params(options: list[str]) -> dict[str, str | bool] | None:
    """RFC 5321 §4.1.2 esmtp-param `keyword[=value]`; None if one is malformed."""
    result: dict[str, str | bool] = {}
    for option in options:
        name, eq, value = option.partition("=")
        if not name.isalnum() or (eq and not value):
            return None
        result[name] = value if eq else True
    return result


def without_auth_parameter(arg: str) -> str:
    """RFC 4954 §5: after AUTH a client may name the message's original submitter with
    `MAIL FROM:<...> AUTH=<mailbox>` (sendmail as a smarthost client always does).
    relay accepts and ignores it: the credential is what authorizes the message."""
    path, bracket, params = arg.partition(">")  # the parameters follow the path
    return path + bracket + _AUTH_PARAMETER.sub("", params) if bracket else arg


def decide_helo(hostname: str | None, *, extended: bool) -> R.Reply | None:
    """EHLO (`extended`) or HELO: a name of printable characters."""
    if extended:
        return R.BAD_HELO if not hostname or has_control(hostname) else None
    if not hostname:
        return R.HELO_SYNTAX
    if has_control(hostname):
        return R.BAD_HELO.with_text("Syntax: HELO hostname (printable characters only)")
    return None


def decide_mail(arg: str | None, *, helo: bool, extended: bool, may_send: bool,
                refusal: R.Reply, authenticated: bool, in_transaction: bool,
                shutting_down: bool, message_count: int, max_messages: int,
                size_limit: int) -> R.Reply | Mailbox:
    """MAIL FROM: the refusal, or the sender and its parameters.

    `helo`: HELO or EHLO was given; `may_send`: authenticated or trusted, else `refusal`
    (AUTH_REQUIRED or STARTTLS_FIRST); `in_transaction`: a MAIL was accepted already;
    `size_limit`: the SIZE limit in bytes, 0 for none."""
    if shutting_down:
        return R.SHUTTING_DOWN
    if message_count >= max_messages:
        return R.TOO_MANY_MESSAGES
    if helo and not may_send:
        return refusal
    if arg is not None:
        if has_control(arg):
            return R.BAD_SENDER
        path = _strip_keyword("FROM:", arg)
        if path is not None and path.startswith("<@"):
            return R.SOURCE_ROUTE
    if not helo:
        return R.NEED_HELO
    syntax = R.MAIL_SYNTAX_EXTENDED if extended else R.MAIL_SYNTAX
    if arg is None:
        return syntax
    path = _strip_keyword("FROM:", without_auth_parameter(arg) if authenticated else arg)
    if path is None:
        return syntax
    address, rest = parse_path(path)
    if address is None:
        return R.MALFORMED_SENDER
    if not address or (rest and not extended):
        return syntax
    if in_transaction:
        return R.NESTED_MAIL
    options = rest.upper().split()
    params = _params(options)
    if params is None:
        return syntax
    if params.pop("BODY", "7BIT") not in ("7BIT", "8BITMIME"):
        return R.BODY_UNKNOWN
    smtputf8 = params.pop("SMTPUTF8", False)
    if smtputf8 is not True and smtputf8 is not False:
        return R.SMTPUTF8_ARGUMENT
    size = params.pop("SIZE", None)
    if size:
        if size is True or not size.isdigit():
            return syntax
        if size_limit and int(size) > size_limit:
            return R.MESSAGE_TOO_BIG
    if params:
        return R.MAIL_PARAMETERS_UNKNOWN
    if has_control(address):
        return R.BAD_SENDER
    return Mailbox(address, options, smtputf8)


def decide_rcpt(arg: str | None, *, helo: bool, extended: bool, may_send: bool,
                refusal: R.Reply, in_transaction: bool, recipients: int,
                max_recipients: int, session_recipients: int,
                max_session_recipients: int) -> R.Reply | Mailbox:
    """RCPT TO: the refusal, or the recipient. `recipients`: accepted in this
    transaction; `session_recipients`: accepted in this connection's transactions.
    A recipient that can never be delivered to (address.py) is refused here, so it is
    never queued, looked up in DNS, bounced or suppressed."""
    if helo and not may_send:
        return refusal
    if arg is not None:
        if has_control(arg):
            return R.BAD_RECIPIENT
        path = _strip_keyword("TO:", arg)
        if path is not None and path.startswith("<@"):
            return R.SOURCE_ROUTE
    if not helo:
        return R.NEED_HELO
    if not in_transaction:
        return R.NEED_MAIL
    syntax = R.RCPT_SYNTAX_EXTENDED if extended else R.RCPT_SYNTAX
    if arg is None:
        return syntax
    path = _strip_keyword("TO:", arg)
    if path is None:
        return syntax
    address, rest = parse_path(path)
    if address is None:
        return R.BAD_RECIPIENT
    if not address or (rest and not extended):
        return syntax
    options = rest.upper().split()
    params = _params(options)
    if params is None:
        return syntax
    if params:
        return R.RCPT_PARAMETERS_UNKNOWN
    if has_control(address):
        return R.BAD_RECIPIENT
    why = recipient_syntax_error(address)
    if why is not None:
        return R.BAD_RECIPIENT.with_text(f"{R.BAD_RECIPIENT.text} ({why})")
    if recipients >= max_recipients:
        return R.TOO_MANY_RECIPIENTS  # RFC 5321 §4.5.3.1.10: 452, not 552
    if session_recipients >= max_session_recipients:
        return R.TOO_MANY_SESSION_RECIPIENTS
    return Mailbox(address, options)


def decide_data(arg: str | None, *, helo: bool, may_send: bool, refusal: R.Reply,
                recipients: int) -> R.Reply | None:
    """DATA: None when the message may follow (354)."""
    if not helo:
        return R.NEED_HELO
    if not may_send:
        return refusal
    return decide_data_start(arg, recipients=recipients)


def decide_data_start(arg: str | None, *, recipients: int) -> R.Reply | None:
    """DATA's own checks, after HELO and sender checks: a recipient given, no argument."""
    if not recipients:
        return R.NEED_RCPT
    if arg:
        return R.DATA_SYNTAX
    return None


def decide_auth(arg: str | None, *, helo: bool, extended: bool, offered: bool,
                tls_active: bool, authenticated: bool) -> R.Reply | list[str]:
    """AUTH, before the attempt is counted: the refusal, or [MECHANISM, *initial
    response]. `offered`: the listener requires AUTH (it is offered only there)."""
    if not helo or not extended:
        return R.NEED_EHLO
    if not offered:
        return R.AUTH_UNAVAILABLE
    if not tls_active:
        return R.ENCRYPTION_REQUIRED
    if authenticated:
        return R.ALREADY_AUTHENTICATED
    args = (arg or "").split()
    if not 1 <= len(args) <= 2:
        return R.AUTH_SYNTAX
    mechanism = args[0].upper()
    if mechanism not in AUTH_MECHANISMS:
        return R.AUTH_MECHANISM_UNKNOWN
    return [mechanism, *args[1:]]


def decide_auth_attempt(attempts: int, *, max_attempts: int, locked: bool) -> R.Reply | None:
    """A counted AUTH attempt (`attempts` including this one): None to check the
    credential. Past the per-connection cap the connection closes (421); while the
    client address is locked out (authpolicy) no credential is checked."""
    if attempts > max_attempts:
        return R.TOO_MANY_AUTH_ATTEMPTS
    if locked:
        return R.AUTH_LOCKED
    return None
