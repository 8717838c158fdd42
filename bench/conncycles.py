"""What a closed submission connection leaves to the cyclic collector.

    PYTHONPATH=. .venv/bin/python bench/conncycles.py --sessions 50 [--referrers]

Runs relay's SubmissionServer in this process on uvloop (STARTTLS + AUTH required, the
self-signed ECDSA certificate `relay serve` makes, `tlsutil.server_context`, a real
UserStore, a submitter that keeps nothing) with the cyclic collector disabled, and drives
it from a separate client process (smtplib, so the client's own objects are not
counted) with `--sessions` connections of each kind:

- full:    EHLO, STARTTLS, EHLO, AUTH PLAIN, one message, QUIT;
- dropped: STARTTLS + AUTH, then half a MAIL command and the socket closed (no QUIT);
- data:    STARTTLS + AUTH, MAIL, RCPT, DATA, half a message, the socket closed;
- timeout: STARTTLS + AUTH, then silence until the server's idle timeout closes it;
- plain:   EHLO, QUIT (no TLS);
- auth:    STARTTLS, AUTH LOGIN, the socket closed at its first challenge;
- scrypt:  STARTTLS, AUTH PLAIN with an unknown credential, closed during its scrypt;
- tlsdrop: STARTTLS, the socket closed before the TLS handshake;
- tlsstall: STARTTLS, a ClientHello, then nothing until the handshake time limit.
With `--implicit`, an implicit-TLS listener instead (kinds full, tlsdrop, handshake,
stall: see `implicit_client`).

After each kind, once every session has ended, `gc.collect()` with gc.DEBUG_SAVEALL
lists what only the collector could free: one JSON line per kind with the objects per
connection, grouped by type (with `--timed` instead: the objects a real collection frees
and its CPU, per connection). `--referrers` also prints, for a few relay objects, which
collected objects refer to them (the cycles' edges).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

USER, PASSWORD = "bench", "bench-password-1"
KINDS = ("full", "dropped", "data", "timeout", "plain", "auth", "scrypt", "tlsdrop",
         "tlsstall")
IDLE_TIMEOUT = 0.3  # s: the "timeout" kind waits this out


def client(port: int, kind: str, count: int, implicit: bool) -> None:
    """The client process: `count` connections of `kind`, one after the other."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if implicit:
        implicit_client(port, kind, count, ctx)
        return
    body = (b"From: <u@bench.test>\r\nTo: <r@bench.test>\r\nSubject: x\r\n\r\n"
            + b"The quick brown fox jumps over the lazy dog 0123456789\r\n" * 36)
    for _ in range(count):
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        s.ehlo("client.test")
        if kind == "plain":
            s.quit()
            continue
        if kind in ("tlsdrop", "tlsstall"):
            s.putcmd("STARTTLS")
            s.getreply()
            if kind == "tlsstall":  # a ClientHello, then nothing until the time limit
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                obj = ctx.wrap_bio(incoming, outgoing)
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
                s.send(outgoing.read())
                while s.sock.recv(65536):
                    pass
            s.sock.shutdown(socket.SHUT_RDWR)
            s.close()
            continue
        s.starttls(context=ctx)
        s.ehlo("client.test")
        if kind in ("auth", "scrypt"):
            if kind == "auth":
                s.putcmd("AUTH LOGIN")
                s.getreply()
            else:
                s.putcmd("AUTH PLAIN AHdyb25nAHdyb25nLXBhc3N3b3Jk")  # \0wrong\0wrong-password
            s.sock.shutdown(socket.SHUT_RDWR)
            s.close()
            continue
        s.login(USER, PASSWORD)
        if kind == "full":
            s.sendmail("u@bench.test", ["r@bench.test"], body)
            s.quit()
        elif kind == "dropped":
            s.send(b"MAIL FROM:<u@bench")
            s.sock.shutdown(socket.SHUT_RDWR)
            s.close()
        elif kind == "data":
            s.mail("u@bench.test")
            s.rcpt("r@bench.test")
            s.putcmd("DATA")
            s.getreply()
            s.send(body[:500])
            s.sock.shutdown(socket.SHUT_RDWR)
            s.close()
        elif kind == "timeout":
            code, _ = s.getreply()  # the 421 of the idle timeout, then the close
            assert code == 421, code
            s.close()


def implicit_client(port: int, kind: str, count: int, ctx: ssl.SSLContext) -> None:
    """On an implicit-TLS listener: "full" (TLS, AUTH, one message, QUIT), "tlsdrop"
    (closed before the handshake), "handshake" (a ClientHello, then closed), "stall" (a
    ClientHello, then nothing until the handshake time limit)."""
    for _ in range(count):
        if kind == "full":
            s = smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=ctx)
            s.ehlo("client.test")
            s.login(USER, PASSWORD)
            s.sendmail("u@bench.test", ["r@bench.test"], b"Subject: x\r\n\r\nx\r\n")
            s.quit()
        elif kind in ("tlsdrop", "handshake", "stall"):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if kind in ("handshake", "stall"):
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                obj = ctx.wrap_bio(incoming, outgoing)
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
                sock.sendall(outgoing.read())  # the ClientHello
                sock.recv(65536)  # the server's first flight
                if kind == "stall":  # until the handshake time limit closes it
                    while sock.recv(65536):
                        pass
            sock.close()


def garbage_by_type() -> tuple[int, Counter[str], list[Any]]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    gc.set_debug(0)
    found = list(gc.garbage)
    gc.garbage.clear()
    kinds: Counter[str] = Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in found)
    return len(found), kinds, found


def edges(found: list[Any], limit: int = 6) -> list[str]:
    """For the first few objects of relay's types: which collected objects refer to them."""
    ids = {id(o) for o in found}
    out: list[str] = []
    for obj in found:
        if not type(obj).__module__.startswith("relay"):
            continue
        refs = [r for r in gc.get_referrers(obj) if id(r) in ids]
        names = []
        for r in refs:
            label = type(r).__qualname__
            if isinstance(r, dict):
                keys = [k for k, v in r.items() if v is obj]
                label += f"{keys}"
            elif type(r).__name__ == "frame":
                label += f"({r.f_code.co_name})"
            elif type(r).__name__ in ("method", "builtin_function_or_method"):
                label += f"({getattr(r, '__name__', '?')})"
            names.append(label)
        out.append(f"{type(obj).__qualname__} <- {names}")
        if len(out) >= limit:
            break
    return out


def timed_collect() -> tuple[int, float]:
    """Objects a full collection frees, and its CPU less that of the empty collection
    right after it (the walk over every tracked object, which is not the garbage's)."""
    t0 = time.process_time()
    freed = gc.collect()
    t1 = time.process_time()
    gc.collect()
    t2 = time.process_time()
    return freed, (t1 - t0) - (t2 - t1)


async def measure(sessions: int, kinds: list[str], referrers: bool, implicit: bool,
                  timed: bool) -> None:
    from relay.clock import SystemClock
    from relay.config import Address, Duration, Limits, Listener
    from relay.smtp.server import SubmissionServer
    from relay.testing.submission import DiscardSubmitter
    from relay.tlsutil import ensure_self_signed, server_context
    from relay.users import UserStore

    work = Path(tempfile.mkdtemp(prefix="relay-conncycles-"))
    cert, key = ensure_self_signed(work, "bench.relay")
    users = UserStore(work / "users.json")
    users.add(USER, PASSWORD)
    listener = Listener(address=Address("127.0.0.1", 0),
                        tls="implicit" if implicit else "starttls", auth="required")
    server = SubmissionServer(
        listener, Limits(max_connections_per_ip=1000, idle_timeout=Duration(IDLE_TIMEOUT),
                         tls_handshake_timeout=Duration(IDLE_TIMEOUT)),
        "bench.relay", DiscardSubmitter(), users, SystemClock(), server_context(cert, key))
    await server.start()
    loop = asyncio.get_running_loop()
    # Warm-up (first AUTH's scrypt, imports, caches), then collect what it left.
    await loop.run_in_executor(None, run_client, server.port, "full", 3, implicit)
    await settle(server)
    garbage_by_type()
    gc.collect()
    gc.disable()
    try:
        for kind in kinds:
            await loop.run_in_executor(None, run_client, server.port, kind, sessions,
                                       implicit)
            await settle(server)
            if timed:
                freed, cpu = timed_collect()
                print(json.dumps({"kind": kind, "sessions": sessions,
                                  "freed_per_connection": round(freed / sessions, 2),
                                  "collector_ms_per_connection":
                                      round(cpu * 1000 / sessions, 4)}), flush=True)
                continue
            total, by_type, found = garbage_by_type()
            top = {k: round(v / sessions, 2) for k, v in by_type.most_common(40)}
            line: dict[str, Any] = {"kind": kind, "sessions": sessions,
                                    "objects_per_connection": round(total / sessions, 2),
                                    "relay_types": sum(v for k, v in by_type.items()
                                                       if k.startswith("relay")),
                                    "by_type_per_connection": top}
            if referrers:
                line["edges"] = edges(found)
            print(json.dumps(line), flush=True)
            del found
            gc.collect()  # now really free them (they were kept by DEBUG_SAVEALL)
    finally:
        gc.enable()
        await server.stop()


def run_client(port: int, kind: str, count: int, implicit: bool) -> None:
    subprocess.run([sys.executable, __file__, "--client", kind, "--port", str(port),
                    "--sessions", str(count)] + (["--implicit"] if implicit else []),
                   check=True, timeout=120)


async def settle(server: Any) -> None:
    """Until every session has ended and the loop has run their last callbacks."""
    deadline = time.monotonic() + 10
    while server.context.sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--referrers", action="store_true")
    p.add_argument("--timed", action="store_true",
                   help="the collector's CPU for the garbage instead of its types")
    p.add_argument("--implicit", action="store_true",
                   help="an implicit-TLS listener; kinds full, tlsdrop, handshake")
    p.add_argument("--client", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.client:
        client(a.port, a.client, a.sessions, a.implicit)
        return 0
    import uvloop
    uvloop.run(measure(a.sessions, a.kinds.split(","), a.referrers, a.implicit, a.timed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
