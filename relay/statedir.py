"""The state dir as a whole: which process owns it, and whether what is in it is usable.

`StateLock.acquire(state_dir)` takes an exclusive flock(2) on `<state_dir>/relay.lock`
and writes the holder's pid into it, so a second `relay serve` on the same state dir
refuses to start (two processes leasing one queue would deliver every message twice)
and names the pid of the first. The lock belongs to the open file description, not to a
process: the supervisor of `server.workers = N` passes the descriptor to its workers, so
the state dir stays locked until the last of them has exited (a new relay cannot start
beside workers that outlived their supervisor). The lock goes with the process: a
kill -9 leaves a stale file with a pid in it, never a stale lock. Only `relay serve`
takes it; the CLI commands (`relay user add`, `relay queue list`...) share the files
with the running server as before (LMDB and the JSON stores lock per operation).

`StateError` is a state file relay cannot use: one line naming the file and what is
wrong, reported by `relay serve` (exit 1) instead of starting on it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

LOCK_NAME = "relay.lock"


class StateError(Exception):
    """A state file (or the state dir) relay cannot start on; one line of text."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StateLock:
    """The exclusive lock of one state dir, held while the descriptor is open."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Lock `state_dir` for this process or raise StateError naming the holder."""
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            path = state_dir / LOCK_NAME
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StateError(f"state dir {state_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateError(f"{path}: cannot lock: {e.strerror or e}") from None
            raise StateError(f"state dir {state_dir} is in use by another relay "
                             f"({holder}); stop it first, or give this one another "
                             "server.state_dir") from None
        # Ours now: record who holds it (read by the next relay that is refused).
        record_holders(fd, [os.getpid()])
        return cls(path, fd)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the lock goes with the last descriptor of it
            self.fd = -1


def record_holders(fd: int, pids: Sequence[int]) -> None:
    """Write the pids that hold the lock: the relay that took it first, then the worker
    processes it passed it to (relay/supervisor.py rewrites this as they start)."""
    with contextlib.suppress(OSError):  # only the refusal message depends on it
        data = "".join(f"{pid}\n" for pid in pids).encode("ascii")
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))


def _holder(fd: int) -> str:
    """Who holds the lock, from the pids its holders wrote."""
    try:
        raw = os.pread(fd, 4096, 0).decode("ascii", "replace")
    except OSError:
        raw = ""
    pids = [int(x) for x in raw.split() if x.isdigit()]
    if not pids:
        return "pid unknown"
    if _pid_alive(pids[0]):
        return f"pid {pids[0]}"
    # Its workers (server.workers) still hold the inherited descriptor (while they drain).
    alive = [p for p in pids[1:] if _pid_alive(p)]
    return (f"pid {pids[0]}, which has exited; its worker process(es) "
            f"{' '.join(map(str, alive)) or '(pids unknown)'} still hold the lock")
