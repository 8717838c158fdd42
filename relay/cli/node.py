"""`relay node drain|undrain|status`: take this node out of (and back into) its load balancer.

drain: new SMTP connections and transactions get 421 4.3.2, `GET /health` on the admin
server answers 503, deliveries go on (relay/drain.py). The state is the file
`<state_dir>/draining`, read by the running relay on the SIGHUP this command sends it
(and at every start: a drain survives a restart until `relay node undrain`).
"""

from __future__ import annotations

import argparse
from typing import Any

from relay.cli import CliError, load_config
from relay.clock import SystemClock
from relay.drain import is_draining, notify_running, running_pids, set_draining
from relay.events.model import iso


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "node", help="drain this node (stop taking mail, keep delivering) or undrain it")
    nsub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $RELAY_CONFIG or the embedded dev config)")
    for name, helptext, func in (
        ("drain", "stop accepting SMTP (421 4.3.2, /health 503); deliveries go on", cmd_drain),
        ("undrain", "accept SMTP again (/health 200)", cmd_undrain),
        ("status", "whether this node is draining, and whether a relay runs on it",
         cmd_status),
    ):
        sp = nsub.add_parser(name, parents=[common], help=helptext)
        sp.set_defaults(func=func)


def _apply(args: argparse.Namespace, on: bool) -> int:
    cfg = load_config(args)
    state = cfg.state_path
    note = f"drained at {iso(SystemClock().now())}" if on else ""
    try:
        set_draining(state, on, note)
    except OSError as e:
        raise CliError(f"cannot {'write' if on else 'remove'} {state / 'draining'}: "
                       f"{e.strerror or e}") from None
    pid = notify_running(state)
    what = "draining" if on else "accepting mail"
    if pid is None:
        print(f"node is {what} (no relay runs on {state}; it takes effect when one starts)")
    else:
        print(f"node is {what} (told relay pid {pid} with SIGHUP)")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    return _apply(args, True)


def cmd_undrain(args: argparse.Namespace) -> int:
    return _apply(args, False)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    pids = running_pids(cfg.state_path)
    state = "draining" if is_draining(cfg.state_path) else "accepting mail"
    running = f"relay running (pid {pids[0]})" if pids else "no relay running"
    print(f"{state}; {running}")
    return 0
