"""SMTP load generator (aiosmtplib on uvloop) for relay's submission listeners.

    python bench/loadgen.py --host 127.0.0.1 --port 2587 --messages 5000 --size 2048 \
        --concurrency 50 --tls starttls --user bench --password secret --reuse

Runs `--concurrency` sessions that together send exactly `--messages` messages
(one recipient each) of `--size` bytes, then prints one JSON summary:
sent, accepted (250), failed by code, elapsed (first connection → last 250),
msgs/s to 250, and the latency of end-of-DATA → 250 (p50/p99/max, ms).
Bounded by the message count and by `--timeout` seconds of wall clock.

`--reuse` (default) keeps each session's connection for many messages (RSET-free:
MAIL/RCPT/DATA back to back, reconnecting on 421 or a drop); `--no-reuse` opens a new
connection (and TLS + AUTH) per message, which measures the connection set-up cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib

DEFAULT_DOMAIN = "bench.test"


def make_message(size: int, sender: str, rcpt: str) -> bytes:
    """A plain-text message of about `size` bytes, CRLF lines, dot-stuffing not needed."""
    head = (f"From: Bench <{sender}>\r\nTo: <{rcpt}>\r\nSubject: relay bench\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, 0123456789 ABCDEFGHIJKLMNOP\r\n"
    body = bytearray(head)
    while len(body) + len(line) <= size:
        body += line
    if len(body) < size:
        body += b"x" * max(0, size - len(body) - 2) + b"\r\n"
    return bytes(body)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


@dataclass
class Options:
    host: str
    port: int
    messages: int
    size: int
    concurrency: int
    tls: str = "starttls"
    user: str = ""
    password: str = ""
    reuse: bool = True
    tls_resume: bool = False
    timeout: float = 120.0
    command_timeout: float = 30.0
    sender: str = "bench@sender.test"
    domain: str = DEFAULT_DOMAIN


@dataclass
class Run:
    opts: Options
    payload: bytes
    deadline: float
    next_index: int = 0
    sent: int = 0
    accepted: int = 0
    connections: int = 0
    resumed: int = 0                # connections whose TLS session was resumed
    failed: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)   # the first few distinct, for diagnosis
    latencies: list[float] = field(default_factory=list)
    first_connect: float = 0.0      # time.time() of the first connection attempt
    last_accept: float = 0.0        # time.time() of the last 250 after DATA
    mono_first: float = 0.0
    mono_last: float = 0.0

    def take(self) -> int | None:
        if self.next_index >= self.opts.messages or time.monotonic() >= self.deadline:
            return None
        i = self.next_index
        self.next_index += 1
        return i


class ResumingContext(ssl.SSLContext):
    """A client context that offers `session` (the last one the server gave) on every new
    connection: TLS session resumption, as a Postfix smarthost does with its session cache
    (Debian's main.cf sets smtp_tls_session_cache_database). asyncio and uvloop make
    their SSLObject with wrap_bio() and take no session argument, hence the override."""

    session: ssl.SSLSession | None = None

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname,
                                session=session or self.session)


_TLS: list[ResumingContext] = []


def _client_tls() -> ResumingContext:
    # One context for the whole run: loading the system CA store takes tens of ms, which
    # made the harness, not the server, the limit with --no-reuse. None is loaded: the
    # benchmark runs on loopback against a self-signed certificate.
    if not _TLS:
        ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _TLS.append(ctx)
    return _TLS[0]


def _keep_session(smtp: aiosmtplib.SMTP) -> None:
    """Remember the server's session for the next connection. Called after AUTH: a TLS
    1.3 server sends its ticket after the handshake, so it has been read by then."""
    transport = smtp.transport
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is not None and sslobj.session is not None:
        _client_tls().session = sslobj.session


async def _connect(run: Run) -> aiosmtplib.SMTP:
    o = run.opts
    if not run.first_connect:
        run.first_connect = time.time()
        run.mono_first = time.monotonic()
    run.connections += 1
    tls_ctx = _client_tls() if o.tls != "none" else None
    smtp = aiosmtplib.SMTP(
        hostname=o.host, port=o.port, timeout=o.command_timeout,
        use_tls=o.tls == "implicit", start_tls=False, tls_context=tls_ctx,
        local_hostname="loadgen.bench")
    await smtp.connect()
    if o.tls == "starttls":
        await smtp.starttls(tls_context=tls_ctx)
    if o.user:
        await smtp.login(o.user, o.password)
    if tls_ctx is not None and o.tls_resume:
        sslobj = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
        if sslobj is not None and sslobj.session_reused:
            run.resumed += 1
        else:
            # Only a new session is fetched: CPython copies a session through DER
            # (certificate included) on every get, which cost more than it saved.
            _keep_session(smtp)
    return smtp


def _code_of(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return str(exc.code)
    if isinstance(exc, (aiosmtplib.SMTPTimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError,
                        ConnectionError, OSError)):
        return "connection"
    return type(exc).__name__


async def _transaction(smtp: aiosmtplib.SMTP, run: Run, index: int) -> None:
    o = run.opts
    await smtp.mail(o.sender)
    await smtp.rcpt(f"user{index}@{o.domain}")
    resp = await smtp.execute_command(b"DATA")
    if resp.code != 354:
        raise aiosmtplib.SMTPDataError(resp.code, resp.message)
    proto = smtp.protocol
    if proto is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost after DATA")
    # The body goes out with the public write()/read_response() pair (execute_command
    # refuses CR/LF in arguments). Nothing yields between the two, so the reply cannot
    # arrive before read_response() is armed. t0..t1 is end-of-DATA → reply.
    t0 = time.monotonic()
    proto.write(run.payload)
    resp = await proto.read_response(timeout=run.opts.command_timeout)
    t1 = time.monotonic()
    if resp.code != 250:
        raise aiosmtplib.SMTPDataError(resp.code, resp.message)
    run.accepted += 1
    run.latencies.append(t1 - t0)
    run.last_accept = time.time()
    run.mono_last = t1


async def _worker(run: Run) -> None:
    smtp: aiosmtplib.SMTP | None = None
    try:
        while (index := run.take()) is not None:
            run.sent += 1
            try:
                if smtp is None:
                    smtp = await _connect(run)
                await _transaction(smtp, run, index)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                run.failed[_code_of(e)] += 1
                text = f"{type(e).__name__}: {e}"[:200]
                if len(run.errors) < 5 and text not in run.errors:
                    run.errors.append(text)
                if smtp is not None:
                    smtp.close()
                smtp = None
                continue
            if not run.opts.reuse:
                try:
                    await smtp.quit()
                except (aiosmtplib.SMTPException, OSError):
                    smtp.close()
                smtp = None
    finally:
        if smtp is not None:
            try:
                await asyncio.wait_for(smtp.quit(), 5.0)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()


async def run_load(opts: Options) -> dict[str, Any]:
    payload = make_message(opts.size, opts.sender, f"user@{opts.domain}") + b".\r\n"
    run = Run(opts, payload, deadline=time.monotonic() + opts.timeout)
    workers = [asyncio.create_task(_worker(run)) for _ in range(opts.concurrency)]
    done, pending = await asyncio.wait(workers, timeout=opts.timeout + 10)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            run.failed[type(t.exception()).__name__] += 1
    elapsed = (run.mono_last - run.mono_first) if run.accepted else 0.0
    lat = sorted(run.latencies)
    return {
        "host": opts.host, "port": opts.port, "tls": opts.tls, "reuse": opts.reuse,
        "size": len(payload) - 3, "concurrency": opts.concurrency,
        "sent": run.sent, "accepted": run.accepted, "failed": dict(run.failed),
        "connections": run.connections, "tls_resumed": run.resumed, "errors": run.errors,
        "elapsed": round(elapsed, 4),
        "msgs_per_s": round(run.accepted / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {"p50": round(percentile(lat, 0.50) * 1000, 2),
                       "p99": round(percentile(lat, 0.99) * 1000, 2),
                       "max": round(lat[-1] * 1000, 2) if lat else 0.0},
        "first_connect_at": run.first_connect, "last_accept_at": run.last_accept,
        "timed_out": run.next_index < opts.messages,
        # The generator's own CPU: near elapsed means it was saturated itself, and then its
        # latencies include its own loop's lag, not only the server's.
        "cpu_s": round(time.process_time(), 3),
    }


def add_load_arguments(p: argparse.ArgumentParser, size_help: str) -> None:
    """The options every load generator here takes (bench/smtpsource.py too)."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--size", type=int, default=2048, help=size_help)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--timeout", type=float, default=120.0, help="wall-clock limit (s)")


def check_load_arguments(p: argparse.ArgumentParser, a: argparse.Namespace,
                         min_size: int = 1) -> None:
    if not a.host.startswith("127."):
        p.error("the load generator targets loopback (127.0.0.0/8) only")
    if a.messages < 1 or a.concurrency < 1 or a.size < min_size:
        p.error(f"--messages and --concurrency must be >= 1, --size >= {min_size}")


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description="SMTP submission load generator (aiosmtplib)")
    add_load_arguments(p, "message size in bytes")
    p.add_argument("--tls", choices=["starttls", "implicit", "none"], default="starttls")
    p.add_argument("--user", default="")
    p.add_argument("--password", default="")
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse each session's connection (default) or connect per message")
    p.add_argument("--tls-resume", action=argparse.BooleanOptionalAction, default=False,
                   help="resume the TLS session on each new connection (a smarthost's "
                        "session cache)")
    p.add_argument("--domain", default=DEFAULT_DOMAIN, help="recipient domain")
    a = p.parse_args(argv)
    check_load_arguments(p, a, min_size=256)
    return Options(host=a.host, port=a.port, messages=a.messages, size=a.size,
                   concurrency=min(a.concurrency, a.messages), tls=a.tls, user=a.user,
                   password=a.password, reuse=a.reuse, tls_resume=a.tls_resume,
                   timeout=a.timeout, domain=a.domain)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    import uvloop

    summary = uvloop.run(run_load(opts))
    print(json.dumps(summary), flush=True)
    return 0 if summary["accepted"] == opts.messages else 1


if __name__ == "__main__":
    sys.exit(main())
