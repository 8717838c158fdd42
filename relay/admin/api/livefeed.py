"""The live event feed behind GET /api/events/stream: one follower of events.jsonl shared
by every open stream, fanned out to a bounded buffer per stream.

Every worker process appends to the same events.jsonl, so following the file shows every
event published from the moment a stream opens, by any worker. The follower
(relay/events/follow.py) reads in a thread, at most 1 MiB per read, every `poll` seconds
while a stream is open (no task runs when none is). A stream whose client reads too
slowly loses the events its buffer (`buffer_bytes`) cannot hold, counted and told to it
in a comment line, so a slow or stalled client never holds memory or the loop. At most
`max_streams` at once; `close()` (the admin server's stop) ends them all at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from pathlib import Path

import msgspec

from relay.clock import Clock
from relay.events.follow import LogFollower

log = logging.getLogger("relay.admin")

MAX_STREAMS = 20
POLL = 0.5
BUFFER_BYTES = 4 << 20
HEARTBEAT = 15.0    # seconds without an event before a stream sends a comment line


class _EventType(msgspec.Struct):
    eventType: str = "event"


_type_dec = msgspec.json.Decoder(_EventType)


def frame(line: bytes) -> bytes:
    """One SSE message for an events.jsonl line: `event: <eventType>` and `data: <json>`."""
    try:
        etype = _type_dec.decode(line).eventType
    except msgspec.DecodeError:
        etype = "event"
    name = "".join(c for c in etype if c.isprintable()) or "event"
    data = line.replace(b"\r", b"").replace(b"\n", b"")
    return b"event: " + name.encode("utf-8", "replace") + b"\ndata: " + data + b"\n\n"


class Stream:
    """One client's buffer of frames, bounded in bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frames: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.dropped = 0          # frames not kept: the buffer was full
        self.closed = False
        self.ready = asyncio.Event()

    def put(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            self.dropped += 1
            return
        self.frames.append(data)
        self.size += len(data)
        self.ready.set()

    def take(self) -> list[bytes]:
        out = list(self.frames)
        self.frames.clear()
        self.size = 0
        self.ready.clear()
        return out

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class LiveFeed:
    def __init__(self, path: Path, clock: Clock, *, max_streams: int = MAX_STREAMS,
                 poll: float = POLL, buffer_bytes: int = BUFFER_BYTES,
                 heartbeat: float = HEARTBEAT) -> None:
        self.path = path
        self.clock = clock
        self.max_streams = max_streams
        self.poll = poll
        self.buffer_bytes = buffer_bytes
        self.heartbeat = heartbeat
        self.streams: set[Stream] = set()
        self.closing = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def open(self) -> Stream | None:
        """A new stream from the log's current end; None when `max_streams` are open."""
        if self.closing or len(self.streams) >= self.max_streams:
            return None
        stream = Stream(self.buffer_bytes)
        self.streams.add(stream)
        if self._task is None or self._task.done():
            self._started = asyncio.Event()
            self._task = asyncio.create_task(self._follow(LogFollower(self.path),
                                                          self._started),
                                             name="admin-events-feed")
        # Positioned at the end before the stream is answered: what is appended after
        # the client sees the stream open reaches it.
        await self._started.wait()
        return stream

    def release(self, stream: Stream) -> None:
        stream.close()
        self.streams.discard(stream)
        if not self.streams and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _follow(self, follower: LogFollower, started: asyncio.Event) -> None:
        try:
            await asyncio.to_thread(follower.seek_end)
        finally:
            started.set()
        while self.streams:
            try:
                lines = await asyncio.to_thread(follower.read)
            except OSError as e:
                log.warning("event stream: cannot read %s: %s", self.path, e)
                lines = []
            except Exception:
                # Never end the feed on a surprise: the streams would go silent.
                log.exception("event stream: reading %s failed", self.path)
                lines = []
            for line in lines:
                data = frame(line)
                for stream in list(self.streams):
                    stream.put(data)
            if not follower.behind:
                await self.clock.sleep(self.poll)

    async def close(self) -> None:
        """End every stream (their handlers return) and the follower."""
        self.closing = True
        for stream in list(self.streams):
            stream.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
