"""`relay serve`: run the relay in the foreground (systemd runs it this way).

Before anything else it records early signals (relay/signals.py), then loads the config,
locks the state dir (relay/statedir.py: one relay per state dir) and checks the state
files it will load (relay/statecheck.py), so a second relay or a damaged file ends in one
line naming the cause and exit code 1, never a traceback or a relay running beside another.
A worker of `server.workers = N` does neither: its supervisor holds the lock and checked
the state before starting it.
"""

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
    from relay.signals import EarlySignals

    early = EarlySignals.install()
    cfg = load_config(args)
    from relay import logfmt

    logfmt.setup(cfg.server.log_level, args.log_format)
    import uvloop

    from relay.app import serve
    from relay.config import config_warnings
    from relay.statecheck import check_state
    from relay.statedir import StateError, StateLock
    from relay.supervisor import supervise
    from relay.workers import worker_from_env

    log = logging.getLogger("relay")
    path = config_path(args)
    worker = worker_from_env()
    lock: StateLock | None = None
    try:
        if worker is None:
            lock = StateLock.acquire(cfg.state_path)
            check_state(cfg)
            # Valid but unsafe settings (relay.config.config_warnings), said once as relay
            # starts, as `relay check-config` says them: the operator reads the journal, not
            # only the file. After the checks, so a refused start stays one line.
            for warning in config_warnings(cfg):
                log.warning("config: %s", warning)
        if worker is None and cfg.server.workers > 1:
            # Multi-process mode: this process only supervises (relay/supervisor.py);
            # the workers inherit the lock.
            assert lock is not None
            return supervise(cfg, path.resolve(), ["--log-format", args.log_format],
                             lock_fd=lock.fd, early=early)
        uvloop.run(serve(cfg, None if path == default_config_path() else path.resolve(),
                         worker=worker, early=early))
    except StateError as e:
        log.error("cannot start: %s", e)
        return 1
    except OSError as e:
        # The usual cause: a listen address already in use or not permitted.
        log.error("cannot start: %s", e)
        return 1
    finally:
        if lock is not None:
            lock.release()
    return 0
