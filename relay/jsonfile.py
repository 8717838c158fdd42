"""Small JSON state files (`users.json`, `identities.json`, `admin_tokens.json`...): one typed
reader and writer for all of them.

`JsonFile[T]` decodes the whole file into T with msgspec (a missing file reads as the
empty T), writes atomically (temp file in the same directory, fsync, rename, directory
fsync) with mode 0600, serialises read-modify-write editors across processes with an
advisory lock on `<file>.lock`, and keeps the last good content for a server that looks
for edits by another process (the CLI) when the file's (mtime, size, inode) changed.
Each store keeps its own record types, error class and message ("<path> is not a valid
users file: ..."). Must not: import asyncio or sockets (stores are used from threads and
the CLI).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Generic, TypeVar

import msgspec

from relay.clock import Clock, SystemClock

T = TypeVar("T")

Stamp = tuple[int, int, int]
_UNSEEN: Stamp = (-1, -1, -1)  # no look yet: differs from every stamp, and from "missing"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that a reader or a crash sees the old or the new file
    whole, never a mix; `mode` is set on the new file whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `<path>.lock` for a read-modify-write."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def stamp(path: Path) -> Stamp | None:
    """What changes when the file is rewritten (a rename gives a new inode), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class JsonFile(Generic[T]):
    """One JSON file holding a T (a msgspec Struct with defaults for every field).

    `what` names the kind of file in the decode error ("users" → "<path> is not a valid
    users file: <msgspec's reason>"), raised as `error`. `recheck` (seconds, on the clock's
    monotonic time): how long a look at the file stays fresh for `current()` without
    `force`: a stat() per message releases the GIL to a signing or commit thread; 0 looks
    every time (the CLI)."""

    def __init__(self, path: str | Path, type: type[T], *, what: str,
                 error: Callable[[str], Exception], mode: int = 0o600,
                 clock: Clock | None = None, recheck: float = 0.0) -> None:
        self.path = Path(path)
        self.type = type
        self.what = what
        self.error = error
        self.mode = mode
        self.clock: Clock = clock or SystemClock()
        self.recheck = recheck
        self._decoder = msgspec.json.Decoder(type)
        self._lock = threading.Lock()
        self._stamp: Stamp | None = _UNSEEN
        self._checked_at: float | None = None
        # The last content read whole: what current() returns while the file is unchanged
        # or (after an edit by hand) not valid.
        self.value: T = type()

    def read(self) -> T:
        """The file as on disk now (the empty T when missing); raises `error` when it is
        not valid, OSError when it cannot be read."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return self.type()
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as e:
            raise self.error(f"{self.path} is not a valid {self.what} file: {e}") from None

    def write(self, value: T) -> None:
        """Replace the file with `value` (indented JSON and a final newline)."""
        data = msgspec.json.format(msgspec.json.encode(value), indent=2)
        write_atomic(self.path, data + b"\n", self.mode)

    def locked(self) -> AbstractContextManager[None]:
        """The advisory lock every read-modify-write holds (other processes included)."""
        return locked(self.path)

    def current(self, *, force: bool = False) -> T:
        """The content, read again when the file changed since the last look. The look
        (a stat) is skipped within `recheck` seconds of the previous one unless `force`.
        A changed file that is not valid raises `error` and keeps `value` as it was: the
        next look reads the file again."""
        now = self.clock.monotonic()
        if (not force and self._checked_at is not None
                and 0 <= now - self._checked_at < self.recheck):
            return self.value
        with self._lock:
            self._checked_at = now
            st = stamp(self.path)
            if st != self._stamp:
                self.value = self.read()
                self._stamp = st
            return self.value

