"""`relay identity add|list|verify|remove|tenant`: sending identities (domains or addresses).

`verify` looks the records up in DNS (the [dns] nameservers) and reports, record by
record, what is published, what is missing and the exact record to add; it records the
result in <state_dir>/identities.json (only verified identities may send) and switches
DKIM to a pending selector once its record is seen. Exit codes: 0 done (verify: verified),
1 a problem the user can fix (verify: not verified), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from relay.cli import CliError, load_config
from relay.cli.output import table
from relay.cli.tenant import check_tenants_exist
from relay.clock import SystemClock
from relay.config import Config
from relay.dkim.keys import DkimError, KeyStore
from relay.dns.resolver import DnsResolver
from relay.identity.check import OK, Report, check_identity
from relay.identity.model import IdentityError, check_identity_name, normalize
from relay.identity.outbound import settings_for
from relay.identity.spf import recommended_record, sending_ips
from relay.identity.store import IdentityStore


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config file (default: $RELAY_CONFIG or the embedded dev config)")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "identity", help="manage sending identities (domains or addresses)",
        description="Add, list and verify the identities relay may send as.")
    actions = p.add_subparsers(dest="identity_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a domain or address identity",
                             description="Add an identity: a domain (example.com) or one "
                                         "address (ops@example.com). It may send once verified.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--tenant", default="", metavar="TENANT",
                     help="the tenant that owns it (default: shared by every tenant)")
    _config_arg(add)
    add.set_defaults(func=run_add)
    ten = actions.add_parser("tenant", help="give an identity to a tenant",
                             description="Set the tenant that owns an identity; none = "
                                         "shared by every tenant.")
    ten.add_argument("name", metavar="NAME")
    ten.add_argument("tenant", nargs="?", default="", metavar="TENANT")
    _config_arg(ten)
    ten.set_defaults(func=run_tenant)
    lst = actions.add_parser("list", help="list identities", description="List identities.")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    _config_arg(lst)
    lst.set_defaults(func=run_list)
    ver = actions.add_parser("verify", help="check an identity's DNS records",
                             description="Look up DKIM, MAIL FROM (MX, SPF) and DMARC records "
                                         "and report what to publish.")
    ver.add_argument("name", metavar="NAME")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    _config_arg(ver)
    ver.set_defaults(func=run_verify)
    rm = actions.add_parser("remove", help="remove an identity",
                            description="Remove an identity (it may no longer send).")
    rm.add_argument("name", metavar="NAME")
    _config_arg(rm)
    rm.set_defaults(func=run_remove)


def _store(cfg: Config) -> IdentityStore:
    try:
        return IdentityStore.in_state_dir(cfg.state_path)
    except IdentityError as e:
        raise CliError(str(e)) from None


def run_add(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    tenant = args.tenant.strip()
    if tenant:
        check_tenants_exist(cfg, [tenant])
    try:
        rec = _store(cfg).add(args.name, tenant=tenant)
    except (IdentityError, OSError) as e:
        raise CliError(str(e)) from None
    owner = f" for tenant {tenant!r}" if tenant else ""
    print(f"identity {rec.name!r} added{owner} (not verified yet: run `relay identity "
          f"verify {rec.name}`)")
    return 0


def run_tenant(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    tenant = args.tenant.strip()
    if tenant:
        check_tenants_exist(cfg, [tenant])
    try:
        rec = _store(cfg).set_tenant(args.name, tenant)
    except (IdentityError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"identity {rec.name!r} belongs to "
          + (f"tenant {tenant!r}" if tenant else "no tenant (shared)"))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        _store(cfg).remove(args.name)
    except (IdentityError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"identity {normalize(args.name)!r} removed")
    return 0


def run_list(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    records = _store(cfg).all()
    declared = {normalize(i.address or i.domain): i for i in cfg.identity}
    rows = []
    for name in sorted(set(records) | set(declared)):
        rec = records.get(name)
        ident = settings_for(name, cfg.identity) if name in declared else None
        rows.append({"name": name, "kind": "address" if "@" in name else "domain",
                     "verified": bool(rec and rec.verified),
                     "verified_at": rec.verified_at if rec else 0.0,
                     "mail_from": ident.mail_from if ident else "",
                     "tenant": rec.tenant if rec else "",
                     "on_mx_failure": ident.on_mx_failure if ident else ""})
    if args.json:
        print(json.dumps(rows))
        return 0
    table([{**r, "status": "verified" if r["verified"] else "not verified"} for r in rows],
          ["name", "kind", "status", "tenant", "mail_from"], empty="no identities")
    return 0


def print_report(report: Report) -> None:
    print(f"identity {report.identity}: {'VERIFIED' if report.verified else 'NOT VERIFIED'}")
    if report.switched_to:
        print(f"  DKIM switched to selector {report.switched_to}")
    for row in report.rows:
        where = f"{row.name} {row.rtype}".strip()
        print(f"  [{row.status}] {row.check}: {where}")
        for f in row.found:
            print(f"      found:    {f}")
        if row.expected and row.status != OK:
            print(f"      add:      {row.name}. IN {row.rtype} {_quoted(row)}")
        if row.note:
            print(f"      note:     {row.note}")


def _quoted(row: Any) -> str:
    if row.rtype != "TXT":
        return str(row.expected)
    from relay.dkim.keys import split_txt
    return " ".join(f'"{s}"' for s in split_txt(row.expected))


async def verify(cfg: Config, name: str) -> Report:
    clock = SystemClock()
    resolver = DnsResolver.from_config(cfg.dns, clock)
    keys = KeyStore.in_state_dir(cfg.state_path, clock)
    hostname = cfg.server.hostname
    ips = sending_ips(cfg)  # every [[pool]] ip and delivery.source_address
    return await check_identity(
        name, resolver=resolver, keys=keys, settings=settings_for(name, cfg.identity),
        hostname=hostname, default_domain=cfg.server.return_path_domain or hostname,
        spf_record=recommended_record(ips, hostname), now=clock.now(),
        grace=cfg.dkim.grace_period, sending_ips=ips)


def run_verify(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        name = check_identity_name(args.name)
        store = _store(cfg)
        declared = {normalize(i.address or i.domain) for i in cfg.identity}
        if store.get(name) is None and name not in declared:
            raise CliError(f"no identity {name!r} (add it with `relay identity add {name}`)")
        report = asyncio.run(verify(cfg, name))
        store.set_verified(name, report.verified)
    except (IdentityError, DkimError, OSError) as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print_report(report)
    return 0 if report.verified else 1
