"""The Python ceiling: a bare aiosmtpd server on uvloop whose handler only answers 250.

    python bench/noopserver.py --host 127.0.0.1 --port 0 --timeout 120

No TLS, no AUTH, no storage: what one core of Python + aiosmtpd can accept. Prints
`{"event": "ready", "port": ...}` when listening; runs until SIGTERM/SIGINT or
`--timeout` seconds (always bounded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

import uvloop
from aiosmtpd.smtp import SMTP


class NoopHandler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok"


async def serve(host: str, port: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    handler = NoopHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="noop.bench", enable_SMTPUTF8=True,
                     data_size_limit=100 << 20),
        host=host, port=port)
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "ready", "host": host, "port": bound}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout)
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="no-op aiosmtpd + uvloop SMTP server (ceiling)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
