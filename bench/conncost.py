"""The submission side's CPU per new connection: relay's SubmissionServer alone, no storage.

    PYTHONPATH=. .venv/bin/python bench/conncost.py --messages 1000 --rounds 3

Starts a server process (this file with `--serve`): one STARTTLS + AUTH-required listener
on loopback with relay's own TLS context (tlsutil.server_context on the self-signed
ECDSA P-256 certificate `relay serve` makes), a real UserStore (scrypt) and a submitter
that keeps nothing (the queue is not what is measured here). Then bench/loadgen.py sends
`--messages` messages of 2 KB from 50 sessions, once with a new connection per message
(STARTTLS + AUTH PLAIN + one message + QUIT) and once with connections reused, and the
server process's CPU (user + system, /proc) is read before and after each run. Prints
one JSON line per round and a summary: CPU ms per message in each mode, and their
difference, the CPU of a new connection. The load generator is not counted. Runs are
bounded by the message count and `--timeout` seconds each.

`--cprofile FILE` (the server writes cProfile stats of a new-connection run to FILE) and
`--tls-resume` (the client offers the previous TLS session on each new connection).
The server process imports relay from PYTHONPATH, so two trees can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from proctree import settled_cpu

HERE = Path(__file__).resolve().parent
USER, PASSWORD = "bench", "bench-password-1"


async def serve(timeout: float, profile: str | None) -> None:
    from relay.app import tune_gc
    from relay.clock import SystemClock
    from relay.config import Address, Limits, Listener
    from relay.smtp.server import SubmissionServer
    from relay.testing.submission import DiscardSubmitter
    from relay.tlsutil import ensure_self_signed, server_context
    from relay.users import UserStore

    work = Path(tempfile.mkdtemp(prefix="relay-conncost-"))
    cert, key = ensure_self_signed(work, "bench.relay")
    users = UserStore(work / "users.json")
    users.add(USER, PASSWORD)
    listener = Listener(address=Address("127.0.0.1", 0), tls="starttls", auth="required")
    server = SubmissionServer(listener, Limits(max_connections_per_ip=1000), "bench.relay",
                              DiscardSubmitter(), users, SystemClock(),
                              server_context(cert, key))
    await server.start()
    tune_gc()  # as `relay serve` does after start-up
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
    print(json.dumps({"event": "ready", "port": server.port}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout)
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    await server.stop()


def _start_server(timeout: float, profile: str | None) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--timeout", str(timeout)]
    if profile:
        cmd += ["--cprofile", profile]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("the bench server did not start")
    return proc, int(json.loads(line)["port"])


def _load(port: int, messages: int, reuse: bool, resume: bool, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--messages",
           str(messages), "--size", "2048", "--concurrency", "50", "--timeout", str(timeout),
           "--tls", "starttls", "--user", USER, "--password", PASSWORD,
           "--reuse" if reuse else "--no-reuse"]
    if resume:
        cmd.append("--tls-resume")
    done = subprocess.run(cmd, capture_output=True, timeout=timeout + 30, check=False)
    return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))


def one_round(messages: int, resume: bool, timeout: float,
              profile: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("new", "reuse"):
        proc, port = _start_server(timeout * 3, profile if mode == "new" else None)
        try:
            # Warm up: the first AUTH (scrypt) and imports are not the steady state.
            _load(port, 20, False, resume, timeout)
            cpu0 = settled_cpu([proc.pid], quiet=0.2)
            if profile and mode == "new":
                proc.send_signal(signal.SIGUSR1)
            load = _load(port, messages, mode == "reuse", resume, timeout)
            cpu = settled_cpu([proc.pid], quiet=0.2) - cpu0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        ok = load["accepted"]
        out[mode] = {"cpu_ms_per_msg": round(cpu * 1000 / ok, 3) if ok else None,
                     "msgs_per_s": load["msgs_per_s"], "accepted": ok,
                     "failed": load["failed"], "tls_resumed": load["tls_resumed"]}
    if out["new"]["cpu_ms_per_msg"] and out["reuse"]["cpu_ms_per_msg"]:
        out["per_connection_ms"] = round(out["new"]["cpu_ms_per_msg"]
                                         - out["reuse"]["cpu_ms_per_msg"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="submission CPU per new connection")
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0, help="per run (s)")
    p.add_argument("--tls-resume", action="store_true")
    p.add_argument("--cprofile", default=None)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve:
        import uvloop
        uvloop.run(serve(a.timeout, a.cprofile))
        return 0
    rounds = []
    for _ in range(a.rounds):
        r = one_round(a.messages, a.tls_resume, a.timeout, a.cprofile)
        rounds.append(r)
        print(json.dumps(r), flush=True)
    summary: dict[str, Any] = {"summary": True}
    for mode in ("new", "reuse"):
        vals = [r[mode]["cpu_ms_per_msg"] for r in rounds if r[mode]["cpu_ms_per_msg"]]
        summary[f"{mode}_cpu_ms_per_msg"] = round(statistics.median(vals), 3) if vals else None
    conn = [r["per_connection_ms"] for r in rounds if "per_connection_ms" in r]
    summary["per_connection_ms"] = round(statistics.median(conn), 3) if conn else None
    print(json.dumps(summary), flush=True)
    return 0 if all(r["new"]["accepted"] == a.messages and r["reuse"]["accepted"] == a.messages
                    for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
