"""Hostile SMTP destinations for reliability tests: small asyncio servers on loopback.

`HostileServer(mode)` listens on 127.0.0.x:0 in the caller's event loop and misbehaves
in one way per mode (outbound smuggling, STARTTLS response injection, and destinations
that hang, drop, talk garbage or fail TLS):

- "silent": accepts the connection, never says anything.
- "drop_in_data": a normal dialogue up to 354, then closes after the first data bytes.
- "garbage": answers the greeting and every command with non-SMTP bytes.
- "tls_fail": offers STARTTLS, answers 220, then sends junk instead of a handshake.
- "starttls_inject": answers STARTTLS with `220 go ahead\\r\\n250 fake\\r\\n` in ONE
  segment (STARTTLS response injection), then does a real TLS handshake and a normal
  dialogue.
- "raw": a correct server that records the raw bytes of every DATA phase (outbound
  smuggling).

`transcript` keeps each command line received; `data` the raw DATA bytes ("raw" and
"starttls_inject"). Loopback only; for tests, not production code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Literal

Mode = Literal["silent", "drop_in_data", "garbage", "tls_fail", "starttls_inject", "raw"]


class HostileServer:
    def __init__(self, mode: Mode, host: str = "127.0.0.2",
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.mode = mode
        self.host = host
        self.tls_context = tls_context
        self.transcript: list[bytes] = []
        self.data: list[bytes] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> HostileServer:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in self._writers:
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            await self._dialogue(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _dialogue(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "silent":
            await reader.read()  # until the client gives up
            return
        if mode == "garbage":
            writer.write(b"220 hostile ESMTP\r\n")
            while await reader.readline():
                writer.write(b"\x00\xffHELLO?? not smtp at all\r\n")
                await writer.drain()
            return
        writer.write(b"220 hostile ESMTP\r\n")
        in_tls = False
        while True:
            line = await reader.readline()
            if not line:
                return
            self.transcript.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                offer = b"250-STARTTLS\r\n" if mode in ("tls_fail", "starttls_inject") \
                    and not in_tls else b""
                writer.write(b"250-hostile\r\n" + offer + b"250 8BITMIME\r\n")
            elif verb == b"STAR":
                if mode == "tls_fail":
                    writer.write(b"220 go ahead\r\n")
                    await writer.drain()
                    await reader.read(1)
                    writer.write(b"this is not a TLS server hello\r\n" * 4)
                    await writer.drain()
                    return
                # STARTTLS response injection: both replies in one segment.
                writer.write(b"220 go ahead\r\n250 fake\r\n")
                await writer.drain()
                assert self.tls_context is not None
                await writer.start_tls(self.tls_context)
                in_tls = True
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                if mode == "drop_in_data":
                    await reader.read(10)
                    writer.transport.abort()
                    return
                raw = await reader.readuntil(b"\r\n.\r\n")
                self.data.append(raw)
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:  # MAIL, RCPT, RSET, NOOP
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()
