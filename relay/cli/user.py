"""`relay user add|list|show|remove|passwd|tenant|quota|...`: SMTP credentials in
<state_dir>/users.json.

Passwords come from `--password-stdin` (one line, for scripts), are prompted for twice
with getpass, or are made by relay with `--generate-password` (printed once, alone on
stdout, so a script can capture it). A password set here has at least
MIN_NEW_PASSWORD_LENGTH characters (relay/users.py says why). A password is never
logged or put in an error message; only a generated one is printed, once. Exit codes:
0 done, 1 a problem the user can fix (unknown/duplicate user, empty, short or mismatched
password, unreadable users file), 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from relay.cli import CliError, load_config
from relay.cli import keys as keys_cli
from relay.cli.output import table
from relay.cli.tenant import check_tenants_exist
from relay.events.model import iso
from relay.identity.model import IdentityError, check_pattern
from relay.sesapi.keys import ApiKeyError, ApiKeyStore
from relay.tenants.store import TenantError, check_quota
from relay.users import (
    MIN_NEW_PASSWORD_LENGTH,
    UserError,
    UserRecord,
    UserStore,
    check_new_password,
    generate_password,
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "user", help="manage SMTP credentials (scrypt hashes in <state_dir>/users.json)",
        description="Manage the users that may authenticate to the submission listeners.")
    actions = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="add a user", description="Add an SMTP user.")
    add.add_argument("name", metavar="NAME")
    _password_options(add)
    add.add_argument("--allow", action="append", default=[], metavar="IDENTITY",
                     help="an identity or address pattern this user may send as "
                          "(repeat; default: any verified identity)")
    add.add_argument("--pool", default="", metavar="POOL",
                     help="the [[pool]] this user's mail leaves from when its configuration "
                          "set names none (default: delivery.pool)")
    add.add_argument("--configuration-set", default="", metavar="NAME",
                     help="the [[configuration_set]] of this user's mail when a message names "
                          "none (X-SES-CONFIGURATION-SET)")
    add.add_argument("--tenant", default="default", metavar="TENANT",
                     help="the tenant this user belongs to: its mail's tenant when a message "
                          "names none (default: default)")
    _tenants_option(add)
    add.set_defaults(func=run_add)

    utenant = actions.add_parser("tenant", help="move a user to another tenant",
                                 description="Set the tenant a user belongs to (and the "
                                             "further tenants it may name per message).")
    utenant.add_argument("name", metavar="NAME")
    utenant.add_argument("tenant", metavar="TENANT")
    _tenants_option(utenant)
    utenant.add_argument("--no-other-tenants", action="store_true",
                         help="may send for TENANT only")
    utenant.set_defaults(func=run_tenant)

    uquota = actions.add_parser("quota", help="set a user's own sending quota",
                                description="Override the tenant's quota for this user's "
                                            "mail (or --clear the override).")
    uquota.add_argument("name", metavar="NAME")
    uquota.add_argument("--max-24h-send", type=int, default=None, metavar="N",
                        help="recipients in a rolling 24 hours (0 = unlimited)")
    uquota.add_argument("--max-send-rate", type=float, default=None, metavar="R",
                        help="recipients per second (0 = unlimited)")
    uquota.add_argument("--clear", action="store_true", help="use the tenant's quota again")
    uquota.set_defaults(func=run_quota)

    show = actions.add_parser("show", help="show a user", description="Show one SMTP user "
                                                                       "(never its password).")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.set_defaults(func=run_show)

    uset = actions.add_parser("configuration-set", help="set a user's default configuration set",
                              description="Set the [[configuration_set]] used for a user's "
                                          "mail when the message names none.")
    uset.add_argument("name", metavar="NAME")
    uset.add_argument("configuration_set", nargs="?", default="", metavar="SET",
                      help="a [[configuration_set]] of the config; none = no default")
    uset.set_defaults(func=run_configuration_set)

    upool = actions.add_parser("pool", help="set a user's default pool",
                               description="Set the [[pool]] a user's mail leaves from when "
                                           "its configuration set names none.")
    upool.add_argument("name", metavar="NAME")
    upool.add_argument("pool", nargs="?", default="", metavar="POOL",
                       help="a [[pool]] of the config; none = delivery.pool")
    upool.set_defaults(func=run_pool)

    allow = actions.add_parser("allow", help="set the identities a user may send as",
                               description="Replace a user's sending authorization: the "
                                           "identities or address patterns it may use.")
    allow.add_argument("name", metavar="NAME")
    allow.add_argument("patterns", nargs="*", metavar="IDENTITY",
                       help="domains, addresses or patterns like '*@news.example.com'; "
                            "none = any verified identity")
    allow.set_defaults(func=run_allow)

    passwd = actions.add_parser("passwd", help="change a user's password",
                                description="Set a new password for an existing user.")
    passwd.add_argument("name", metavar="NAME")
    _password_options(passwd)
    passwd.set_defaults(func=run_passwd)

    remove = actions.add_parser("remove", help="remove a user",
                                description="Remove an SMTP user.")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=run_remove)

    lst = actions.add_parser("list", help="list users", description="List SMTP users.")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    lst.set_defaults(func=run_list)

    keys_cli.register(actions)


def _tenants_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenants", action="append", default=[], metavar="A,B",
                        help="further tenants a platform credential may name per message "
                             "with X-SES-TENANT (comma-separated or repeated)")


def _tenant_names(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(its own tenant, the further ones), each an existing tenant of the spool."""
    own = args.tenant.strip()
    others = [t.strip() for raw in args.tenants for t in raw.split(",") if t.strip()]
    check_tenants_exist(load_config(args), [own, *others])
    return own, [t for t in dict.fromkeys(others) if t != own]


def _password_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input "
                             f"(at least {MIN_NEW_PASSWORD_LENGTH} characters)")
    source.add_argument("--generate-password", action="store_true",
                        help="make a random 24-character password and print it once, "
                             "alone on standard output")


def _store(args: argparse.Namespace) -> UserStore:
    cfg = load_config(args)
    try:
        return UserStore(cfg.state_path / "users.json")
    except UserError as e:
        raise CliError(str(e)) from None


def _new_password(args: argparse.Namespace) -> str:
    """The password to set: generated, or read and checked against the minimum length."""
    if args.generate_password:
        return generate_password()
    password = _read_password(args)
    try:
        check_new_password(password)
    except UserError as e:
        raise CliError(f"{e} (or let relay make one: --generate-password)") from None
    return password


def _show_generated(args: argparse.Namespace, password: str, done: str) -> None:
    """What was done goes to stderr; a generated password, once, alone on stdout."""
    if args.generate_password:
        print(f"relay: {done}; its generated password is printed once below, store it now",
              file=sys.stderr)
        print(password)
    else:
        print(done)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise CliError("no password on standard input (--password-stdin)")
        return password
    if not sys.stdin.isatty():
        raise CliError("standard input is not a terminal; use --password-stdin")
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Password (again): ")
    except EOFError:
        raise CliError("no password given") from None
    if first != second:
        raise CliError("the passwords do not match")
    return first


def run_add(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if store.get(args.name) is not None:
            raise CliError(f"user {args.name!r} already exists (use `relay user passwd`)")
        tenant, others = _tenant_names(args)
        password = _new_password(args)
        store.add(args.name, password, _patterns(args.allow),
                  pool=_pool(args, args.pool),
                  configuration_set=_configuration_set(args, args.configuration_set),
                  tenant=tenant, tenants=others)
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    _show_generated(args, password, f"user {args.name!r} added")
    return 0


def _pool(args: argparse.Namespace, pool: str) -> str:
    cfg = load_config(args)
    if pool and pool not in {p.name for p in cfg.pool}:
        known = ", ".join(p.name for p in cfg.pool) or "none configured"
        raise CliError(f"no [[pool]] named {pool!r} in the config (pools: {known})")
    return pool


def run_pool(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.set_pool(args.name, _pool(args, args.pool))
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"user {args.name!r} sends from pool: {args.pool or 'delivery.pool'}")
    return 0


def _configuration_set(args: argparse.Namespace, name: str) -> str:
    cfg = load_config(args)
    if not name:
        return ""
    cs = cfg.configuration_set_named(name)
    if cs is None:
        known = ", ".join(c.name for c in cfg.configuration_set) or "none configured"
        raise CliError(f"no [[configuration_set]] named {name!r} in the config "
                       f"(configuration sets: {known})")
    return cs.name


def run_configuration_set(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.set_configuration_set(args.name,
                                    _configuration_set(args, args.configuration_set))
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"user {args.name!r} default configuration set: {args.configuration_set or 'none'}")
    return 0


def _patterns(raw: list[str]) -> list[str]:
    try:
        return [check_pattern(p) for p in raw]
    except IdentityError as e:
        raise CliError(str(e)) from None


def run_allow(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.set_allow(args.name, _patterns(args.patterns))
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    shown = ", ".join(args.patterns) or "any verified identity"
    print(f"user {args.name!r} may send as: {shown}")
    return 0


def run_passwd(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if store.get(args.name) is None:
            raise CliError(f"no user {args.name!r}")
        password = _new_password(args)
        store.set_password(args.name, password)
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    _show_generated(args, password, f"password of {args.name!r} changed")
    return 0


def run_tenant(args: argparse.Namespace) -> int:
    store = _store(args)
    tenant, others = _tenant_names(args)
    if args.no_other_tenants and others:
        raise CliError("--no-other-tenants: give it without --tenants")
    try:
        store.set_tenant(args.name, tenant,
                         [] if args.no_other_tenants else (others or None))
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    rec = store.get(args.name)
    shown = ", ".join(rec.allowed_tenants) if rec is not None else tenant
    print(f"user {args.name!r} belongs to tenant {tenant!r} (may send for: {shown})")
    return 0


def run_quota(args: argparse.Namespace) -> int:
    if args.clear and (args.max_24h_send is not None or args.max_send_rate is not None):
        raise CliError("--clear: give it alone, not with --max-24h-send or --max-send-rate")
    if not args.clear and args.max_24h_send is None and args.max_send_rate is None:
        raise CliError("quota: expected --max-24h-send N, --max-send-rate R or --clear")
    store = _store(args)
    try:
        old = store.get(args.name)
        if old is None:
            raise CliError(f"no user {args.name!r}")
        if args.clear:
            m24, rate = None, None
        else:
            m24 = old.max_24h_send if args.max_24h_send is None else args.max_24h_send
            rate = old.max_send_rate if args.max_send_rate is None else args.max_send_rate
        quota = check_quota(m24, rate)
        store.set_quota(args.name, quota.max_24h_send, quota.max_send_rate)
    except TenantError as e:
        raise CliError(str(e)) from None
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    if args.clear:
        print(f"user {args.name!r} uses its tenant's quota")
    else:
        print(f"user {args.name!r}: max_24h_send {_limit(quota.max_24h_send)}, "
              f"max_send_rate {_limit(quota.max_send_rate)}")
    return 0


def _limit(value: float | None) -> str:
    return "the tenant's" if value is None else str(value)


def _user_row(name: str, rec: UserRecord) -> dict[str, Any]:
    return {"name": name, "created_at": rec.created_at, "updated_at": rec.updated_at,
            "allow": rec.allow, "pool": rec.pool, "configuration_set": rec.configuration_set,
            "tenant": rec.tenant, "tenants": rec.allowed_tenants,
            "max_24h_send": rec.max_24h_send, "max_send_rate": rec.max_send_rate}


def run_show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rec = store.read_all().get(args.name)
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    if rec is None:
        raise CliError(f"no user {args.name!r}")
    row = _user_row(args.name, rec)
    if args.json:
        print(json.dumps(row))
        return 0
    lines = [("Name", args.name), ("Tenant", rec.tenant),
             ("Tenants", ", ".join(rec.allowed_tenants)),
             ("Max24HourSend", _limit(rec.max_24h_send)),
             ("MaxSendRate", _limit(rec.max_send_rate)),
             ("Allow", ", ".join(rec.allow) or "any verified identity"),
             ("ConfigurationSet", rec.configuration_set or "-"),
             ("Pool", rec.pool or "delivery.pool"),
             ("CreatedAt", iso(rec.created_at) if rec.created_at else "-")]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 2}}{value}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.remove(args.name)
        # Its access keys go with it: they would sign as a credential that is gone.
        revoked = ApiKeyStore(load_config(args).state_path).revoke_user(args.name)
    except (UserError, ApiKeyError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"user {args.name!r} removed" + (f" with its access keys {', '.join(revoked)}"
                                          if revoked else ""))
    return 0


def run_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        records = dict(sorted(store.read_all().items()))
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps([_user_row(name, rec) for name, rec in records.items()]))
        return 0
    table([{"name": name, "allow": rec.allow or "any verified identity",
            "configuration_set": rec.configuration_set, "pool": rec.pool,
            "tenant": ", ".join(rec.allowed_tenants),
            "quota": _quota_cell(rec),
            "created_at": iso(rec.created_at) if rec.created_at else ""}
           for name, rec in records.items()],
          ["name", "tenant", "configuration_set", "pool", "quota", "created_at", "allow"],
          empty="no users")
    return 0


def _quota_cell(rec: UserRecord) -> str:
    """The per-credential override, "" (shown "-") when the tenant's quota applies."""
    if rec.max_24h_send is None and rec.max_send_rate is None:
        return ""
    return f"{_limit(rec.max_24h_send)}/24h, {_limit(rec.max_send_rate)}/s"
