"""Signals that arrive before the event loop (or the supervisor's loop) handles them.

`relay serve` installs `EarlySignals` first thing, before it reads the config or opens
a port: from then on SIGHUP, SIGTERM and SIGINT are recorded instead of taking their
default action (SIGHUP's is to end the process, so a reload sent just as the port
opened used to kill relay). The event loop's own handlers replace these once it runs,
and the server then acts on what was recorded: a stop drains at once, a reload re-reads
the config. Must not: do anything in the handler but set a flag (a second Ctrl-C
still interrupts, as the user means it).
"""

from __future__ import annotations

import signal
from types import FrameType


class EarlySignals:
    def __init__(self) -> None:
        self.hangup = False  # SIGHUP: reload once serving
        self.stop = False    # SIGTERM / SIGINT: drain and exit once started

    @classmethod
    def install(cls) -> EarlySignals:
        early = cls()
        signal.signal(signal.SIGHUP, early._on_hangup)
        signal.signal(signal.SIGTERM, early._on_stop)
        signal.signal(signal.SIGINT, early._on_stop)
        return early

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        self.hangup = True

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: give up the start at once
        self.stop = True

    def take_hangup(self) -> bool:
        """Whether a SIGHUP arrived since the last call."""
        seen, self.hangup = self.hangup, False
        return seen
