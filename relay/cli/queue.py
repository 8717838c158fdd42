"""`relay queue list|show|retry|delete|bounce`: see and act on the spool; the actions take
message ids, --all, or --domain D (every waiting recipient at one destination domain).
`relay queue transfer` (to another node) is relay/cli/transfer.py.

Works beside a running server: LMDB allows many processes, writes take the
store's cross-process write lock, and the server's scheduler re-checks each
recipient's state when it leases it, so a retried, bounced or deleted message
is picked up (or dropped) within one poll interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from relay.admin.params import BadInput, domain_name
from relay.admin.queueactions import (
    DOMAIN_CHUNK,
    OPERATOR_BOUNCE,
    OPERATOR_DELETE,
    bounce_events,
)
from relay.cli import CliError, load_config
from relay.cli.output import progress, table, wants_progress
from relay.clock import SystemClock
from relay.config import Config
from relay.events.log import EventLog
from relay.events.model import Event, bounce_event, iso
from relay.history.entries import batch_of
from relay.history.store import HistoryStore
from relay.queue.records import Action, MessageRecord, RecipientRecord, State
from relay.queue.store import QueueStore


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("queue", help="list and act on queued mail")
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $RELAY_CONFIG or the embedded dev config)")

    ls = qsub.add_parser("list", parents=[common], help="list queued messages, oldest first")
    ls.add_argument("--domain", help="only messages with a recipient at this domain")
    ls.add_argument("--state", choices=[s.value for s in State if not s.final],
                    help="only messages with a recipient in this state")
    ls.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    ls.set_defaults(func=cmd_list)

    show = qsub.add_parser("show", parents=[common], help="one message with its recipients")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--body", action="store_true", help="also print the raw message")
    show.set_defaults(func=cmd_show)

    for name, helptext, func in (
        ("retry", "attempt now the deferred recipients of a message (or --all)", cmd_retry),
        ("delete", "remove a message without a bounce (or --all)", cmd_delete),
        ("bounce", "fail a message's pending recipients, with Bounce events", cmd_bounce),
    ):
        sp = qsub.add_parser(name, parents=[common], help=helptext)
        sp.add_argument("ids", nargs="*", metavar="ID")
        sp.add_argument("--all", action="store_true", help="every queued message")
        sp.add_argument("--domain", metavar="DOMAIN",
                        help="every waiting recipient at this destination domain (a "
                             "message's recipients elsewhere are left as they are)")
        sp.add_argument("--progress", action="store_true",
                        help="progress bar on stderr even if it is not a terminal")
        sp.set_defaults(func=func)

    from relay.cli import transfer  # `relay queue transfer`: its own module
    transfer.add_parser(qsub, common)


def _open(cfg: Config) -> QueueStore:
    path = cfg.state_path / "queue"
    if not (path / "data.mdb").exists():
        raise CliError(f"no queue at {path} (has relay ever run with this config?)")
    return QueueStore(path, SystemClock(), map_size=cfg.server.queue_map_size)


def _row(msg: MessageRecord, rcpts: list[RecipientRecord]) -> dict[str, Any]:
    return {
        "id": msg.id, "received_at": iso(msg.received_at), "sender": msg.sender,
        "size": msg.size, "subject": msg.headers.get("Subject", ""),
        "recipients": [
            {"address": r.address, "state": r.state.value, "attempts": r.attempts,
             "next_attempt_at": iso(r.next_attempt_at) if not r.state.final else None,
             "last_response": r.last_response, "remote_mta": r.remote_mta}
            for r in rcpts],
    }


def cmd_list(args: argparse.Namespace) -> int:
    store = _open(load_config(args))
    shown = 0
    rows: list[dict[str, Any]] = []
    try:
        for msg, rcpts in store.messages():
            if args.domain and not any(r.domain == args.domain.lower() for r in rcpts):
                continue
            if args.state and not any(r.state.value == args.state for r in rcpts):
                continue
            if shown >= args.limit:
                break
            shown += 1
            if args.json:
                print(json.dumps(_row(msg, rcpts)))
            else:
                pending = [f"{r.address} ({r.state.value}, {r.attempts})" for r in rcpts
                           if not r.state.final]
                rows.append({"id": msg.id, "received": iso(msg.received_at),
                             "size": msg.size, "sender": msg.sender[:40],
                             "recipients": pending})
    finally:
        store.close_sync()
    if not args.json:
        table(rows, ["id", "received", "size", "sender", "recipients"])
        print(f"-- {shown} message(s)", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _open(load_config(args))
    try:
        msg = store.message(args.id)
        if msg is None:
            raise CliError(f"no queued message with id {args.id!r}")
        row = _row(msg, store.recipients(args.id))
        body = store.body(args.id) if args.body else None
    finally:
        store.close_sync()
    if args.json:
        if body is not None:
            row["body"] = body.decode("utf-8", "replace")
        print(json.dumps(row, indent=2))
        return 0
    for key in ("id", "received_at", "sender", "size", "subject"):
        print(f"{key:12} {row[key]}")
    for r in row["recipients"]:
        print(f"recipient    {r['address']}  state={r['state']}  attempts={r['attempts']}  "
              f"next={r['next_attempt_at']}")
        if r["last_response"]:
            print(f"             last: {r['last_response']}")
    if body is not None:
        sys.stdout.write("\n" + body.decode("utf-8", "replace"))
    return 0


def _targets(store: QueueStore, args: argparse.Namespace) -> list[str]:
    if args.all == bool(args.ids):
        raise CliError("give message ids, --all or --domain (one of them)")
    if args.all:
        return [m.id for m, _ in store.messages()]
    return list(args.ids)


def _act(args: argparse.Namespace, what: str) -> int:
    if args.domain is not None:
        return _act_domain(args, what)
    cfg = load_config(args)
    store = _open(cfg)
    clock = SystemClock()
    missing = 0
    done = 0
    events: EventLog | None = None
    try:
        ids = _targets(store, args)
        bar = len(ids) > 1 and wants_progress(args.progress)
        for mid in progress(ids, len(ids), label=what, enabled=bar):
            now = clock.now()
            try:
                if what == "delete":
                    store.write_now(store.delete_op(mid))
                elif what == "retry":
                    store.write_now(store.operator_op(mid, Action.RETRY, now))
                else:
                    settled = store.write_now(store.operator_op(
                        mid, Action.BOUNCE, now, OPERATOR_BOUNCE))
                    if settled:
                        if events is None:
                            events = EventLog(_events_path(cfg))
                        _publish(cfg, store, events, [bounce_event(
                            settled[0].message, [s.recipient.address for s in settled],
                            settled[0].recipient.last_response, now, cfg.server.hostname)])
                done += 1
            except KeyError:
                print(f"relay: no queued message with id {mid!r}", file=sys.stderr)
                missing += 1
    finally:
        store.close_sync()
        if events is not None:
            events.close()
    print(f"{what}: {done} message(s)")
    return 1 if missing else 0


def _act_domain(args: argparse.Namespace, what: str) -> int:
    """retry / bounce / delete every waiting recipient at one destination domain, as
    POST /api/queue/retry?domain= (and bounce, DELETE) do."""
    if args.ids or args.all:
        raise CliError("give message ids, --all or --domain (one of them)")
    try:
        domain = domain_name("domain", args.domain)
    except BadInput as e:
        raise CliError(f"--{e.message}") from None
    cfg = load_config(args)
    store = _open(cfg)
    clock = SystemClock()
    events: EventLog | None = None
    messages: set[str] = set()
    recipients = 0
    try:
        mids = store.pending_at(domain)
        chunks = range(0, len(mids), DOMAIN_CHUNK)
        bar = len(chunks) > 1 and wants_progress(args.progress)
        for i in progress(chunks, len(chunks), label=what, enabled=bar):
            chunk, now = mids[i:i + DOMAIN_CHUNK], clock.now()
            if what == "delete":
                settled = store.write_now(store.drop_domain_op(chunk, domain, now,
                                                               OPERATOR_DELETE))
            elif what == "retry":
                settled = store.write_now(store.domain_op(chunk, domain, Action.RETRY, now))
            else:
                settled = store.write_now(store.domain_op(chunk, domain, Action.BOUNCE, now,
                                                          OPERATOR_BOUNCE))
                if settled:
                    if events is None:
                        events = EventLog(_events_path(cfg))
                    _publish(cfg, store, events, bounce_events(settled, now,
                                                               cfg.server.hostname))
            messages.update(s.message.id for s in settled)
            recipients += len(settled)
    finally:
        store.close_sync()
        if events is not None:
            events.close()
    print(f"{what}: {recipients} recipient(s) at {domain} in {len(messages)} message(s)")
    return 0


def _publish(cfg: Config, store: QueueStore, events: EventLog, published: list[Event]) -> None:
    """Publish events this command caused, and record them in the message history (the
    running server's recorder never sees events another process publishes)."""
    events.emit(published)
    if cfg.history.enabled:
        store.write_now(HistoryStore(store).record_op(*batch_of(published)))


def _events_path(cfg: Config) -> Path:
    p = Path(cfg.events.log)
    return p if p.is_absolute() else cfg.state_path / p


def cmd_retry(args: argparse.Namespace) -> int:
    return _act(args, "retry")


def cmd_delete(args: argparse.Namespace) -> int:
    return _act(args, "delete")


def cmd_bounce(args: argparse.Namespace) -> int:
    return _act(args, "bounce")
