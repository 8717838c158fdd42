"""`relay queue transfer --to HOST:PORT`: hand every queued message to another relay node.

For retiring a node (drain it first: `relay node drain`). Over up to `--connections` SMTP
connections to the peer's submission listener, with a cluster credential (`--user`, the
password on stdin with `--password-stdin`), in chunks of CHUNK messages: the chunk's
waiting recipients are claimed in the spool in one transaction (relay/queue/transfer.py:
the running relay's scheduler cannot take them meanwhile), each message is sent with
MAIL/RCPT/DATA, and the messages are removed locally, in one transaction, only after the
peer's 250 to DATA. Any other answer, or a lost connection, gives the recipients back
as they were, with one line saying why: nothing is lost. At least once on the wire: a
crash between the peer's 250 and the local removal sends the message again on the next
run, but a relay peer remembers the transfer ids it queued (relay/queue/transferlog.py)
and answers such a message "250 ... (duplicate transfer ...)" without queueing it twice;
it is counted here as "already at the peer" and removed.

Transfer to self: `--to` naming one of this node's own listeners stops before anything is
claimed; a peer that finds the transfer id's message in its own queue (reached through
a balancer or another name) answers 550 5.4.6, and the run stops there, the message
given back. Both exit 2.

What the peer needs to keep of the message is sent as header fields its submission reads
and removes: X-SES-CONFIGURATION-SET, X-SES-TENANT (the credential must be allowed the
tenant: a platform credential), X-SES-MESSAGE-TAGS, X-SES-TRACKING, and
X-Relay-Transfer-Id: <queue id>@<this node's server.hostname>, which the peer records as
the tag "relay:transferred-from" of its Send event and history (from an authenticated
session only). The peer gives the message its own queue id.

Exit codes: 0 every message transferred or already at the peer (or nothing to do), 1 some
stayed queued (each named on stderr) or the peer could not be reached, 2 `--to` reaches
this node itself (nothing moved). `--json`: the counts as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import queue
import re
import smtplib
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from relay.cli import CliError, load_config
from relay.clock import SystemClock
from relay.config import Config
from relay.config.types import HostPort, parse_host_port
from relay.configsets import TRANSFERRED_TAG
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore
from relay.queue.transfer import Claim, claim_many_op, settle_claims_op

PROGRESS_EVERY = 100  # messages between progress lines
TIMEOUT = 120.0  # seconds for any one SMTP reply
# Messages claimed, sent and settled together: two spool commits per chunk instead of two
# per message. A crash after the peer's 250s and before the chunk's removal sends at most
# one chunk again, which a relay peer recognises (duplicates). Bounded in bodies too.
CHUNK = 64
CHUNK_BYTES = 16 << 20
MAX_CONNECTIONS = 16


def add_parser(qsub: Any, common: argparse.ArgumentParser) -> None:
    sp = qsub.add_parser("transfer", parents=[common],
                         help="hand every queued message to another relay node over SMTP")
    sp.add_argument("--to", required=True, metavar="HOST:PORT",
                    help="the peer's submission listener")
    sp.add_argument("--user", help="the cluster credential's user name on the peer")
    sp.add_argument("--password-stdin", action="store_true",
                    help="read the credential's password from the first line of stdin")
    sp.add_argument("--tls", choices=("starttls", "none"), default="starttls",
                    help="STARTTLS before AUTH (default), or none (a trusted network)")
    sp.add_argument("--tls-no-verify", action="store_true",
                    help="do not verify the peer's certificate (self-signed peers)")
    sp.add_argument("--limit", type=int, default=0, metavar="N",
                    help="transfer at most N messages (default: all)")
    sp.add_argument("--verbose", action="store_true", help="one line per message")
    sp.add_argument("--connections", type=int, default=8, metavar="N",
                    help="SMTP connections to the peer at once (default 8; fewer if the "
                         "peer refuses some)")
    sp.add_argument("--json", action="store_true",
                    help="the counts as one JSON object on stdout instead of a sentence")
    sp.set_defaults(func=cmd_transfer)


class PeerLost(Exception):
    """The connection to the peer is gone: stop (the message in hand is given back)."""


class PeerIsSelf(Exception):
    """The peer is this node (it found the message in its own queue): stop, exit 2."""


# The peer's 250 for a message it had already queued from an earlier run (a relay peer's
# TRANSFER_DUPLICATE reply, relay/smtp/replies.py).
_DUPLICATE = re.compile(r"\(duplicate transfer [^)]*\)")
# A relay peer's TRANSFER_TO_SELF: the message is in its own queue.
_TO_SELF = re.compile(r"5\.4\.6 .*\(a transfer to self\)")


class Peer:
    """One SMTP connection to the peer, opened on first use and after a loss."""

    def __init__(self, to: HostPort, tls: str, verify: bool, user: str | None,
                 password: str | None) -> None:
        self.to, self.tls, self.verify = to, tls, verify
        self.user, self.password = user, password
        self.smtp: smtplib.SMTP | None = None

    def connect(self) -> smtplib.SMTP:
        if self.smtp is not None:
            return self.smtp
        try:
            smtp = smtplib.SMTP(str(self.to.host), self.to.port, timeout=TIMEOUT)
            smtp.ehlo()
            if self.tls == "starttls":
                context = ssl.create_default_context()
                if not self.verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.user is not None:
                smtp.login(self.user, self.password or "")
        except smtplib.SMTPAuthenticationError as e:
            raise CliError(f"the peer {self.to} refused the credential {self.user!r}: "
                           f"{e.smtp_code} {_text(e.smtp_error)}") from None
        except (OSError, smtplib.SMTPException) as e:
            raise CliError(f"cannot reach the peer {self.to}: {e}") from None
        self.smtp = smtp
        return smtp

    def send(self, sender: str, recipients: list[str], data: bytes) -> str:
        """The peer's 250 reply to DATA, or raise PeerRefused / PeerLost."""
        smtp = self.connect()
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        try:
            code, text = smtp.mail(sender, ["SMTPUTF8"] if utf8 else [])
            if code != 250:
                self._reset()
                raise PeerRefused(f"MAIL FROM answered {code} {_text(text)}")
            for rcpt in recipients:
                code, text = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    self._reset()
                    raise PeerRefused(f"RCPT TO:<{rcpt}> answered {code} {_text(text)}")
            code, text = smtp.data(data)
        except smtplib.SMTPDataError as e:
            raise PeerRefused(f"DATA answered {e.smtp_code} {_text(e.smtp_error)}") from None
        except (OSError, smtplib.SMTPServerDisconnected) as e:
            self.smtp = None
            raise PeerLost(f"connection to {self.to} lost: {e}") from None
        if code == 550 and _TO_SELF.match(_text(text)):
            raise PeerIsSelf(_text(text))
        if code != 250:
            raise PeerRefused(f"DATA answered {code} {_text(text)}")
        return _text(text)

    def _reset(self) -> None:
        try:
            assert self.smtp is not None
            self.smtp.rset()
        except (OSError, smtplib.SMTPException):
            self.smtp = None

    def close(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self.smtp.quit()
            self.smtp = None


class PeerRefused(Exception):
    """The peer refused this message (the next one may still go)."""


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())


def transfer_fields(msg: MessageRecord, node: str) -> bytes:
    """The header fields that carry what the peer must keep of the message."""
    fields = [("X-Relay-Transfer-Id", f"{msg.id}@{node}")]
    if msg.configuration_set:
        fields.append(("X-SES-CONFIGURATION-SET", msg.configuration_set))
    if msg.tenant:
        fields.append(("X-SES-TENANT", msg.tenant))
    if msg.tracking:
        fields.append(("X-SES-TRACKING", msg.tracking))
    tags = [f"{name}={value}" for name, values in msg.tags.items()
            if not name.startswith(("ses:", "relay:")) for value in values]
    if tags:
        fields.append(("X-SES-MESSAGE-TAGS", ", ".join(tags)))
    return b"".join(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
                    for name, value in fields)


def _password(args: argparse.Namespace) -> str | None:
    if args.user is None:
        if args.password_stdin:
            raise CliError("--password-stdin needs --user")
        return None
    if not args.password_stdin:
        raise CliError("--user needs --password-stdin (the password is read from stdin)")
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise CliError("--password-stdin: no password on stdin")
    return line


def _open(cfg: Config) -> QueueStore:
    path = cfg.state_path / "queue"
    if not (path / "data.mdb").exists():
        raise CliError(f"no queue at {path} (has relay ever run with this config?)")
    return QueueStore(path, SystemClock(), map_size=cfg.server.queue_map_size)


_WILDCARDS = ("", "0.0.0.0", "::", "*")


def _addresses(host: str) -> set[str]:
    """The IP addresses `host` names (itself when it is one; none when it does not resolve)."""
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None,
                                                              type=socket.SOCK_STREAM)}
    except OSError:
        return set()


def _is_local(ip: str) -> bool:
    """An address of this machine: one a socket can be bound to."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((ip, 0))
    except OSError:
        return False
    return True


def own_listener(cfg: Config, to: HostPort) -> str | None:
    """This node's listener that `to` reaches, if any (then a transfer would go to itself):
    the same port, and the same address, or any local address for a wildcard listener."""
    targets = _addresses(to.host)
    for listener in cfg.listener:
        address = listener.address
        if address.port != to.port:
            continue
        if address.host in _WILDCARDS:
            if any(_is_local(ip) for ip in targets):
                return str(address)
        elif targets & _addresses(address.host):
            return str(address)
    return None


def _to_self(to: HostPort, why: str) -> int:
    print(f"relay: --to {to}: that is this node ({why}); a node cannot transfer its queue to "
          "itself: name another node's submission listener. Nothing was moved.",
          file=sys.stderr)
    return 2


@dataclass
class Outcome:
    """What became of one claimed message: the peer's 250 (`reply`), or why not."""

    claim: Claim
    reply: str = ""
    refused: str = ""   # this message refused: it stays queued, the run goes on
    lost: str = ""      # the connection is gone: the run stops after this chunk
    to_self: str = ""   # the peer is this node: the run stops, exit 2


class Senders:
    """Up to N connections to the peer, each used by one thread at a time. The first is
    opened at once (a failure stops the run before anything is claimed); the others as
    the peer takes them (one it refuses, e.g. over its per-IP cap, is done without)."""

    def __init__(self, make: Callable[[], Peer], connections: int) -> None:
        first = make()
        first.connect()
        self.peers: list[Peer] = [first]
        for _ in range(connections - 1):
            peer = make()
            try:
                peer.connect()
            except CliError as e:
                print(f"relay: transfer: the peer took {len(self.peers)} of {connections} "
                      f"connection(s), going on with those: {e}", file=sys.stderr)
                break
            self.peers.append(peer)
        self.idle: queue.SimpleQueue[Peer] = queue.SimpleQueue()
        for peer in self.peers:
            self.idle.put(peer)
        self.pool = ThreadPoolExecutor(max_workers=len(self.peers),
                                       thread_name_prefix="transfer")

    def send(self, claim: Claim, data: bytes | None) -> Outcome:
        if data is None:
            return Outcome(claim, refused="its body is missing from the spool")
        peer = self.idle.get()
        try:
            msg = claim.message
            return Outcome(claim, reply=peer.send(msg.sender, claim.addresses, data))
        except PeerRefused as e:
            return Outcome(claim, refused=str(e))
        except PeerIsSelf as e:
            return Outcome(claim, to_self=str(e))
        except (PeerLost, CliError) as e:
            return Outcome(claim, lost=str(e))
        finally:
            self.idle.put(peer)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for peer in self.peers:
            peer.close()


def _chunks(listed: list[tuple[str, int]]) -> Iterator[list[str]]:
    """The queue ids in chunks of at most CHUNK messages and CHUNK_BYTES of bodies (what
    is held in memory at once)."""
    chunk: list[str] = []
    size = 0
    for mid, n in listed:
        if chunk and (len(chunk) >= CHUNK or size + n > CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(mid)
        size += n
    if chunk:
        yield chunk


@dataclass
class Tally:
    total: int = 0
    done: int = 0
    duplicates: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def sent(self) -> int:
        return self.done + self.duplicates


def cmd_transfer(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        to = parse_host_port(args.to, None)
    except ValueError as e:
        raise CliError(f"--to {args.to!r}: {e}; expected HOST:PORT") from None
    if args.limit < 0:
        raise CliError(f"--limit {args.limit}: expected 0 (all) or more")
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        raise CliError(f"--connections {args.connections}: expected 1 to {MAX_CONNECTIONS}")
    mine = own_listener(cfg, to)
    if mine is not None:
        return _to_self(to, f"it reaches this node's listener {mine}")
    password = _password(args)
    store = _open(cfg)
    tally = Tally()
    senders: Senders | None = None
    try:
        listed = [(m.id, m.size) for m, _ in store.messages()]
        if args.limit:
            listed = listed[:args.limit]
        tally.total = len(listed)
        if not listed:
            _report(args, to, tally)
            return 0
        senders = Senders(lambda: Peer(to, args.tls, not args.tls_no_verify, args.user,
                                       password), args.connections)
        began = time.monotonic()
        for chunk in _chunks(listed):
            stop = _transfer_chunk(store, senders, chunk, cfg.server.hostname, tally, args, to)
            print_every = tally.sent // PROGRESS_EVERY != (tally.sent - len(chunk)) \
                // PROGRESS_EVERY or tally.sent == tally.total
            if print_every:
                print(f"relay: transfer: {tally.sent} of {tally.total} sent to {to}, "
                      f"{tally.duplicates} already there, {tally.failed} refused "
                      f"({time.monotonic() - began:.0f}s)", file=sys.stderr, flush=True)
            if isinstance(stop, int):
                return stop
            if stop:
                raise CliError(f"{stop}; stopped after {tally.sent} of {tally.total}")
    finally:
        if senders is not None:
            senders.close()
        store.close_sync()
    _report(args, to, tally)
    return 0 if tally.failed == 0 and tally.skipped == 0 else 1


def _transfer_chunk(store: QueueStore, senders: Senders, chunk: list[str], node: str,
                    tally: Tally, args: argparse.Namespace, to: HostPort) -> str | int:
    """Claim a chunk in one transaction, send its messages over the connections, then in
    one transaction remove those the peer took and give back the rest. What stops the
    run ("" to go on): a lost connection's reason, or 2 (the peer is this node)."""
    clock = SystemClock()
    claimed = store.write_now(claim_many_op(store.dbs, chunk, clock.now()))
    claims: list[Claim] = []
    for mid, got in zip(chunk, claimed, strict=True):
        if isinstance(got, Claim):
            claims.append(got)
        elif got == "in flight":
            tally.skipped += 1
            print(f"relay: {mid}: skipped, a delivery is under way (run again)",
                  file=sys.stderr)
    try:
        bodies = [store.body(c.message.id) for c in claims]
        outcomes = list(senders.pool.map(
            lambda c, body: senders.send(c, None if body is None
                                         else transfer_fields(c.message, node) + body),
            claims, bodies))
        del bodies
    except BaseException:
        # Interrupted (^C): the whole chunk back as it was, not in flight until the relay's
        # next start. One the peer took meanwhile goes again next run, as a duplicate.
        store.write_now(settle_claims_op(store.dbs, [], claims, clock.now()))
        raise
    # The peer has these (now, or from an earlier run that died before their removal).
    taken = [o.claim for o in outcomes if o.reply]
    back = [o.claim for o in outcomes if not o.reply]
    store.write_now(settle_claims_op(store.dbs, taken, back, clock.now()))
    stop: str | int = ""
    for o in outcomes:
        mid = o.claim.message.id
        if o.reply:
            duplicate = _DUPLICATE.search(o.reply) is not None
            tally.duplicates += duplicate
            tally.done += not duplicate
            if args.verbose:
                print(f"{mid}: {len(o.claim.recipients)} recipient(s) -> {to}: {o.reply}"
                      + (" (already at the peer)" if duplicate else ""))
        elif o.refused:
            tally.failed += 1
            print(f"relay: {mid}: not transferred, stays queued: {o.refused}",
                  file=sys.stderr)
        elif o.to_self and not isinstance(stop, int):
            stop = _to_self(to, f"the peer answered {o.to_self}")
        elif o.lost and not stop:
            stop = f"{mid}: not transferred, stays queued: {o.lost}"
    return stop


def _report(args: argparse.Namespace, to: HostPort, t: Tally) -> None:
    if args.json:
        print(json.dumps({"to": str(to), "messages": t.total, "transferred": t.done,
                          "duplicates": t.duplicates, "failed": t.failed,
                          "skipped": t.skipped, "tag": TRANSFERRED_TAG}))
    else:
        print(f"{t.done} transferred, {t.duplicates} already at the peer (duplicates), "
              f"{t.failed} failed (still queued), {t.skipped} skipped (in flight): "
              f"{t.total} message(s) to {to} (tag {TRANSFERRED_TAG!r} at the peer)")
