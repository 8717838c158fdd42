"""`relay suppression add|remove|list|import|export`: the account-level suppression list,
or with `--tenant NAME` that tenant's own list (used when the tenant's suppression scope
is "tenant").

Works beside a running server (LMDB allows many processes; the server reads the list at
each delivery attempt). CSV columns: address, reason, created_at (ISO 8601), message_id;
import needs only the address column (reason defaults to --reason). A progress bar goes
to stderr when it is a terminal, or always with --progress.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from relay.cli import CliError, load_config
from relay.cli.output import Progress, table, wants_progress
from relay.clock import SystemClock
from relay.config import Config
from relay.events.model import iso
from relay.queue.store import QueueStore
from relay.suppression.policy import normalize, parse_reason, valid_address
from relay.suppression.store import Entry, SuppressionList
from relay.tenants.model import valid_tenant_name

BATCH = 5000


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "suppression", help="the account-level suppression list")
    ssub = p.add_subparsers(dest="suppression_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $RELAY_CONFIG or the embedded dev config)")
    common.add_argument("--tenant", metavar="NAME", default="",
                        help="this tenant's own list instead of the account-level list")

    add = ssub.add_parser("add", parents=[common], help="put addresses on the list")
    add.add_argument("addresses", nargs="+", metavar="ADDRESS")
    add.add_argument("--reason", default="BOUNCE", help="BOUNCE (default) or COMPLAINT")
    add.set_defaults(func=cmd_add)

    rm = ssub.add_parser("remove", parents=[common], help="take addresses off the list")
    rm.add_argument("addresses", nargs="+", metavar="ADDRESS")
    rm.set_defaults(func=cmd_remove)

    ls = ssub.add_parser("list", parents=[common], help="list suppressed addresses")
    ls.add_argument("--reason", help="only BOUNCE or COMPLAINT")
    ls.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    ls.set_defaults(func=cmd_list)

    imp = ssub.add_parser("import", parents=[common], help="add addresses from a CSV file")
    imp.add_argument("file", help="CSV file ('-' = stdin); a header row is optional")
    imp.add_argument("--reason", default="BOUNCE", help="for rows without a reason")
    imp.add_argument("--progress", action="store_true", help="progress bar even if not a TTY")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.set_defaults(func=cmd_import)

    exp = ssub.add_parser("export", parents=[common], help="write the list as CSV")
    exp.add_argument("file", nargs="?", default="-", help="output file (default stdout)")
    exp.add_argument("--reason", help="only BOUNCE or COMPLAINT")
    exp.add_argument("--progress", action="store_true", help="progress bar even if not a TTY")
    exp.set_defaults(func=cmd_export)


def _open(cfg: Config) -> QueueStore:
    return QueueStore(cfg.state_path / "queue", SystemClock(),
                      map_size=cfg.server.queue_map_size)


def _list(store: QueueStore, args: argparse.Namespace) -> SuppressionList:
    """The account-level list, or the --tenant's own list."""
    tenant = getattr(args, "tenant", "")
    if tenant and not valid_tenant_name(tenant):
        raise CliError(f"--tenant: {tenant!r} is not a tenant name (expected 1-64 letters, "
                       "digits, '-' or '_')")
    return SuppressionList(store, tenant)


def _reason(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return parse_reason(text).value
    except ValueError as e:
        raise CliError(str(e)) from None


def _wants_progress(args: argparse.Namespace) -> bool:
    return wants_progress(bool(getattr(args, "progress", False)))


def _to_cluster(args: argparse.Namespace, tenant: str, entries: list[Entry],
                removed: list[str]) -> None:
    """[cluster] set: the change reaches every node's copy of the list, through Redis."""
    cfg = load_config(args)
    if not cfg.cluster.enabled or not (entries or removed):
        return
    # Imported here, only with [cluster] set: without it the CLI never loads redis.
    from relay.cluster.suppression import publish_once

    if not asyncio.run(publish_once(cfg.cluster, SystemClock(), tenant, entries, removed)):
        raise CliError("changed on this node only: redis unreachable, the other nodes do "
                       "not see it (run the command again when redis answers)")


def cmd_add(args: argparse.Namespace) -> int:
    reason = _reason(args.reason) or "BOUNCE"
    bad = [a for a in args.addresses if not valid_address(normalize(a))]
    if bad:
        raise CliError(f"not an email address: {bad[0]}")
    store = _open(load_config(args))
    try:
        now = SystemClock().now()
        lst = _list(store, args)
        entries = [Entry(normalize(a), reason, now, "", "added by operator")
                   for a in args.addresses]
        added = store.write_now(lst.add_op(entries))
    finally:
        store.close_sync()
    _to_cluster(args, lst.tenant, entries, [])
    print(f"added {added} address(es) ({len(args.addresses) - added} already listed, "
          f"reason now {reason})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    # No syntax check: any listed entry can be removed, a malformed one included.
    store = _open(load_config(args))
    try:
        lst = _list(store, args)
        removed = store.write_now(lst.remove_op(list(dict.fromkeys(args.addresses))))
    finally:
        store.close_sync()
    _to_cluster(args, lst.tenant, [], [normalize(a) for a in dict.fromkeys(args.addresses)])
    print(f"removed {removed} address(es)")
    return 0 if removed == len(set(args.addresses)) else 1


def _row(e: Entry) -> dict[str, str]:
    return {"address": e.address, "reason": e.reason, "created_at": iso(e.created_at),
            "message_id": e.message_id}


def cmd_list(args: argparse.Namespace) -> int:
    reason = _reason(args.reason)
    store = _open(load_config(args))
    try:
        rows: list[dict[str, str]] = []
        for shown, e in enumerate(_list(store, args).entries(reason=reason)):
            if shown >= args.limit:
                break
            if args.json:
                print(json.dumps({**_row(e), "diagnostic": e.diagnostic}))
            else:
                rows.append(_row(e))
    finally:
        store.close_sync()
    if not args.json:
        table(rows, ["address", "reason", ("created_at", "since"), ("message_id", "message")])
    return 0


def _parse_time(text: str, default: float) -> float:
    if not text:
        return default
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def _rows(fh: TextIO) -> list[list[str]]:
    return [row for row in csv.reader(fh) if row and any(c.strip() for c in row)]


def cmd_import(args: argparse.Namespace) -> int:
    default_reason = _reason(args.reason) or "BOUNCE"
    try:
        if args.file == "-":
            rows = _rows(sys.stdin)
        else:
            with open(args.file, newline="", encoding="utf-8") as fh:
                rows = _rows(fh)
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror}") from None
    if rows and rows[0][0].strip().lower() in ("address", "email", "emailaddress"):
        rows = rows[1:]
    now = SystemClock().now()
    entries: list[Entry] = []
    skipped: list[str] = []
    for i, row in enumerate(rows, 1):
        address = normalize(row[0])
        reason_text = row[1].strip() if len(row) > 1 and row[1].strip() else default_reason
        try:
            reason = parse_reason(reason_text).value
        except ValueError:
            skipped.append(f"row {i}: reason {reason_text!r}")
            continue
        if not valid_address(address):
            skipped.append(f"row {i}: {row[0]!r} is not an address")
            continue
        created = _parse_time(row[2].strip() if len(row) > 2 else "", now)
        entries.append(Entry(address, reason, created, row[3].strip() if len(row) > 3 else "",
                             "imported"))
    store = _open(load_config(args))
    progress = Progress("importing", len(entries), _wants_progress(args))
    added = 0
    try:
        lst = _list(store, args)
        for start in range(0, len(entries), BATCH):
            chunk = entries[start:start + BATCH]
            added += store.write_now(lst.add_op(chunk))
            progress.step(len(chunk))
    finally:
        progress.close()
        store.close_sync()
    _to_cluster(args, lst.tenant, entries, [])
    for s in skipped[:20]:
        print(f"relay: skipped {s}", file=sys.stderr)
    summary = {"read": len(rows), "imported": len(entries), "new": added,
               "skipped": len(skipped)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"imported {len(entries)} address(es) ({added} new), skipped {len(skipped)}")
    return 1 if skipped else 0


def cmd_export(args: argparse.Namespace) -> int:
    reason = _reason(args.reason)
    store = _open(load_config(args))
    try:
        lst = _list(store, args)
        progress = Progress("exporting", lst.count(), _wants_progress(args))
        out: TextIO = sys.stdout if args.file == "-" else \
            open(Path(args.file), "w", newline="", encoding="utf-8")  # noqa: SIM115
        try:
            writer = csv.writer(out)
            writer.writerow(["address", "reason", "created_at", "message_id"])
            n = 0
            for e in lst.entries(reason=reason):
                r = _row(e)
                writer.writerow([r["address"], r["reason"], r["created_at"], r["message_id"]])
                n += 1
                if n % 1000 == 0:
                    progress.step(1000)
            progress.step(n % 1000)
        finally:
            if out is not sys.stdout:
                out.close()
            progress.close()
    finally:
        store.close_sync()
    if args.file != "-":
        print(f"exported {n} address(es) to {args.file}", file=sys.stderr)
    return 0
