"""`relay queue transfer` messages per second, by the number of connections to the peer.

    .venv/bin/python bench/transfer.py                        # 500 messages, 1,4,8,16 conns
    .venv/bin/python bench/transfer.py --messages 2000 --connections 1,8

Starts, on loopback: a DNS server and two sinks (this process), and two `relay serve`
processes, A and B, each with a STARTTLS + AUTH submission listener and its own sink. For
each connection count in turn: `--messages` messages of about 1 KB are written into A's
spool, deferred for an hour (A does not attempt them), then `relay queue transfer --to B
--connections N --json` is timed (the CLI's own start, about a second, included), and
the round waits until B has delivered them all. Reported per round: the CLI's wall time,
messages per second, and the counts it printed. Bounded: message count, a 300 s limit
per transfer, both relays terminated at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from relay.clock import SystemClock  # noqa: E402
from relay.queue.keys import new_message_id  # noqa: E402
from relay.queue.ops import move, put_message, recipients_in  # noqa: E402
from relay.queue.records import MessageRecord, RecipientRecord, State  # noqa: E402
from relay.queue.store import QueueStore  # noqa: E402
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
from relay.users import UserStore  # noqa: E402

PASSWORD = "bench password long enough"
ZONE = {"bench.test": [("MX", "10 mx.bench.test")], "mx.bench.test": [("A", "127.0.0.2")]}


def _body(i: int) -> bytes:
    return (f"From: app@example.com\r\nTo: r{i}@bench.test\r\nSubject: bench {i}\r\n\r\n"
            + ("x" * 75 + "\r\n") * 12).encode()


def fill(state: Path, first: int, n: int) -> None:
    """`n` messages in the spool at `state`, deferred for an hour."""
    store = QueueStore(state / "queue", SystemClock())
    try:
        now = SystemClock().now()
        db = store.dbs

        def op(txn: Any) -> None:
            for i in range(first, first + n):
                body = _body(i)
                record = MessageRecord(
                    id=new_message_id(now), sender="app@example.com",
                    recipients=[f"r{i}@bench.test"], received_at=now, size=len(body),
                    headers={"Subject": f"bench {i}"})
                put_message(txn, db, record, body)
                for idx, rr in recipients_in(txn, db, record.id):
                    move(txn, db, record.id, idx, rr, RecipientRecord(
                        rr.address, rr.domain, State.DEFERRED, 1, now + 3600, now,
                        "451 4.2.0 later", "", now))
        store.write_now(op)
    finally:
        store.close_sync()


def _node(tmp: Path, name: str, dns: DnsServer, sink: Sink, tls: Tls) -> tuple[Any, ...]:
    cert, key = tls.write_files(tmp)
    port = free_port()
    state = tmp / name / "state"
    data = relay_config(state, dns.nameserver, sink.port,
                        [listener_config("starttls", "required", port)], retry_schedule=["1h"])
    data["server"]["hostname"] = f"{name}.bench.test"
    data["tls"] = {"cert": str(cert), "key": str(key)}
    config = write_config(tmp / name / "relay.toml", data)
    UserStore(state / "users.json").add("bench", PASSWORD)
    fill(state, 0, 0)  # the spool exists before the relay starts
    relay = RelayProcess(config, log_dir=tmp / name / "logs").start()
    return relay, config, state, port


def run(tmp: Path, *, messages: int, connections: list[int]) -> list[dict[str, Any]]:
    dns = DnsServer(ZONE).start()
    sink_a, sink_b = Sink("127.0.0.2", 0).start(), Sink("127.0.0.2", 0).start()
    tls = Tls()
    a = b = None
    rows: list[dict[str, Any]] = []
    try:
        a = _node(tmp, "a", dns, sink_a, tls)
        b = _node(tmp, "b", dns, sink_b, tls)
        for round_, n in enumerate(connections):
            fill(a[2], round_ * messages, messages)
            began = time.perf_counter()
            done = run_cli("queue", "transfer", "--to", f"127.0.0.1:{b[3]}", "--user", "bench",
                           "--password-stdin", "--tls-no-verify", "--json",
                           "--connections", str(n), config=a[1], input=PASSWORD + "\n",
                           timeout=300)
            seconds = time.perf_counter() - began
            counts = json.loads(done.stdout.splitlines()[-1]) if done.stdout else {}
            sink_b.wait_for((round_ + 1) * messages, timeout=120)
            rows.append({"connections": n, "seconds": round(seconds, 2),
                         "per_second": round(messages / seconds, 1), "exit": done.returncode,
                         "transferred": counts.get("transferred"),
                         "duplicates": counts.get("duplicates"),
                         "failed": counts.get("failed")})
    finally:
        for node in (a, b):
            if node is not None:
                node[0].stop()
        sink_a.stop()
        sink_b.stop()
        dns.stop()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--connections", default="1,4,8,16",
                    help="comma-separated connection counts, one round each")
    args = ap.parse_args()
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="relay-transfer-bench-") as tmp:
        rows = run(Path(tmp), messages=args.messages, connections=counts)
    print(f"{args.messages} messages per round")
    print("| connections | seconds | per second | transferred | duplicates | failed |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['connections']} | {r['seconds']} | {r['per_second']} | "
              f"{r['transferred']} | {r['duplicates']} | {r['failed']} |")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
