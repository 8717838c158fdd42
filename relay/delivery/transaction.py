"""The SMTP client dialogue as a state machine: reply bytes in, command bytes and outcomes out.

PURE (sans-I/O, in the style of h11 and h2): no event loop, no socket, no SMTP library.
relay/delivery/client.py moves the bytes: it writes what a machine returns, feeds it what
the server sends (`receive`), and tells it when the connection was lost (`lost`) or a reply
did not come in time (`timed_out`); `timeout` says which of the configured timeouts the
awaited reply runs under. A machine never raises on what the server sends.

- `Handshake`: greeting, EHLO (HELO when EHLO is refused with 5xx), STARTTLS when offered
  (or required), EHLO again inside TLS. Ends `ready` (with the extensions), `starting_tls`
  (the client upgrades the transport and calls `tls_started()`), or `failed` (an Outcome,
  and whether the host may be tried once more in plaintext).
- `Transaction`: MAIL, RCPT…, DATA, the body, one Outcome per recipient and whether the
  connection may carry another message (`keep`), must see RSET first (`rset_needed`) or
  died before answering anything, so the message may go once more on a fresh connection
  (`retry_fresh`). With PIPELINING (RFC 2920 §3.1) MAIL, every RCPT and DATA go in one
  write; without it one command at a time and RSET instead of DATA when no recipient was
  accepted. A refused MAIL fails every recipient with its reply; a recipient refused keeps
  its reply; no recipient accepted → no body (a broken server that says 354 anyway gets the
  lone "."); DATA refused (not 354) → its reply for the accepted recipients, RSET before
  the next MAIL; the final reply after the body applies to every accepted recipient. A 421
  anywhere ends the dialogue (the server is closing). A reply of class 2xx/3xx where a
  refusal was expected is a protocol error: 451 4.5.0 "unexpected reply".
- `Command`: one command and its reply (RSET before reuse, QUIT).

Replies (RFC 5321 §4.2): lines end with LF (CRLF or bare); "ddd-" continues, "ddd " or
"ddd" ends; a line longer than MAX_LINE_LENGTH, a reply over MAX_REPLY_LENGTH bytes or
MAX_REPLY_LINES lines (endless continuation lines), or a line without a 3-digit code is a
protocol error that ends the dialogue (the connection is then out of step and is closed).
Bytes beyond the replies asked for are `excess`: the connection is not reused (a reply
nobody asked for would be taken as the answer to the next command).

Addresses and the body go on the wire as aiosmtplib put them (same checks, same
encoding): control characters in an argument are refused (no CR/LF command injection),
bare CR/LF in the body become CRLF and lines starting with "." are dot-stuffed (no
outbound SMTP smuggling).
"""

from __future__ import annotations

import email.utils
import re
from collections import deque
from collections.abc import Sequence
from typing import Literal

from relay.delivery.classify import Failure, from_failure, from_reply
from relay.delivery.outcome import Outcome

__all__ = ["MAX_LINE_LENGTH", "MAX_REPLY_LENGTH", "MAX_REPLY_LINES", "PLAIN_ADDRESS",
           "Command", "Extensions", "Handshake", "Reply", "ReplyReader", "Transaction",
           "remote_name", "short", "valid_address", "wire_body"]

MAX_LINE_LENGTH = 8192        # one reply line, LF included (aiosmtplib's limit)
MAX_REPLY_LENGTH = 8192 * 4   # one whole reply, continuation lines included
MAX_REPLY_LINES = 1000        # an EHLO reply has a few dozen

Timeout = Literal["connect", "command", "data"]
Extensions = dict[str, str]   # EHLO keyword (lower case) → its parameters

_OK, _WILL_FORWARD, _READY, _START_INPUT, _CLOSING = 250, 251, 220, 354, 421


# ------------------------------------------------------------------ addresses and body

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_COMMAND_INJECTION = re.compile(rb"[\x00-\x1f\x7f]")
_ADDRESS_INJECTION = re.compile(r'[\s<>"]')
_QUOTED_LOCAL_PART = re.compile(r'^"(?:[^"\\\r\n]|\\.)*"')
_LINE_ENDINGS = re.compile(rb"(?:\r\n|\n|\r(?!\n))")
_PERIOD = re.compile(rb"(?m)^\.")
# A dot-atom local part (a conservative subset of atext) @ an LDH domain: parseaddr()
# returns such an address unchanged, so it skips the parse (most addresses are like this;
# parseaddr was ~0.1 ms of pure Python per address). tests/unit/test_fast_paths.py checks
# the two agree.
PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_%+=-]+(?:\.[A-Za-z0-9_%+=-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def _parse_address(address: str) -> str:
    """aiosmtplib's parse_address: email.utils.parseaddr, then no character that would
    end the address on a command line (ValueError)."""
    parsed = email.utils.parseaddr(address)[1] or address.strip()
    if _ADDRESS_INJECTION.search(_QUOTED_LOCAL_PART.sub("", parsed, count=1)):
        raise ValueError(f"Address {parsed!r} contains characters not permitted in an "
                         "SMTP mailbox")
    return parsed


def valid_address(address: str) -> bool:
    """True if the address goes on the wire exactly as given.

    A parse would silently turn "a@x>\\r\\nRCPT TO:<v@y" into "a@x": the recipient would
    not be the one we were given. Refuse it (CR/LF command injection) instead of
    delivering elsewhere.
    """
    if PLAIN_ADDRESS.fullmatch(address):
        return True
    if _CONTROL_RE.search(address):
        return False
    try:
        return _parse_address(address) == address
    except ValueError:
        return False


def quoted(address: str) -> str:
    """The address in angle brackets (parsed unless plain; `valid_address` has already
    refused any that parsing changes)."""
    return f"<{address if PLAIN_ADDRESS.fullmatch(address) else _parse_address(address)}>"


def command(*args: bytes) -> bytes:
    """One command line; ValueError on a control character in an argument."""
    for arg in args:
        if _COMMAND_INJECTION.search(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


def normalize_line_endings(data: bytes) -> bytes:
    """Bare CR and LF → CRLF, and a final CRLF."""
    data = _LINE_ENDINGS.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def wire_body(data: bytes) -> bytes:
    """The message as it goes after 354: CRLF throughout, dot-stuffed, ended by "."."""
    crlf = data.count(b"\r\n")
    if (crlf == data.count(b"\r") == data.count(b"\n") and data.endswith(b"\r\n")
            and not data.startswith(b".") and b"\r\n." not in data):
        # Already CRLF throughout and no line starts with ".": what the two regex passes
        # below would return, found by C-speed scans (most messages).
        return data + b".\r\n"
    return _PERIOD.sub(b"..", normalize_line_endings(data)) + b".\r\n"


def chunk_body(data: bytes) -> bytes:
    """The message as one BDAT chunk (RFC 3030): CRLF throughout, not dot-stuffed (the
    chunk is counted, not ended by a line with a dot)."""
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\r") == data.count(b"\n") and data.endswith(b"\r\n"):
        return data
    return normalize_line_endings(data)


# The largest message sent as BDAT with MAIL and RCPT in one write: it goes before any
# recipient is known to be accepted, so a refused one costs its bytes; larger ones wait
# for 354 after DATA.
CHUNKING_MAX = 64 * 1024


def remote_name(host_name: str, address: str) -> str:
    return host_name.rstrip(".") or address


def short(exc: BaseException) -> str:
    """An exception as one short line for an Outcome's text."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def parse_extensions(text: str) -> Extensions:
    """The EHLO reply's lines after the first: keyword (lower case) → parameters; the
    old-style "AUTH=..." counts as AUTH."""
    ext: Extensions = {}
    for raw in text.split("\n")[1:]:
        line = raw.strip()
        if not line:
            continue
        if line[:5].lower() == "auth=":
            ext["auth"] = line[5:]
            continue
        keyword, _, params = line.partition(" ")
        ext[keyword.lower()] = params
    return ext


# ------------------------------------------------------------------ replies

class Reply:
    __slots__ = ("code", "text")

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text   # the lines after the code, joined by "\n"

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.text!r})"


class ProtocolError(Exception):
    """What the server sent is no SMTP reply (garbage, a line or reply too long)."""


class ReplyReader:
    """Bytes → complete replies. Memory is bounded: one reply's lines and one partial line."""

    __slots__ = ("_lines", "_partial", "_size")

    def __init__(self) -> None:
        self._partial = b""
        self._lines: list[bytes] = []
        self._size = 0

    @property
    def pending(self) -> bool:
        """Part of a reply has arrived."""
        return bool(self._partial or self._lines)

    def clear(self) -> None:
        self._partial = b""
        self._lines = []
        self._size = 0

    def feed(self, data: bytes) -> list[Reply]:
        """The replies `data` completes (none, one or several); ProtocolError when the
        stream is no SMTP."""
        if self._partial:
            data = self._partial + data
        replies: list[Reply] = []
        lines = self._lines
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line = data[start:end + 1]
            start = end + 1
            if len(line) > MAX_LINE_LENGTH:
                raise ProtocolError("Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                raise ProtocolError("Malformed SMTP response line: "
                                    + line.decode("utf-8", errors="ignore")) from None
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                text = lines[0] if len(lines) == 1 else b"\n".join(lines)
                replies.append(Reply(code, text.decode("utf-8", "surrogateescape")))
                lines.clear()
                self._size = 0
                continue
            self._size += len(line)
            if len(lines) >= MAX_REPLY_LINES:
                raise ProtocolError("Response too long: too many lines")
        rest = data[start:]
        if len(rest) > MAX_LINE_LENGTH or self._size + len(rest) > MAX_REPLY_LENGTH:
            raise ProtocolError("Response too long")
        self._partial = rest
        return replies


# ------------------------------------------------------------------ machines

class _Machine:
    """What the client drives: `receive`, `lost`, `timed_out`; `done` when finished."""

    def __init__(self) -> None:
        self.done = False
        self.paused = False        # waiting for the client (the TLS handshake)
        self.broken = False        # out of step or closing: close the connection now
        self.excess = False        # bytes beyond the replies asked for
        self.replies = 0           # replies taken so far (the client re-arms its timer)
        self._timeout: Timeout = "command"
        self._reader = ReplyReader()

    @property
    def timeout(self) -> Timeout:
        """The configured timeout the awaited reply runs under."""
        return self._timeout

    def receive(self, data: bytes) -> bytes:
        """Feed what the server sent; return what to write now (b"" for nothing)."""
        if self.done:
            self.excess = self.broken = True
            return b""
        try:
            replies = self._reader.feed(data)
        except ProtocolError as e:
            self._reader.clear()
            self.broken = True
            self._fail("protocol", str(e))
            return b""
        out = b""
        for reply in replies:
            if self.done:
                self.excess = self.broken = True
                break
            self.replies += 1
            out += self._on_reply(reply)
        if self.done and self._reader.pending:
            self.excess = self.broken = True
        return out

    def lost(self, detail: str = "Connection lost") -> None:
        """The connection closed (or reset) before the dialogue ended."""
        if not self.done:
            self.broken = True
            self._fail("dropped", detail)

    def timed_out(self) -> None:
        """The awaited reply did not come within `timeout`."""
        if not self.done:
            self.broken = True
            self._fail("timeout", "Timed out waiting for server response")

    def _on_reply(self, reply: Reply) -> bytes:
        raise NotImplementedError

    def _fail(self, kind: Literal["dropped", "timeout", "protocol"], detail: str) -> None:
        raise NotImplementedError


class Command(_Machine):
    """One command and its reply (RSET before reusing a connection, QUIT)."""

    def __init__(self, line: bytes, expect: int) -> None:
        super().__init__()
        self.line = line
        self._expect = expect
        self.ok = False

    def start(self) -> bytes:
        return self.line

    def _on_reply(self, reply: Reply) -> bytes:
        self.ok = reply.code == self._expect
        self.done = True
        return b""

    def _fail(self, kind: str, detail: str) -> None:
        self.done = True


HandshakeState = Literal["greeting", "ehlo", "helo", "starttls", "tls", "ready", "failed"]


class Handshake(_Machine):
    """Greeting → EHLO (→ HELO) → [STARTTLS → TLS → EHLO (→ HELO)] → ready.

    `require`: STARTTLS must be offered and succeed (else `tls_required`); `plaintext`:
    do not start TLS even when offered (the opportunistic retry after a failed one).
    """

    def __init__(self, ehlo_name: str, name: str, *, require: bool = False,
                 plaintext: bool = False) -> None:
        super().__init__()
        self._hello = ehlo_name.encode("ascii")
        self.name = name
        self._require = require
        self._plaintext = plaintext
        self.state: HandshakeState = "greeting"
        self._timeout = "connect"
        self.greeted = False        # a greeting came (whatever it said): a session
        self.extensions: Extensions = {}
        self.tls = False
        self.outcome: Outcome | None = None
        self.plaintext_retry = False

    @property
    def starting_tls(self) -> bool:
        return self.state == "tls"

    def tls_started(self) -> bytes:
        """The transport is encrypted now: EHLO again (RFC 3207 §4.2: what the server said
        before TLS is forgotten)."""
        self.state = "ehlo"
        self.paused = False
        self.tls = True
        self._timeout = "command"
        self._reader.clear()
        self.extensions = {}
        return b"EHLO " + self._hello + b"\r\n"

    def tls_failed(self, detail: str) -> None:
        """The TLS handshake after 220 failed (or timed out)."""
        if not self.done:
            self.broken = True
            self._tls_failure(detail)

    def receive(self, data: bytes) -> bytes:
        if self.state == "tls":
            # RFC 3207 §4.2: nothing may follow 220 before the handshake; what does was
            # not sent by the server over TLS (STARTTLS response injection): discard it.
            return b""
        return super().receive(data)

    def _on_reply(self, reply: Reply) -> bytes:
        state, code = self.state, reply.code
        if state == "greeting":
            self.greeted = True
            if code != _READY:
                return self._refused(reply)
            self.state, self._timeout = "ehlo", "command"
            return b"EHLO " + self._hello + b"\r\n"
        if state in ("ehlo", "helo"):
            if code != _OK:
                if state == "ehlo" and code // 100 == 5:   # EHLO unknown: HELO
                    self.state = "helo"
                    return b"HELO " + self._hello + b"\r\n"
                if self.tls:
                    return self._tls_failure(f"{code} {reply.text}")
                return self._refused(reply)
            self.extensions = parse_extensions(reply.text) if state == "ehlo" else {}
            if self.tls:
                return self._ready()
            if "starttls" not in self.extensions:
                if self._require:
                    return self._finish(from_failure(
                        "tls_required", self.name, f"{self.name} does not offer STARTTLS",
                        self.name))
                return self._ready()
            if self._plaintext:   # the retry after a failed opportunistic STARTTLS
                return self._ready()
            self.state = "starttls"
            return b"STARTTLS\r\n"
        if state == "starttls":
            if code != _READY:
                return self._tls_failure(f"{code} {reply.text}")
            self.state = "tls"
            self.paused = True
            self._reader.clear()   # anything after 220 in the same read: see receive()
            return b""
        return b""

    def _ready(self) -> bytes:
        self.state = "ready"
        self.done = True
        return b""

    def _finish(self, outcome: Outcome, plaintext_retry: bool = False) -> bytes:
        self.state = "failed"
        self.outcome = outcome
        self.plaintext_retry = plaintext_retry
        self.done = True
        return b""

    def _refused(self, reply: Reply) -> bytes:
        """A greeting or EHLO/HELO other than expected: try the next host. A 5xx is skipped
        like Postfix's smtp_skip_5xx_greeting (deferred, never bounced on it)."""
        name = self.name
        out = from_reply(reply.code, reply.text, name)
        if out.kind == "bounced":
            out = Outcome("deferred", 451, "4" + out.enhanced[1:],
                          f"{name} refused to talk to me: {out.code} {out.text}", name)
        elif out.kind == "delivered":   # a 2xx where 220 (or 250) was expected
            out = from_reply(451, f"4.5.0 unexpected greeting {reply.code} {reply.text}",
                             name)
        return self._finish(out)

    def _tls_failure(self, detail: str) -> bytes:
        name = self.name
        if self._require:
            return self._finish(from_failure(
                "tls_required", name, f"STARTTLS with {name} failed: {detail}", name))
        return self._finish(from_failure("tls_failed", name, detail, name),
                            plaintext_retry=True)

    def _fail(self, kind: Literal["dropped", "timeout", "protocol"], detail: str) -> None:
        name = self.name
        if self.state in ("starttls", "tls") or self.tls:
            self._tls_failure(detail)
        elif kind == "protocol":
            if self.state == "greeting":
                self.greeted = True   # it answered something: a session all the same
            self._finish(from_reply(-1, detail, name))
        else:
            if self.state == "greeting" and kind == "timeout":
                detail = "Timed out waiting for server ready message"
            self._finish(from_failure(kind, name, detail, name))


_Step = Literal["mail", "rcpt", "data", "body", "dot", "rset", "bdat"]


def _refused(reply: Reply, name: str) -> Outcome:
    """A reply other than the one expected; a 2xx/3xx here is a protocol error, not success."""
    if reply.code // 100 in (4, 5):
        return from_reply(reply.code, reply.text, name)
    return Outcome("deferred", 451, "4.5.0",
                   f"unexpected reply {reply.code} {reply.text.strip()}".rstrip(), name)


class Transaction(_Machine):
    """MAIL, RCPT…, DATA and the body for one message on a ready connection.

    Call `start()` first and write what it returns (b"" and `done`: nothing to send, every
    recipient already has its outcome). At the end: `outcomes` (one per recipient, in
    order), `keep`, `rset_needed`, `retry_fresh`.
    """

    def __init__(self, sender: str, recipients: Sequence[str], data: bytes,
                 extensions: Extensions, name: str) -> None:
        super().__init__()
        self.name = name
        self._data = data
        self._pipelining = "pipelining" in extensions
        # CHUNKING with PIPELINING (RFC 3030 §4.2): MAIL, the RCPTs, "BDAT <n> LAST" and
        # the message in one write, one reply round trip, instead of two (DATA's 354).
        self._chunking = (self._pipelining and "chunking" in extensions
                          and len(data) <= CHUNKING_MAX)
        self._out: list[Outcome | None] = [None] * len(recipients)
        self.outcomes: list[Outcome] = []
        self.keep = False
        self.rset_needed = False
        self.retry_fresh = False
        self._answered = False       # has the server replied to anything yet?
        self._mail_ok = False
        self._accepted: list[int] = []
        self._steps: deque[_Step] = deque()   # replies awaited, in order
        self._rcpt_steps: deque[int] = deque()  # the recipient of each awaited RCPT reply
        self._rcpts: deque[tuple[int, bytes]] = deque()   # RCPTs not yet sent
        # MAIL FROM, with the ESMTP parameters the server understands.
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        encoding = "utf-8" if utf8 and "smtputf8" in extensions else "ascii"
        options: list[bytes] = []
        if "size" in extensions:
            options.append(b"SIZE=%d" % len(data))
        if "8bitmime" in extensions and not data.isascii():
            options.append(b"BODY=8BITMIME")
        if encoding == "utf-8":
            options.append(b"SMTPUTF8")
        self._mail = b""
        try:
            self._mail = command(b"MAIL", b"FROM:" + quoted(sender).encode(encoding),
                                 *options)
        except ValueError as e:
            self._end(from_failure("invalid_address", name, short(e), name), keep=True)
            return
        for i, rcpt in enumerate(recipients):
            try:
                self._rcpts.append((i, command(b"RCPT", b"TO:" + quoted(rcpt).encode(encoding))))
            except ValueError as e:
                self._out[i] = from_failure("invalid_address", name, short(e), name)
        if not self._rcpts:
            self._end(from_failure("local_error", name), keep=True)

    def start(self) -> bytes:
        if self.done:
            return b""
        if not self._pipelining:
            self._steps.append("mail")
            return self._mail
        rcpt: list[_Step] = ["rcpt"]
        self._steps += ["mail", *(rcpt * len(self._rcpts)),
                        "bdat" if self._chunking else "data"]
        self._rcpt_steps.extend(i for i, _ in self._rcpts)
        if self._chunking:
            chunk = chunk_body(self._data)
            last = [b"BDAT %d LAST\r\n" % len(chunk), chunk]
        else:
            last = [b"DATA\r\n"]
        group = b"".join([self._mail, *(line for _, line in self._rcpts), *last])
        self._rcpts.clear()
        return group

    @property
    def timeout(self) -> Timeout:
        """DATA's reply and the final one run under data_timeout, the others command_timeout."""
        return "data" if self._steps and self._steps[0] in ("data", "body", "dot", "bdat") \
            else "command"

    def _end(self, o: Outcome, *, keep: bool) -> bytes:
        """Give `o` to the recipients that have no outcome yet (once past RCPT: the
        accepted ones)."""
        self.outcomes = [x if x is not None else o for x in self._out]
        self.keep = keep
        self.done = True
        return b""

    def _next_rcpt(self) -> bytes:
        """Serial: the next RCPT, or after the last DATA (RSET when none was accepted)."""
        if self._rcpts:
            i, line = self._rcpts.popleft()
            self._steps.append("rcpt")
            self._rcpt_steps.append(i)
            return line
        if self._accepted:
            self._steps.append("data")
            return b"DATA\r\n"
        self._steps.append("rset")
        return b"RSET\r\n"

    def _on_reply(self, reply: Reply) -> bytes:
        if not self._steps:   # more replies than commands
            self.excess = self.broken = True
            return b""
        step = self._steps.popleft()
        code = reply.code
        name = self.name
        self._answered = True
        if code == _CLOSING and step != "dot":   # the server is closing
            self.broken = True
            return self._end(_refused(reply, name), keep=False)
        if step == "mail":
            if code == _OK:
                self._mail_ok = True
                return b"" if self._pipelining else self._next_rcpt()
            refusal = _refused(reply, name)
            if not self._pipelining:
                return self._end(refusal, keep=True)
            # Every recipient fails with MAIL's reply; the RCPT replies still come.
            self._out = [refusal] * len(self._out)
            return b""
        if step == "rcpt":
            i = self._rcpt_steps.popleft()
            if self._mail_ok:
                if code in (_OK, _WILL_FORWARD):
                    self._accepted.append(i)
                else:
                    self._out[i] = _refused(reply, name)
            return b"" if self._pipelining else self._next_rcpt()
        if step == "rset":   # serial, no recipient accepted
            return self._end(from_failure("local_error", name), keep=code == _OK)
        if step == "data":
            if code != _START_INPUT:
                # Expected when nothing was accepted (503/554); otherwise DATA refused:
                # the server still holds MAIL (and RCPTs).
                self.rset_needed = self._mail_ok
                return self._end(_refused(reply, name), keep=code // 100 in (4, 5))
            if not self._accepted:
                # A broken server said 354 with no recipient: end the empty message at
                # once; the body never goes out. Recipients keep their RCPT replies.
                self._steps.append("dot")
                return b".\r\n"
            self._steps.append("body")
            return wire_body(self._data)
        if step == "bdat":
            # The reply to the whole message (RFC 3030 §2): for the accepted recipients;
            # with none accepted (MAIL or every RCPT refused) each keeps its own reply.
            if code // 100 == 2:
                return self._end(from_reply(code, reply.text, name), keep=True)
            # A refused BDAT: the server may still hold the transaction, so RSET before
            # the next MAIL on this connection (§2: the sender must issue RSET).
            self.rset_needed = True
            return self._end(from_reply(code, reply.text, name),
                             keep=code // 100 in (4, 5))
        if step == "dot":
            self.broken = code == _CLOSING
            return self._end(from_failure("local_error", name), keep=code != _CLOSING)
        # step == "body": the final reply applies to every accepted recipient
        return self._end(from_reply(code, reply.text, name), keep=True)

    def _fail(self, kind: Literal["dropped", "timeout", "protocol"], detail: str) -> None:
        """Timed out, dropped or garbled: the dialogue is out of step, the connection is
        closed. A pooled connection that died before answering anything sent no body: the
        message may go once more on a fresh one."""
        name = self.name
        if kind == "protocol":
            o = from_reply(-1, detail, name)
        else:
            failure: Failure = kind
            o = from_failure(failure, name, detail, name)
        self.retry_fresh = not self._answered and (
            kind == "dropped" or (kind == "timeout" and not self._pipelining))
        self._end(o, keep=False)
