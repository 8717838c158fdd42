"""A minimal, fast SMTP sink for end-to-end benchmarks.

relay.testing.sink.Sink (aiosmtpd, one thread) tops out around 400 msgs/s, which
would make the sink the bottleneck of an end-to-end figure. This sink is a
hand-rolled asyncio protocol on uvloop: it answers 250 to every command (354 to
DATA, 221 to QUIT), supports pipelining, never advertises STARTTLS, and only
counts connections, messages and bytes, with the wall-clock time of the first
and last message. `--store FILE` also appends every message to FILE (a decimal length line,
then the message as received, dot-stuffing undone), for checks after the run (the
comparison verifies every DKIM signature from it without spending CPU during the run).

    python bench/sinkserver.py --host 127.0.0.2 --port 0 --expect 5000 --timeout 120

`--chunking` (or BENCH_SINK_CHUNKING=1 in its environment, for benches that start it)
also advertises CHUNKING (RFC 3030) and takes "BDAT <n> [LAST]" chunks, as Postfix,
Gmail and Outlook do.

prints one line `{"event": "ready", "host": ..., "port": ...}` when it listens,
then runs until it has seen `--expect` messages (or `--timeout` seconds have
passed, or SIGTERM/SIGINT) and prints a JSON summary line. Always bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, cast

_EHLO_REPLY = (b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
               b"250-SIZE 104857600\r\n250 ENHANCEDSTATUSCODES\r\n")
_EHLO_CHUNKING = _EHLO_REPLY.replace(b"250-8BITMIME", b"250-8BITMIME\r\n250-CHUNKING")
_OK = b"250 2.0.0 ok\r\n"
_BAD_BDAT = b"501 5.5.4 BDAT needs a chunk size\r\n"
_QUEUED = b"250 2.0.0 queued\r\n"
_DATA_GO = b"354 go ahead\r\n"
_BYE = b"221 2.0.0 bye\r\n"
_GREETING = b"220 sink.bench ESMTP bench sink\r\n"
_END = b"\r\n.\r\n"


@dataclass
class SinkStats:
    connections: int = 0
    messages: int = 0
    recipients: int = 0
    bytes: int = 0
    first_at: float = 0.0   # wall clock (time.time()) of the first message's end of DATA
    last_at: float = 0.0    # ... and of the last one


class SinkProtocol(asyncio.Protocol):
    """One connection. Command mode parses CRLF lines; data mode looks for CRLF.CRLF."""

    def __init__(self, stats: SinkStats, on_message: asyncio.Event | None = None,
                 expect: int = 0, store: BinaryIO | None = None,
                 chunking: bool = False) -> None:
        self.stats = stats
        self.ehlo = _EHLO_CHUNKING if chunking else _EHLO_REPLY
        self.chunk_left = -1      # bytes of the current BDAT chunk still to come (-1: none)
        self.chunk_last = False   # the current chunk is the message's last
        self.chunks = bytearray()  # the message so far, with --store
        self.store = store
        self.on_message = on_message
        self.expect = expect
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.in_data = False
        self.scan_from = 0
        self.rcpts = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not a subclass of asyncio.Transport: cast, don't assert.
        self.transport = cast(asyncio.Transport, transport)
        self.stats.connections += 1
        self.transport.write(_GREETING)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        closing = False
        while self.buf:
            if self.chunk_left >= 0:
                take = min(self.chunk_left, len(self.buf))
                if self.store is not None:
                    self.chunks += self.buf[:take]
                del self.buf[:take]
                self.chunk_left -= take
                if self.chunk_left:
                    break
                self.chunk_left = -1
                if not self.chunk_last:
                    out.append(_OK)
                    continue
                if self.store is not None:
                    self.store.write(b"%d\n" % len(self.chunks) + bytes(self.chunks))
                    self.chunks.clear()
                out.append(self._message())  # its bytes were counted at each BDAT
                continue
            if self.in_data:
                # The buffer starts with the CRLF that preceded DATA's payload (see below),
                # so an empty message ".\r\n" is found too.
                pos = self.buf.find(_END, max(0, self.scan_from - 4))
                if pos < 0:
                    self.scan_from = len(self.buf)
                    break
                size = pos  # payload incl. its last CRLF (the buffer began with CRLF)
                if self.store is not None:
                    # From the CRLF before the payload, so a first line's stuffed dot is seen.
                    message = bytes(self.buf[:pos + 2]).replace(b"\r\n..", b"\r\n.")[2:]
                    self.store.write(b"%d\n" % len(message) + message)
                del self.buf[: pos + len(_END)]
                self.in_data = False
                self.scan_from = 0
                self.stats.bytes += size
                out.append(self._message())
                continue
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > 4096:  # no command is this long
                    closing = True
                break
            line = bytes(self.buf[:nl]).rstrip(b"\r")
            del self.buf[: nl + 1]
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                out.append(self.ehlo if verb == b"EHLO" else _OK)
            elif verb == b"BDAT":
                args = line[5:].split()
                if not args or not args[0].isdigit() or len(args[0]) > 12:
                    out.append(_BAD_BDAT)
                    closing = True  # out of step: its chunk would be read as commands
                    break
                self.chunk_left = int(args[0])
                self.chunk_last = len(args) > 1 and args[1].upper() == b"LAST"
                self.stats.bytes += self.chunk_left
            elif verb == b"RCPT":
                self.rcpts += 1
                out.append(_OK)
            elif verb == b"DATA":
                out.append(_DATA_GO)
                self.in_data = True
                self.buf[0:0] = b"\r\n"
                self.scan_from = 0
            elif verb == b"QUIT":
                out.append(_BYE)
                closing = True
                break
            else:  # MAIL, RSET, NOOP and anything else
                if verb == b"RSET":
                    self.rcpts = 0
                out.append(_OK)
        if self.transport is not None:
            if out:
                self.transport.write(b"".join(out))
            if closing:
                self.transport.close()

    def _message(self) -> bytes:
        """Count a message whose end has come; its reply."""
        st = self.stats
        st.messages += 1
        st.recipients += self.rcpts
        now = time.time()
        if not st.first_at:
            st.first_at = now
        st.last_at = now
        self.rcpts = 0
        if self.on_message is not None and self.expect and st.messages >= self.expect:
            self.on_message.set()
        return _QUEUED

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def stored_messages(path: Path) -> Iterator[bytes]:
    """The messages a `--store` file holds, in arrival order."""
    with path.open("rb") as f:
        while line := f.readline():
            yield f.read(int(line))


async def serve(host: str, port: int, expect: int, timeout: float, grace: float,
                store: BinaryIO | None = None, chunking: bool = False) -> SinkStats:
    loop = asyncio.get_running_loop()
    stats = SinkStats()
    done = asyncio.Event()
    server = await loop.create_server(lambda: SinkProtocol(stats, done, expect, store,
                                                           chunking),
                                      host=host, port=port, reuse_address=True, backlog=1024)
    bound = int(server.sockets[0].getsockname()[1])
    print(json.dumps({"event": "ready", "host": host, "port": bound}), flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    try:
        await asyncio.wait_for(done.wait(), timeout)
        if grace > 0:
            await asyncio.sleep(grace)  # count stragglers (duplicates) for a moment
    except TimeoutError:
        pass
    server.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fast counting SMTP sink for benchmarks")
    p.add_argument("--host", default="127.0.0.2", help="loopback address to bind")
    p.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    p.add_argument("--expect", type=int, default=0,
                   help="exit after this many messages (0: run until --timeout or a signal)")
    p.add_argument("--timeout", type=float, default=120.0, help="hard wall-clock limit (s)")
    p.add_argument("--grace", type=float, default=0.2,
                   help="seconds to keep counting after --expect is reached")
    p.add_argument("--store", type=Path, default=None,
                   help="append every message to this file (length line + message)")
    p.add_argument("--chunking", action=argparse.BooleanOptionalAction,
                   default=os.environ.get("BENCH_SINK_CHUNKING", "") == "1",
                   help="advertise CHUNKING and take BDAT (default: BENCH_SINK_CHUNKING=1)")
    args = p.parse_args(argv)
    if not args.host.startswith("127."):
        p.error("the bench sink binds loopback (127.0.0.0/8) only")
    import uvloop

    if args.store is None:
        stats = uvloop.run(serve(args.host, args.port, args.expect, args.timeout, args.grace,
                                 chunking=args.chunking))
    else:
        with args.store.open("ab", buffering=1 << 20) as store:
            stats = uvloop.run(serve(args.host, args.port, args.expect, args.timeout,
                                     args.grace, store, chunking=args.chunking))
    print(json.dumps({"event": "summary", **asdict(stats)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
