"""`relay status`: a summary of a running instance, read through its admin API.

Needs `[admin] enabled = true` and a token: `--token-file FILE`, or $RELAY_ADMIN_TOKEN.
Exit codes: 0 the server answered, 1 it is not running / refused the token / no token.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from relay.cli import CliError, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="summarise a running relay (through the admin API)",
        description="Ask the running relay named by the config for its status.")
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config file (default: $RELAY_CONFIG or the embedded dev config)")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding an admin token (default: $RELAY_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the raw JSON status")
    p.set_defaults(func=run)


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise CliError(f"cannot read token file {args.token_file}: {e.strerror}") from None
    token = os.environ.get("RELAY_ADMIN_TOKEN", "").strip()
    if not token:
        raise CliError("no admin token: give --token-file FILE or set RELAY_ADMIN_TOKEN "
                       "(create one with `relay admin token add NAME`)")
    return token


def fetch(url: str, token: str, timeout: float = 10.0) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise CliError("the admin API refused the token") from None
        raise CliError(f"the admin API answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CliError(f"relay is not answering at {url} ({reason})") from None


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if not cfg.admin.enabled:
        raise CliError("the admin API is disabled in this config ([admin] enabled = false)")
    addr = cfg.admin.address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr.host, addr.host)
    host = f"[{host}]" if ":" in host else host
    data = fetch(f"http://{host}:{addr.port}/api/status", _token(args))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    q = data["queue"]
    age = q.get("oldest_age_seconds")
    print(f"relay on {data['hostname']}: up {data['uptime_seconds']:.0f} s, "
          f"{data['users']} SMTP user(s)")
    for lst in data["listeners"]:
        print(f"  listener {lst['address']:24} port {lst['port']:<6} tls={lst['tls']:9} "
              f"sessions {lst['open_sessions']}")
    depth = ", ".join(f"{k} {v}" for k, v in q["depth"].items())
    print(f"  queue: {q['messages']} message(s); recipients {depth}; oldest "
          f"{'-' if age is None else f'{age:.0f} s'}")
    if data["warmup"]:
        print(f"  {'IP':18} {'POOL':12} {'PLAN':22} {'DAY':>4} {'CAP':>8} {'SENT':>8}")
        for w in data["warmup"]:
            print(f"  {w['ip']:18} {w['pool']:12} {w['plan'] or '-':22} {w['day'] or '-':>4} "
                  f"{w['cap_today'] if w['cap_today'] is not None else '-':>8} "
                  f"{w['sent_today']:>8}{'  FROZEN' if w['frozen'] else ''}")
    history = data.get("history")
    if history:
        print(f"  history: {history['messages']} message(s), "
              f"{history['bytes'] / 1e6:.1f} MB, oldest {history['oldest'] or '-'}")
    for provider, tally in data["deliveries"].items():
        print(f"  {provider}: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    return 0
