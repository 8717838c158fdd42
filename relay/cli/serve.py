"""`relay serve`: run the relay in the foreground (systemd runs it this way)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from relay.cli import config_path, default_config_path, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the relay (listeners, queue, delivery) in the foreground")
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config file (default: $RELAY_CONFIG or the embedded dev config)")
    p.add_argument("--log-format", choices=("human", "json"), default="human",
                   help="log lines on stderr: human-readable (default) or JSON lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    from relay import logfmt

    logfmt.setup(cfg.server.log_level, args.log_format)
    import uvloop

    from relay.app import serve
    from relay.supervisor import supervise, worker_from_env

    path = config_path(args)
    worker = worker_from_env()
    if worker is None and cfg.server.workers > 1:
        # Multi-process mode: this process only supervises (relay/supervisor.py).
        return supervise(cfg, path.resolve(), ["--log-format", args.log_format])
    try:
        uvloop.run(serve(cfg, None if path == default_config_path() else path.resolve(),
                         worker=worker))
    except OSError as e:
        # The usual cause: a listen address already in use or not permitted.
        logging.getLogger("relay").error("cannot start: %s", e)
        return 1
    return 0
