"""Draining a node: the flag file `<state_dir>/draining` and how the running relay learns of it.

`relay node drain` writes the file and sends SIGHUP to the relay that holds the state
dir (its pid is in relay.lock; a supervisor passes the signal on to its workers);
`relay node undrain` removes it and does the same. Every relay process reads the file
when it starts and on every SIGHUP (`DrainState.refresh`), so:
- a drain survives a reload and a restart (a node taken out of its load balancer stays
  out until `relay node undrain`, even if systemd restarts it);
- while draining, the submission listeners keep listening but answer new connections,
  and new transactions of open sessions, 421 4.3.2; the load balancer's health check
  (`GET /health` on the admin server: 503) takes the node out of rotation meanwhile.
  Listening on (rather than closing the port) keeps connections that reach the node
  before the balancer noticed from hanging or being reset mid-way: a 421 is an SMTP
  client's "try again later". Deliveries, the feedback listener, the SES API and the
  admin API go on as before.

A file rather than an admin API call: it needs no token and no admin server, reaches
every worker of a multi-process relay, works with the relay stopped, and is the one
state a restart reads back.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
from pathlib import Path

from relay.statedir import LOCK_NAME

log = logging.getLogger("relay.drain")

DRAIN_FILE = "draining"


class DrainState:
    """Whether this node is draining, as of the last `refresh()` (call it on SIGHUP)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DRAIN_FILE
        self.draining = self.path.exists()
        if self.draining:
            log.warning("this node is draining (%s exists): new SMTP connections get "
                        "421 4.3.2, GET /health answers 503; `relay node undrain` ends it",
                        self.path)

    def __call__(self) -> bool:
        return self.draining

    def refresh(self) -> bool:
        """Read the flag file again; True if the state changed."""
        now = self.path.exists()
        if now == self.draining:
            return False
        self.draining = now
        if now:
            log.warning("draining: new SMTP connections and transactions get 421 4.3.2, "
                        "GET /health answers 503; deliveries go on")
        else:
            log.warning("drain ended: accepting SMTP connections again")
        return True


def set_draining(state_dir: Path, on: bool, note: str = "") -> None:
    """Write (or remove) the flag file. Raises OSError."""
    path = state_dir / DRAIN_FILE
    if on:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(DRAIN_FILE + ".tmp")
        tmp.write_text(note + "\n" if note else "")
        os.replace(tmp, path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def is_draining(state_dir: Path) -> bool:
    return (state_dir / DRAIN_FILE).exists()


def running_pids(state_dir: Path) -> list[int]:
    """The live pids recorded in relay.lock: the relay (or supervisor) first, then its
    workers. Empty when no relay holds the state dir: the lock is tested first, so a
    stale file left by a killed relay never gets a recycled pid signalled."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass  # held: a relay runs on this state dir
        else:
            return []  # nobody holds it
        raw = os.pread(fd, 4096, 0).decode("ascii", "replace")
    finally:
        os.close(fd)
    alive = []
    for word in raw.split():
        if not word.isdigit():
            continue
        pid = int(word)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.append(pid)
    return alive


def notify_running(state_dir: Path) -> int | None:
    """SIGHUP to the relay holding `state_dir` (the supervisor passes it to its workers;
    without a supervisor, the first live pid is the relay). Returns the pid signalled,
    or None when no relay runs there."""
    pids = running_pids(state_dir)
    if not pids:
        return None
    try:
        os.kill(pids[0], signal.SIGHUP)
    except OSError:
        return None
    return pids[0]
