"""`relay message show|search`: a message's history (what happened to the mail to this
customer, and why) and searches of it, read from the spool directly like `relay queue`.

`show ID` takes a queue id or a Message-ID header value and prints the message, each
recipient's status and the timeline (every attempt with its remote reply, every event);
`--json` prints what GET /api/messages/{id} answers. `search` prints a table, newest
first, and on stderr the --cursor of the next page; `--json` prints the API's answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from relay.admin.historyview import message_detail, message_row
from relay.admin.params import HISTORY_MAX_LIMIT
from relay.cli import CliError, load_config
from relay.cli.history import choice, count, when
from relay.cli.output import table
from relay.cli.queue import _open
from relay.clock import SystemClock
from relay.history.model import STATUSES, MessageQuery
from relay.history.store import HistoryStore

_FILTERS = ("recipient", "sender", "subject", "message-id", "tenant", "configuration-set",
            "identity")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "message", help="the history of sent messages: search, and one message's timeline")
    msub = p.add_subparsers(dest="message_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $RELAY_CONFIG or the embedded dev config)")
    common.add_argument("--json", action="store_true", help="JSON as the admin API answers")

    show = msub.add_parser("show", parents=[common],
                           help="one message: recipients, attempts and events")
    show.add_argument("id", metavar="ID", help="a queue id or a Message-ID header value")
    show.set_defaults(func=cmd_show)

    search = msub.add_parser("search", parents=[common],
                             help="messages matching every condition given, newest first")
    for name in _FILTERS:
        search.add_argument(f"--{name}", metavar="TEXT", default="")
    search.add_argument("--status", metavar="STATUS",
                        help=f"a recipient's status now: {', '.join(STATUSES)}")
    search.add_argument("--since", metavar="TIME",
                        help="received at or after: 24h (ago), ISO 8601 or epoch seconds")
    search.add_argument("--until", metavar="TIME", help="received before (same forms)")
    search.add_argument("--limit", metavar="N", help="at most this many (default 50)")
    search.add_argument("--cursor", metavar="CURSOR", default="",
                        help="the next page (printed after a full page)")
    search.set_defaults(func=cmd_search)


def cmd_show(args: argparse.Namespace) -> int:
    store = _open(load_config(args))
    try:
        view = HistoryStore(store).get(args.id)
        detail = None if view is None else message_detail(
            view.message, view.timeline, view.by_recipient())
    finally:
        store.close_sync()
    if detail is None:
        raise CliError(f"no message with id {args.id!r} in the history")
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    for key in ("id", "message_id", "received_at", "sender", "from", "to", "subject",
                "tenant", "configuration_set", "identity", "size", "client_ip",
                "auth_user", "dkim", "status"):
        value = detail.get(key)
        if isinstance(value, list):
            value = ", ".join(value)
        if value not in ("", None, 0):  # size 0: not known (only the Send's size is)
            print(f"{key:18} {value}")
    if detail.get("partial"):
        print(f"{'partial':18} yes (its Send is not in the history)")
    print()
    table(detail["recipients"], ["address", "status", "attempts", "provider",
                                 "last_response"], empty="(no recipients recorded)")
    print()
    table([_timeline_cells(e) for e in detail["timeline"]],
          ["ts", "recipient", "kind", "what"], empty="(no timeline entries)")
    return 0


def _timeline_cells(e: dict[str, Any]) -> dict[str, Any]:
    """An entry in one line: an attempt's outcome, route and reply; an event's detail."""
    parts: list[str] = []
    if e["kind"] == "attempt":
        parts.append(e.get("result", ""))
        if e.get("source_ip"):
            parts.append(f"from {e['source_ip']}")
        if e.get("mx_host"):
            parts.append(f"to {e['mx_host']}"
                         + (f" [{e['remote_ip']}]" if e.get("remote_ip") else ""))
        if e.get("tls"):
            parts.append("tls")
        if e.get("duration_ms"):
            parts.append(f"{e['duration_ms']} ms")
    elif e.get("detail"):
        parts.append(e["detail"])
    if e.get("response"):
        parts.append(e["response"])
    return {"ts": e["ts"], "recipient": e.get("recipient") or "(all)", "kind": e["kind"],
            "what": " ".join(p for p in parts if p)}


def cmd_search(args: argparse.Namespace) -> int:
    now = SystemClock().now()
    since, until = when("--since", args.since, now), when("--until", args.until, now)
    if since is not None and until is not None and until < since:
        raise CliError(f"--until: expected a time after --since, got {args.until!r}")
    q = MessageQuery(
        recipient=args.recipient.strip(), sender=args.sender.strip(),
        subject=args.subject.strip(), message_id=args.message_id.strip().strip("<>"),
        tenant=args.tenant.strip(), configuration_set=args.configuration_set.strip(),
        identity=args.identity.strip(), status=choice("--status", args.status, STATUSES),
        since=since, until=until,
        limit=count("--limit", args.limit, 1, HISTORY_MAX_LIMIT, 50),
        cursor=args.cursor.strip())
    store = _open(load_config(args))
    try:
        page = HistoryStore(store).search(q)
    finally:
        store.close_sync()
    rows = [message_row(m) for m in page.messages]
    if args.json:
        print(json.dumps({"messages": rows, "count": len(rows),
                          "next_cursor": page.next_cursor, "scanned": page.scanned}))
        return 0
    table([{"id": r["id"], "received": r["received_at"], "status": r["status"],
            "from": r["from"] or r["sender"],
            "to": [x["address"] for x in r["recipients"]] or r["to"],
            "subject": r["subject"][:60]} for r in rows],
          ["id", "received", "status", "from", "to", "subject"], empty="(no messages)")
    more = f"; next page: --cursor {page.next_cursor}" if page.next_cursor else ""
    print(f"-- {len(rows)} message(s){more}", file=sys.stderr)
    return 0
