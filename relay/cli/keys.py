"""`relay user keys create|list|revoke|smtp-password`: SES API access keys of an SMTP
credential (relay/sesapi/keys.py; <state_dir>/api_keys.json, secrets encrypted under
<state_dir>/api_keys.key).

`create NAME` prints the new key id and its secret once (stdout: "AccessKeyId ..." and
"SecretAccessKey ..." lines, or a JSON object with --json, shaped as IAM's
CreateAccessKey answer); nothing else ever prints a secret. `smtp-password KEYID` prints
the SES SMTP password derived from the key's secret for [api] region (or --region),
alone on stdout. Exit codes: 0 done, 1 a problem the user can fix (unknown user or key,
unreadable key file), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from relay.cli import CliError, load_config
from relay.cli.output import table
from relay.config import Api
from relay.events.model import iso
from relay.sesapi.keys import ApiKeyError, ApiKeyStore
from relay.sesapi.sigv4 import smtp_password
from relay.users import UserError, UserStore


def register(actions: Any) -> None:
    """Adds `keys` to the actions of `relay user`."""
    p: argparse.ArgumentParser = actions.add_parser(
        "keys", help="manage a user's SES API access keys",
        description="Access keys for the SES API (AWS Signature V4): each sends as the SMTP "
                    "user it belongs to. Secrets are stored encrypted in the state dir.")
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="make an access key for a user",
                            description="Make an access key id and secret access key for an "
                                        "existing SMTP user; the secret is printed once.")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--json", action="store_true",
                        help="print a JSON object (AccessKeyId, SecretAccessKey, UserName)")
    create.set_defaults(func=run_create)

    lst = sub.add_parser("list", help="list access keys (never their secrets)",
                         description="List the access keys of one user, or of every user.")
    lst.add_argument("name", nargs="?", default=None, metavar="NAME")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    lst.set_defaults(func=run_list)

    revoke = sub.add_parser("revoke", help="delete an access key",
                            description="Delete one of a user's access keys; requests signed "
                                        "with it are refused from then on.")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("key_id", metavar="KEYID")
    revoke.set_defaults(func=run_revoke)

    smtp = sub.add_parser("smtp-password", help="print the SES SMTP password of a key",
                          description="Print the SES SMTP password derived from an access "
                                      "key's secret (AWS's documented conversion); SMTP AUTH "
                                      "accepts the key id with it.")
    smtp.add_argument("key_id", metavar="KEYID")
    smtp.add_argument("--region", default=None, metavar="REGION",
                      help="the region to derive it for (default: [api] region)")
    smtp.set_defaults(func=run_smtp_password)


def _stores(args: argparse.Namespace) -> tuple[ApiKeyStore, UserStore]:
    cfg = load_config(args)
    try:
        return ApiKeyStore(cfg.state_path), UserStore(cfg.state_path / "users.json")
    except (ApiKeyError, UserError) as e:
        raise CliError(str(e)) from None


def run_create(args: argparse.Namespace) -> int:
    keys, users = _stores(args)
    try:
        if users.read_all().get(args.name) is None:
            raise CliError(f"no user {args.name!r} (add it first: relay user add "
                           f"{args.name})")
        key_id, secret = keys.create(args.name)
    except (ApiKeyError, UserError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"relay: access key {key_id} of user {args.name!r} created; its secret is printed "
          "once below, store it now", file=sys.stderr)
    if args.json:
        print(json.dumps({"AccessKeyId": key_id, "SecretAccessKey": secret,
                          "UserName": args.name}))
    else:
        print(f"AccessKeyId      {key_id}\nSecretAccessKey  {secret}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    keys, users = _stores(args)
    try:
        if args.name is not None and users.read_all().get(args.name) is None:
            raise CliError(f"no user {args.name!r}")
        found = keys.list_keys(args.name)
    except (ApiKeyError, UserError, OSError) as e:
        raise CliError(str(e)) from None
    rows = [{"key_id": k.key_id, "user": k.user, "created_at": iso(k.created_at)}
            for k in found]
    if args.json:
        print(json.dumps(rows))
        return 0
    table(rows, ["key_id", "user", "created_at"], empty="no access keys")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    keys, _ = _stores(args)
    try:
        keys.revoke(args.key_id, user=args.name)
    except (ApiKeyError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"access key {args.key_id} of user {args.name!r} revoked")
    return 0


def run_smtp_password(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    region = args.region or cfg.api.region
    try:
        Api(region=region)
    except ValueError as e:
        raise CliError(f"--region: {e}") from None
    try:
        secret = ApiKeyStore(cfg.state_path).secret(args.key_id)
    except (ApiKeyError, OSError) as e:
        raise CliError(str(e)) from None
    print(smtp_password(secret, region))
    return 0
