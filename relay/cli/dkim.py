"""`relay dkim keygen|rotate|dns DOMAIN`: DKIM keys in <state_dir>/dkim/<domain>/ (0600).

keygen makes RSA-2048 and/or Ed25519 keys (`--type`, default from [dkim] key_type) and
prints the TXT records to publish, split into 255-byte strings; rotate makes the next
selector (pending until `relay identity verify` sees it in DNS); dns prints every record
that must stay published, and those safe to remove. Exit codes 0/1/2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from relay.cli import CliError, load_config
from relay.clock import SystemClock
from relay.config import Config
from relay.dkim import rotation
from relay.dkim.keys import DkimError, Generation, KeyStore, check_domain, split_txt, zone_line


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config file (default: $RELAY_CONFIG or the embedded dev config)")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "dkim", help="DKIM keys: keygen, rotate, dns",
        description="Manage DKIM signing keys and the DNS records to publish.")
    actions = p.add_subparsers(dest="dkim_command", metavar="ACTION", required=True)
    kg = actions.add_parser("keygen", help="make a domain's first keys",
                            description="Make RSA-2048 and/or Ed25519 keys for DOMAIN.")
    kg.add_argument("domain", metavar="DOMAIN")
    kg.add_argument("--selector", help="selector name (default rYYYYMMDD; with both types "
                                       "SEL-rsa and SEL-ed)")
    kg.add_argument("--type", choices=["rsa", "ed25519", "both"], default=None,
                    help="key type (default: [dkim] key_type)")
    _config_arg(kg)
    kg.set_defaults(func=run_keygen)
    rot = actions.add_parser("rotate", help="make the next selector",
                             description="Create the next selector; relay switches to it once "
                                         "`relay identity verify` sees its record in DNS.")
    rot.add_argument("domain", metavar="DOMAIN")
    rot.add_argument("--selector")
    _config_arg(rot)
    rot.set_defaults(func=run_rotate)
    dns = actions.add_parser("dns", help="print the TXT records to publish",
                             description="Print DOMAIN's DKIM TXT records.")
    dns.add_argument("domain", metavar="DOMAIN")
    dns.add_argument("--json", action="store_true", help="print a JSON array")
    _config_arg(dns)
    dns.set_defaults(func=run_dns)


def _keys(cfg: Config) -> KeyStore:
    return KeyStore.in_state_dir(cfg.state_path, SystemClock(), rsa_bits=cfg.dkim.rsa_bits)


def _print_generation(domain: str, gen: Generation) -> None:
    for key in gen.keys:
        print(zone_line(f"{key.selector}._domainkey.{domain}", key.record))


def run_keygen(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        domain = check_domain(args.domain)
        gen = _keys(cfg).keygen(domain, args.selector, args.type or cfg.dkim.key_type)
    except (DkimError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"; DKIM keys for {domain} (selector {gen.name}); publish:")
    _print_generation(domain, gen)
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        domain = check_domain(args.domain)
        gen = _keys(cfg).rotate(domain, args.selector)
    except (DkimError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"; next DKIM selector for {domain}: {gen.name} (pending). Publish, then run "
          f"`relay identity verify {domain}`:")
    _print_generation(domain, gen)
    return 0


def run_dns(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    clock = SystemClock()
    try:
        domain = check_domain(args.domain)
        state = _keys(cfg).get(domain)
    except (DkimError, OSError) as e:
        raise CliError(str(e)) from None
    if state is None:
        raise CliError(f"{domain} has no DKIM keys; run `relay dkim keygen {domain}`")
    gone = {g.name for g in rotation.removable(state, clock.now(), cfg.dkim.grace_period)}
    rows = [{"name": f"{k.selector}._domainkey.{domain}", "type": "TXT", "value": k.record,
             "strings": split_txt(k.record), "selector": k.selector,
             "algorithm": k.algorithm, "status": g.status,
             "safe_to_remove": g.name in gone}
            for g in state.generations for k in g.keys]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        note = "safe to remove" if r["safe_to_remove"] else str(r["status"])
        print(f"; {r['selector']} ({r['algorithm']}, {note})")
        print(zone_line(str(r["name"]), str(r["value"])))
    return 0
