"""SES API sends per second against SMTP submissions of the same messages, one relay.

    .venv/bin/python bench/api_vs_smtp.py                   # 300 messages each, 8 clients
    .venv/bin/python bench/api_vs_smtp.py --messages 1000 --clients 16 --size 20480

Starts, on loopback: a DNS server (this process), a sink on 127.0.0.2 (this process), and
one `relay serve` (a subprocess, one worker) with a STARTTLS + AUTH submission listener and
the SES API on plain HTTP, an SMTP user and an access key of it made with the CLI. Then, in
turn, `--clients` threads submit `--messages` messages of `--size` bytes:
- smtp: smtplib, one connection per client thread (STARTTLS, AUTH once, then MAIL/RCPT/DATA
  per message), each message acknowledged by 250 (durable);
- api: boto3 sesv2 `send_email` with Content.Raw (the same message bytes), one client per
  thread (its HTTP connection kept alive), each acknowledged by a MessageId (durable).
Reported per mode: accepted, failed, the accept rate (messages / first send -> last ack)
and the p50/p99 latency of one send. Bounded: message count, per-call timeouts, the relay
is terminated at the end.
"""

from __future__ import annotations

import argparse
import email.policy
import json
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from relay.testing.dnsserver import DnsServer  # noqa: E402
from relay.testing.process import (  # noqa: E402
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.sink import Sink  # noqa: E402
from relay.testing.submission import Tls  # noqa: E402

PASSWORD = "bench password long enough"
ZONE = {"bench.test": [("MX", "10 mx.bench.test")], "mx.bench.test": [("A", "127.0.0.2")]}


def message(size: int, i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = f"r{i}@bench.test"
    msg["Subject"] = f"bench {i}"
    line = "x" * 75 + "\n"
    msg.set_content(line * max(1, (size - 200) // len(line)))
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF, as both paths send it


def _drive(clients: int, messages: int, make: Callable[[], Any],
           send: Callable[[Any, int], None], close: Callable[[Any], None]) -> dict[str, Any]:
    """`clients` threads share `messages` sends; counts and latencies."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(messages))

    def worker() -> None:
        try:
            conn = make()
        except Exception as e:
            with lock:
                failures.append(f"connect: {e}")
            return
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    send(conn, i)
                except Exception as e:
                    with lock:
                        failures.append(str(e)[:200])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
        finally:
            close(conn)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)
    return {"accepted": len(lat), "failed": len(failures), "errors": failures[:3],
            "seconds": round(elapsed, 3),
            "per_second": round(len(lat) / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2)
            if lat else None}


def run(tmp: Path, *, messages: int, clients: int, size: int) -> dict[str, Any]:
    import boto3
    from botocore.config import Config as BotoConfig

    dns = DnsServer(ZONE).start()
    sink = Sink("127.0.0.2", 0).start()
    tls = Tls()
    cert, key = tls.write_files(tmp)
    submit_port, api_port = free_port(), free_port()
    data = relay_config(tmp / "state", dns.nameserver, sink.port,
                        [listener_config("starttls", "required", submit_port)])
    data.update({"tls": {"cert": str(cert), "key": str(key)},
                 "api": {"enabled": True, "address": f"127.0.0.1:{api_port}"}})
    config = write_config(tmp / "relay.toml", data)
    added = run_cli("user", "add", "bench", "--password-stdin", config=config,
                    input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    made = run_cli("user", "keys", "create", "bench", "--json", config=config)
    assert made.returncode == 0, made.stderr
    access = json.loads(made.stdout)
    relay = RelayProcess(config, log_dir=tmp / "logs").start()
    bodies = [message(size, i) for i in range(messages)]
    try:
        def smtp_make() -> smtplib.SMTP:
            s = smtplib.SMTP("127.0.0.1", submit_port, timeout=30)
            s.starttls(context=tls.client)
            s.login("bench", PASSWORD)
            return s

        def smtp_send(s: smtplib.SMTP, i: int) -> None:
            s.sendmail("app@example.com", [f"r{i}@bench.test"], bodies[i])

        def smtp_close(s: smtplib.SMTP) -> None:
            try:
                s.quit()
            except Exception:
                s.close()

        def api_make() -> Any:
            return boto3.client(
                "sesv2", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{api_port}",
                aws_access_key_id=access["AccessKeyId"],
                aws_secret_access_key=access["SecretAccessKey"],
                config=BotoConfig(retries={"total_max_attempts": 1}, read_timeout=30,
                                  max_pool_connections=1))

        def api_send(client: Any, i: int) -> None:
            client.send_email(FromEmailAddress="app@example.com",
                              Destination={"ToAddresses": [f"r{i}@bench.test"]},
                              Content={"Raw": {"Data": bodies[i]}})

        rows = {"smtp": _drive(clients, messages, smtp_make, smtp_send, smtp_close),
                "api": _drive(clients, messages, api_make, api_send, lambda c: c.close())}
        deadline = time.monotonic() + 60
        while len(sink.messages) < 2 * messages and time.monotonic() < deadline:
            time.sleep(0.1)
        return {"messages": messages, "clients": clients, "size": size,
                "delivered": len(sink.messages), **rows}
    finally:
        relay.stop()
        sink.stop()
        dns.stop()


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['messages']} messages of {result['size']} B, {result['clients']} "
             f"clients, delivered {result['delivered']}",
             "| mode | accepted | failed | per second | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|"]
    for mode in ("smtp", "api"):
        r = result[mode]
        lines.append(f"| {mode} | {r['accepted']} | {r['failed']} | {r['per_second']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-api-bench-") as tmp:
        result = run(Path(tmp), messages=args.messages, clients=args.clients, size=args.size)
    print(table(result))
    return 0 if not result["smtp"]["failed"] and not result["api"]["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
