"""The `relay` command: one sub-command group per noun.

Each noun lives in its own module with a `register(subparsers)` function that
adds its parser and sets `func` to a handler `(args) -> int`. Exit codes:
0 success, 1 failure the user can fix (bad config, unknown id), 2 usage error.
Handlers never let a traceback reach the user.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from relay.config import Config, ConfigError, load
from relay.statedir import StateError

# Modules adding sub-commands; each has register(subparsers).
_COMMAND_MODULES = ("serve", "check_config", "user", "queue", "identity", "dkim", "warmup",
                    "admin", "status", "suppression", "tenant", "message", "stats", "node",
                    "cluster")


def default_config_path() -> Path:
    """The embedded development config used when neither --config nor RELAY_CONFIG is given."""
    return Path(str(resources.files("relay") / "data" / "relay.dev.toml"))


def config_path(args: argparse.Namespace) -> Path:
    given = getattr(args, "config", None) or os.environ.get("RELAY_CONFIG")
    return Path(given) if given else default_config_path()


def load_config(args: argparse.Namespace) -> Config:
    """Load the config named by the arguments, or print every problem and exit 1."""
    path = config_path(args)
    try:
        return load(path)
    except ConfigError as e:
        print(f"relay: config {e.source or path} is not valid:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(1) from None


class CliError(Exception):
    """A failure to report as one line on stderr with exit code 1."""


Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="relay: self-hosted outbound mail platform")
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default: $RELAY_CONFIG or the embedded dev config)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"relay.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args)
    except CliError as e:
        print(f"relay: {e}", file=sys.stderr)
        return 1
    except StateError as e:
        # A damaged state file (queue, verp.key, ...) named in one line, as `relay serve`
        # names it at start: never a traceback.
        print(f"relay: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
