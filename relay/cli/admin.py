"""`relay admin token add|list|remove`: bearer tokens for the admin API and dashboard.

`add NAME` prints the new token once on stdout (only its SHA-256 is stored, in
<state_dir>/admin_tokens.json); a running server sees the change at once.
Exit codes: 0 done, 1 a problem the user can fix (duplicate/unknown name), 2 usage.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from relay.admin.tokens import TokenError, TokenStore
from relay.cli import CliError, load_config
from relay.events.model import iso


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "admin", help="admin API access (bearer tokens)",
        description="Manage access to the admin HTTP API, metrics and dashboard.")
    nouns = p.add_subparsers(dest="admin_command", metavar="NOUN", required=True)
    token = nouns.add_parser("token", help="bearer tokens (stored hashed)",
                             description="Create, list and remove admin API tokens.")
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $RELAY_CONFIG or the embedded dev config)")

    add = actions.add_parser("add", parents=[common], help="create a token and print it once")
    add.add_argument("name", metavar="NAME", help="what the token is for, e.g. prometheus")
    add.add_argument("--json", action="store_true", help="print {\"name\", \"token\"} as JSON")
    add.set_defaults(func=run_add)

    lst = actions.add_parser("list", parents=[common], help="list tokens (names only)")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    lst.set_defaults(func=run_list)

    rm = actions.add_parser("remove", parents=[common], help="remove (revoke) a token")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=run_remove)


def _store(args: argparse.Namespace) -> TokenStore:
    cfg = load_config(args)
    try:
        return TokenStore.in_state_dir(cfg.state_path)
    except TokenError as e:
        raise CliError(str(e)) from None


def run_add(args: argparse.Namespace) -> int:
    try:
        token = _store(args).add(args.name)
    except TokenError as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps({"name": args.name, "token": token}))
    else:
        print(token)
    return 0


def run_list(args: argparse.Namespace) -> int:
    records = _store(args).list()
    if args.json:
        print(json.dumps([{"name": r.name, "created_at": iso(r.created_at)} for r in records]))
        return 0
    print(f"{'NAME':32}  CREATED")
    for r in records:
        print(f"{r.name:32}  {iso(r.created_at)}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    try:
        _store(args).remove(args.name)
    except TokenError as e:
        raise CliError(str(e)) from None
    print(f"removed token {args.name!r}")
    return 0
