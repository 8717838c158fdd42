"""`relay serve`: run the relay in the foreground (systemd runs it this way)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from relay.cli import load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the relay (listeners, queue, delivery) in the foreground")
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config file (default: $RELAY_CONFIG or the embedded dev config)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    logging.basicConfig(level=cfg.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    from relay.app import serve

    try:
        uvloop.run(serve(cfg))
    except OSError as e:
        # The usual cause: a listen address already in use or not permitted.
        logging.getLogger("relay").error("cannot start: %s", e)
        return 1
    return 0
