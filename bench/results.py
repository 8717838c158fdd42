"""Appending an entry to bench/RESULTS.md: a dated title, the exact command, the machine."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine(extra: str = "") -> str:
    """Cores, architecture, Python and kernel (and `extra`, e.g. the Postfix version)."""
    text = (f"{os.cpu_count()} cores (nproc), {platform.machine()}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")
    return f"{text}, {extra}" if extra else text


def record(title: str, script: str, argv: Sequence[str], body: str,
           machine_extra: str = "") -> None:
    """Append `### <title>, <UTC date>` with the command that produced `body`."""
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", script, *argv])
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a") as f:
        f.write(f"\n### {title}, {when}\n\nCommand: `{cmd}`  \n"
                f"Machine: {machine(machine_extra)}\n\n{body}\n")
