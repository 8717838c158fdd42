"""`relay check-config [FILE]`: validate a config file offline, like KumoMTA's validate-shaping.

Prints "FILE: ok" and a short summary (exit 0), or every problem on its own
line with its key path, the value seen and what was expected (exit 1). A file
that cannot be read is a problem like any other. Never prints a traceback.
Warnings (relay.config.config_warnings: valid but unsafe settings, such as
sender_authorization = "off" outside the development config) go to stderr as
"warning: ..." lines and never change the exit code.
Without FILE it checks --config / $RELAY_CONFIG / the embedded dev config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from relay.cli import config_path
from relay.config import Config, ConfigError, config_warnings, load


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check-config", help="validate a config file and report every problem",
        description="Validate a relay config file. Exit 0 when valid, 1 with every "
                    "problem (key path, value, expectation) otherwise.")
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="config file (default: --config, $RELAY_CONFIG or the embedded one)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def summary(cfg: Config) -> list[str]:
    """A few lines saying what this config will do, for a human to eyeball."""
    lines = [f"server: hostname {cfg.server.hostname}, state in {cfg.server.state_dir}"]
    for i, lst in enumerate(cfg.listener):
        lines.append(f"listener[{i}]: {lst.address} tls={lst.tls} auth={lst.auth} "
                     f"role={lst.role}")
    if not cfg.listener:
        lines.append("listener: none (relay will accept no mail)")
    lines.append(f"tls: {cfg.tls.cert} / {cfg.tls.key}" if cfg.tls.cert
                 else "tls: self-signed certificate made under state_dir on first start")
    routes = f", {len(cfg.delivery.routes)} fixed route(s)" if cfg.delivery.routes else ""
    lines.append(f"delivery: port {cfg.delivery.port}, tls={cfg.delivery.tls}, "
                 f"max delivery time {cfg.delivery.max_delivery_time:g}s{routes}")
    if cfg.admin.enabled:
        lines.append(f"admin: {cfg.admin.address}")
    return lines


def run(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else config_path(args)
    problems: list[str] = []
    warnings: list[str] = []
    cfg: Config | None = None
    try:
        cfg = load(path)
        warnings = config_warnings(cfg)
    except ConfigError as e:
        problems, warnings = list(e.problems), list(e.warnings)
    except Exception as e:  # never a traceback: an unexpected failure is still a clear line
        problems = [f"internal error while checking: {type(e).__name__}: {e}"]
    if args.json:
        out: dict[str, Any] = {"file": str(path), "ok": cfg is not None, "problems": problems,
                               "warnings": warnings}
        if cfg is not None:
            out["listeners"] = [
                {"address": str(lst.address), "tls": lst.tls, "auth": lst.auth,
                 "role": lst.role} for lst in cfg.listener]
        print(json.dumps(out, indent=2))
        return 0 if cfg is not None else 1
    if cfg is None:
        n = len(problems)
        print(f"{path}: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        _print_warnings(warnings)
        return 1
    print(f"{path}: ok")
    for line in summary(cfg):
        print(f"  {line}")
    _print_warnings(warnings)
    return 0


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)
