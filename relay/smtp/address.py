"""PURE recipient address syntax (RFC 5321 §4.1.2 Mailbox, RFC 6531 with SMTPUTF8).

`parse_path(arg)` splits a MAIL FROM / RCPT TO argument into its address and the
parameters after it. `recipient_syntax_error(address)` says why an RCPT TO address can
never be delivered to, or None: a local part (dot-atom or quoted string, at most 64
octets) "@" a domain that is a host name (LDH labels, or U-labels that IDNA-encode to
them, with a non-numeric top-level label) or an address literal ("[192.0.2.1]",
"[IPv6:2001:db8::1]"). What fails here is refused at RCPT (501 5.1.3) and so never
queued, looked up in DNS, bounced or suppressed. No I/O.
"""

from __future__ import annotations

import ipaddress
import re
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError

# atext (RFC 5322 §3.2.3) plus any non-ASCII character (RFC 6531 §3.3 UTF8-non-ascii).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\U0010ffff]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
# qtextSMTP / quoted-pairSMTP (RFC 5321 §4.1.2), UTF-8 allowed; not empty (""@x is no one).
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]|\\[\x20-\x7e])+"')
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAX_LOCAL_PART = 64  # octets (RFC 5321 §4.5.3.1.1)
MAX_DOMAIN = 255


# The usual address, settled by one match: dot-atom @ LDH labels, an alphabetic TLD.
_PLAIN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*"
                    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")


def recipient_syntax_error(address: str) -> str | None:
    """Why `address` is not a deliverable mailbox, in words; None when it is one."""
    if len(address) <= MAX_DOMAIN and _PLAIN.fullmatch(address) is not None \
            and address.find("@") <= MAX_LOCAL_PART:
        return None
    local, at, domain = address.rpartition("@")
    if not at:
        return "no domain (an address is local-part@domain)"
    if not local:
        return "empty local part"
    if len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL_PART:
        return f"local part longer than {MAX_LOCAL_PART} octets"
    if _DOT_ATOM.fullmatch(local) is None and _QUOTED.fullmatch(local) is None:
        return "bad local part"
    return domain_syntax_error(domain)


def domain_syntax_error(domain: str) -> str | None:
    if not domain:
        return "empty domain"
    if domain.startswith("["):
        return None if _literal_ok(domain) else "bad address literal"
    name = domain[:-1] if domain.endswith(".") else domain
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return "bad internationalized domain name"
    if len(name) > MAX_DOMAIN - 2:
        return "domain name too long"
    labels = name.split(".")
    if len(labels) < 2:
        return "domain name has no dot"
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "bad domain name"
    if labels[-1].isdigit():
        return "domain name with a numeric top-level label (an IP address needs [brackets])"
    return None


def _literal_ok(domain: str) -> bool:
    if not domain.endswith("]"):
        return False
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return isinstance(ipaddress.ip_address(inner[5:]), ipaddress.IPv6Address)
        return isinstance(ipaddress.ip_address(inner), ipaddress.IPv4Address)
    except ValueError:
        return False


# `<local@domain>` with a dot-atom local part and an LDH domain, then any blanks: what
# email's get_angle_addr() consumes for such an address (see parse_path).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"[ \t]*<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*")


def parse_path(arg: str) -> tuple[str | None, str]:
    """(address, the parameters after it) of a MAIL FROM / RCPT TO argument (after its
    keyword); address None when it cannot be parsed, "" when `arg` is empty, "<>" for
    the null path. The RFC 5322 parser of the email package (comments, quoted strings,
    obsolete forms) as aiosmtpd reads a path, with a fast path for the usual
    `<dot.atom@host.name> [params]` that gives the same answer (the full parser was
    ~4 % of the event loop under load)."""
    m = _SIMPLE_PATH.match(arg)
    if m is not None:
        rest = arg[m.end():]
        if not (rest[:1].isspace() or rest.startswith("(")):  # comments, odd blanks
            return m.group(1), rest
    if not arg:
        return "", ""
    try:
        parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
        address, rest = parse(arg)
    except HeaderParseError:
        return None, ""
    return str(address.addr_spec), rest
