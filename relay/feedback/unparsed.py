"""The bounded store of feedback mail that could not be parsed (state_dir/feedback/unparsed/).

Such mail is kept to be looked at by hand, but anyone on the internet can send it, so
the store is bounded in total size and in age: after each write (and on `prune()`,
which the listener calls every hour) files older than `max_age` go, then the oldest
until the total is within `max_size`; a single message bigger than `max_size` is not
written at all. Each file counts at least `FILE_OVERHEAD` bytes (a file costs a
block and an inode however small it is). File names start with the arrival time in
milliseconds, so name order is age order and a restart rebuilds the index from a
listing. Counters go to `on_kept(bytes)` and `on_dropped(reason, bytes)` (metrics);
`kept_bytes` and `kept_files` describe what is kept now. Thread-safe: the processor
writes from a worker thread, so file I/O stays off the event loop.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from relay.clock import Clock

log = logging.getLogger("relay.feedback")

FILE_OVERHEAD = 4096


class UnparsedStore:
    def __init__(self, directory: Path, clock: Clock, *,
                 bounds: Callable[[], tuple[int, float]],
                 on_kept: Callable[[int], None] | None = None,
                 on_dropped: Callable[[str, int], None] | None = None) -> None:
        self.directory = directory
        self.clock = clock
        self.bounds = bounds  # () -> (max total bytes, max age in seconds), read live
        self.on_kept = on_kept          # a report kept: its charged bytes (metrics)
        self.on_dropped = on_dropped    # one dropped to keep the bounds: (reason, bytes)
        self._lock = threading.Lock()
        self._index: deque[tuple[str, int]] | None = None  # (name, charged bytes), oldest first
        self._total = 0

    @staticmethod
    def _charge(size: int) -> int:
        return max(size, FILE_OVERHEAD)

    def _load(self) -> deque[tuple[str, int]]:
        if self._index is None:
            entries: list[tuple[str, int]] = []
            if self.directory.is_dir():
                for path in self.directory.iterdir():
                    if path.suffix == ".eml":
                        try:
                            entries.append((path.name, self._charge(path.stat().st_size)))
                        except OSError:
                            continue
            entries.sort()
            self._index = deque(entries)
            self._total = sum(size for _, size in entries)
        return self._index

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            self._load()
            return self._total

    @property
    def kept_files(self) -> int:
        with self._lock:
            return len(self._load())

    def keep(self, data: bytes, reason: str) -> Path | None:
        max_size, _ = self.bounds()
        charged = self._charge(len(data))
        if charged > max_size:
            log.warning("feedback: unparsed report of %d bytes not kept (over "
                        "feedback.unparsed_max_size, %d): %s", len(data), max_size, reason)
            self._dropped("too_big", charged)
            return None
        now_ms = int(self.clock.now() * 1000)
        name = f"{now_ms:013d}-{secrets.token_hex(4)}.eml"
        with self._lock:
            index = self._load()
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                path = self.directory / name
                path.write_bytes(data)
            except OSError:
                log.exception("feedback: could not keep an unparsed report")
                return None
            index.append((name, charged))
            self._total += charged
            self._prune_locked()
        if self.on_kept is not None:
            self.on_kept(charged)
        log.warning("feedback: kept unparsed report %s (%s)", name, reason)
        return path

    def prune(self) -> None:
        with self._lock:
            self._load()
            self._prune_locked()

    def _prune_locked(self) -> None:
        assert self._index is not None
        max_size, max_age = self.bounds()
        oldest_kept = f"{int((self.clock.now() - max_age) * 1000):013d}"
        while self._index:
            name, charged = self._index[0]
            if name[:13] < oldest_kept:
                reason = "age"
            elif self._total > max_size:
                reason = "size"
            else:
                break
            self._index.popleft()
            self._total -= charged
            try:
                (self.directory / name).unlink()
            except FileNotFoundError:
                pass
            except OSError:
                log.exception("feedback: could not remove unparsed report %s", name)
            self._dropped(reason, charged)

    def _dropped(self, reason: str, charged: int) -> None:
        if self.on_dropped is not None:
            self.on_dropped(reason, charged)
