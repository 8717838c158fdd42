"""What `relay message` and `relay stats` share: the option values they read (times,
choices, counts), each wrong one a one-line CliError naming the option, and the spool's
history and statistics opened read-only beside a running server.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from relay.admin.params import BadInput, instant
from relay.cli import CliError
from relay.config.types import parse_duration

_AGO = re.compile(r"^\s*\d+(?:\.\d+)?\s*(ms|s|m|h|d|w)\s*$")


def when(option: str, text: str | None, now: float) -> float | None:
    """An instant: "24h" (that long ago), ISO 8601 (no zone = UTC) or epoch seconds."""
    if text is None or not text.strip():
        return None
    if _AGO.match(text):
        return now - float(parse_duration(text))
    try:
        return instant(option, text)
    except BadInput:
        raise CliError(f"{option}: expected a time like 24h (ago), 2026-01-02T03:04:05Z "
                       f"or epoch seconds, got {text!r}") from None


def choice(option: str, text: str | None, choices: Sequence[str]) -> str:
    """`text` (any case; "-" and "_" alike) as one of `choices`, or "" when not given."""
    if text is None:
        return ""
    key = text.strip().lower().replace("-", "_")
    for c in choices:
        if c.replace("-", "_") == key:
            return c
    raise CliError(f"{option}: expected one of {', '.join(choices)}, got {text!r}")


def count(option: str, text: str | None, low: int, high: int, default: int) -> int:
    if text is None:
        return default
    try:
        n = int(text)
    except ValueError:
        raise CliError(f"{option}: expected a number from {low} to {high}, "
                       f"got {text!r}") from None
    if not low <= n <= high:
        raise CliError(f"{option}: expected a number from {low} to {high}, got {n}")
    return n
