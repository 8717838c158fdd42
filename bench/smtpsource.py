"""Postfix's `smtp-source` as a load generator for the plain-SMTP ceiling figures.

    python bench/smtpsource.py --port 2525 --messages 5000 --size 2048 --concurrency 50

bench/loadgen.py is Python (aiosmtplib): it speaks STARTTLS + AUTH, which smtp-source
cannot, but it spends ~0.9 ms of CPU per message itself. On a two-core machine that is
most of a core, so against a fast plain listener it measures itself: the no-op aiosmtpd
server and relay with one process both came out at the loadgen's own ~1,140 msgs/s, and
`server.workers = 2` could not show its second core. smtp-source is C and costs ~0.17 ms
per message, so the plain-SMTP ceilings (no-op server, relay one process, relay with two
workers) measure the servers.

Prints one JSON summary shaped like loadgen's (accepted, msgs_per_s, elapsed,
first_connect_at, cpu_s; no latency: smtp-source does not report one). Bounded by the
message count and `--timeout`. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from typing import Any

SMTP_SOURCE = "smtp-source"


def find() -> str | None:
    """Path of smtp-source (Debian's postfix package ships it in /usr/sbin), or None."""
    return shutil.which(SMTP_SOURCE) or shutil.which(f"/usr/sbin/{SMTP_SOURCE}")


def run(host: str, port: int, messages: int, size: int, sessions: int, *,
        reuse: bool = True, timeout: float = 120.0, domain: str = "bench.test",
        sender: str = "bench@sender.test") -> dict[str, Any]:
    """Send `messages` plain-SMTP messages of `size` body bytes over `sessions` parallel
    sessions (connections kept when `reuse`), each to a distinct recipient."""
    if not host.startswith("127."):
        raise ValueError(f"smtp-source targets loopback only, not {host!r}")
    exe = find()
    if exe is None:
        raise RuntimeError("smtp-source is not installed (Debian: apt-get install postfix)")
    # -c: a counter per completed DATA (how many were accepted); -N: distinct recipients
    # (1user@, 2user@, ...) as the Python loadgen sends; -d: keep the connection.
    cmd = [exe, "-c", "-N", "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-M", "loadgen.bench", "-f", sender, "-t", f"user@{domain}"]
    if reuse:
        cmd.append("-d")
    cmd.append(f"{host}:{port}")
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started_at, t0 = time.time(), time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        out, err, rc = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        out, err, rc = e.stdout or b"", (e.stderr or b"") + b" (timed out)", -1
    elapsed = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts = [int(x) for x in out.replace(b"\n", b"\r").split(b"\r") if x.strip().isdigit()]
    accepted = max(counts, default=0)
    failed = {} if accepted == messages and rc == 0 else {"smtp-source": messages - accepted}
    return {
        "host": host, "port": port, "tls": "none", "reuse": reuse, "size": size,
        "concurrency": sessions, "sent": messages, "accepted": accepted, "failed": failed,
        "connections": sessions if reuse else messages,
        "errors": [err.decode(errors="replace").strip()[-300:]] if failed else [],
        "elapsed": round(elapsed, 4),
        "msgs_per_s": round(accepted / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {"p50": None, "p99": None, "max": None},
        "first_connect_at": started_at, "last_accept_at": started_at + elapsed,
        "timed_out": rc == -1,
        "cpu_s": round((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), 3),
    }


def main(argv: list[str] | None = None) -> int:
    from loadgen import add_load_arguments, check_load_arguments  # bench/, beside this file

    p = argparse.ArgumentParser(description="smtp-source as a plain-SMTP load generator")
    add_load_arguments(p, "body bytes")
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args(argv)
    check_load_arguments(p, a)
    if find() is None:
        p.error("smtp-source is not installed (Debian: apt-get install postfix)")
    summary = run(a.host, a.port, a.messages, a.size, min(a.concurrency, a.messages),
                  reuse=a.reuse, timeout=a.timeout)
    print(json.dumps(summary), flush=True)
    return 0 if summary["accepted"] == a.messages else 1


if __name__ == "__main__":
    sys.exit(main())
