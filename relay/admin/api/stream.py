"""GET /api/events/stream: Server-Sent Events of every event published from now on.

Each event is `event: <eventType>` and `data: <the SES event JSON>`; a comment line after
15 s without one (livefeed.HEARTBEAT) keeps proxies and the client's read timeout from
closing an idle stream. The bearer token goes in the Authorization header like every
/api/ call (the dashboard reads the stream with fetch(), not EventSource, so it can send
the header).
At most relay.admin.api.livefeed.MAX_STREAMS at once: 429 beyond. A client that does not
take what is written within WRITE_TIMEOUT is dropped; one that left is noticed within a
second; the admin server's stop ends every stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from relay.admin.api.common import _error
from relay.admin.api.context import _ctx

WRITE_TIMEOUT = 30.0
_CHECK = 1.0    # how often a stream with nothing to send looks whether its client left


async def events_stream(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    feed = ctx.live_feed()
    stream = await feed.open()
    if stream is None:
        if feed.closing:
            return _error(503, "the admin server is stopping")
        return _error(429, f"at most {feed.max_streams} event streams at once; close one "
                           "and try again")
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await resp.prepare(request)
        await resp.write(b": relay events stream: every event from now on\n\n")
        last_write = ctx.clock.monotonic()
        while not stream.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.ready.wait(), min(_CHECK, feed.heartbeat))
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            chunks = stream.take()
            if stream.dropped:
                chunks.append(f": {stream.dropped} event(s) dropped: this client read too "
                              f"slowly\n\n".encode())
                stream.dropped = 0
            if not chunks and ctx.clock.monotonic() - last_write >= feed.heartbeat:
                chunks = [b": heartbeat\n\n"]
            if chunks:
                await asyncio.wait_for(resp.write(b"".join(chunks)), WRITE_TIMEOUT)
                last_write = ctx.clock.monotonic()
    except (ConnectionError, TimeoutError):
        pass            # the client left or stalled: its slot is freed below
    finally:
        feed.release(stream)
    return resp
