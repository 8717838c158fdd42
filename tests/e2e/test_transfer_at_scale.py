"""`relay queue transfer` of a few thousand messages between two real relay processes that
both run and deliver, each to its own real sink:

- node A holds 2000 deferred messages (due in an hour) and, once the transfer is under
  way, takes and delivers 100 fresh ones itself;
- the transfer hands the 2000 to node B, which delivers them as it receives them;
- every message reaches a sink exactly once (the 2000 at B's, the fresh 100 at A's), none
  is left in either queue, and the run reports 2000 transferred, 0 duplicates;
- then five of the 2000 are put back in A's spool as a crash between B's 250 and their
  local removal would leave them: the next run reports them as already at the peer, B
  queues none of them again (no new Send event, its duplicate log line) and A is empty.

Bounded: 2000 small messages over eight connections (the default), about 10-20 s on a loaded 2-core
machine (every wait has a limit); marked slow."""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.clock import SystemClock
from relay.queue.keys import new_message_id
from relay.queue.ops import move, put_message, recipients_in
from relay.queue.records import MessageRecord, RecipientRecord, State
from relay.queue.store import QueueStore
from relay.testing.dnsserver import DnsServer
from relay.testing.process import (
    RelayProcess,
    free_port,
    relay_command,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.sink import Sink
from relay.testing.submission import Tls
from relay.users import UserStore

pytestmark = pytest.mark.slow

PASSWORD = "cluster transfer password"
QUEUED_ON_A = 2000
FRESH_ON_A = 100
PUT_BACK = 5


@dataclass
class Node:
    relay: RelayProcess
    config: Path
    state: Path
    port: int


def _start(tmp: Path, name: str, dns: DnsServer, sink: Sink, tls: Tls,
           before: Any = None) -> Node:
    cert, key = tls.write_files(tmp)
    port = free_port()
    state = tmp / name / "state"
    data = relay_config(state, dns.nameserver, sink.port, [
        {"address": f"127.0.0.1:{port}", "tls": "starttls", "auth": "required"}],
        retry_schedule=["1h"])
    data["server"]["hostname"] = f"{name}.relay.test"
    data["tls"] = {"cert": str(cert), "key": str(key)}
    config = write_config(tmp / name / "relay.toml", data)
    UserStore(state / "users.json").add("app", PASSWORD)
    if before is not None:
        before(state)
    relay = RelayProcess(config, log_dir=tmp / name / "logs").start()
    return Node(relay, config, state, port)


def _body(i: int) -> bytes:
    return (f"From: app@example.com\r\nTo: r{i}@dest.test\r\nSubject: queued {i}\r\n"
            f"Message-ID: <q{i}@example.com>\r\n\r\nmessage {i}\r\n").encode()


def _deferred(db: Any, now: float, record: MessageRecord) -> Any:
    """Put `record` in the spool with its recipients deferred for an hour (as a node whose
    destinations are failing holds them)."""
    def op(txn: Any) -> None:
        put_message(txn, db, record, _body(int(record.headers["Subject"].split()[1])))
        for idx, rr in recipients_in(txn, db, record.id):
            move(txn, db, record.id, idx, rr, RecipientRecord(
                rr.address, rr.domain, State.DEFERRED, 1, now + 3600, now,
                "451 4.2.0 try again later", "", now))
    return op


def _fill(state: Path, records: list[MessageRecord]) -> None:
    store = QueueStore(state / "queue", SystemClock())
    try:
        now = SystemClock().now()
        ops = [_deferred(store.dbs, now, r) for r in records]
        store.write_now(lambda txn: [op(txn) for op in ops])
    finally:
        store.close_sync()


def _records(n: int) -> list[MessageRecord]:
    now = SystemClock().now() - 600
    return [MessageRecord(
        id=new_message_id(now + i / 1000), sender="app@example.com",
        recipients=[f"r{i}@dest.test"], received_at=now, size=len(_body(i)),
        headers={"Subject": f"queued {i}"}) for i in range(n)]


def _submit_fresh(port: int, errors: list[BaseException]) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.starttls(context=context)
            smtp.login("app", PASSWORD)
            for i in range(FRESH_ON_A):
                smtp.sendmail("app@example.com", [f"f{i}@dest.test"],
                              f"From: app@example.com\r\nSubject: fresh {i}\r\n\r\nf\r\n")
    except BaseException as e:  # reported by the test thread
        errors.append(e)


def _arguments(b: Node) -> list[str]:
    return ["queue", "transfer", "--to", f"127.0.0.1:{b.port}", "--user", "app",
            "--password-stdin", "--tls-no-verify", "--json"]


def _transfer_while(a: Node, b: Node, meanwhile: threading.Thread) -> dict[str, Any]:
    """The transfer, with `meanwhile` started once its first chunks are sent (the queue
    listed: what `meanwhile` queues on A is A's to deliver)."""
    proc = subprocess.Popen(relay_command(*_arguments(b), config=a.config), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(PASSWORD + "\n")
    proc.stdin.close()
    first = proc.stderr.readline()
    assert first.startswith("relay: transfer: ") and f" of {QUEUED_ON_A} sent" in first, first
    meanwhile.start()
    assert proc.stdout is not None
    err = proc.stderr.read()  # a few progress lines: no pipe fills meanwhile
    out = proc.stdout.read()
    proc.wait(timeout=90)
    assert proc.returncode == 0, out + first + err
    assert "Traceback" not in err
    return dict(json.loads(out.splitlines()[-1]))


def _transfer(a: Node, b: Node) -> dict[str, Any]:
    done = run_cli("queue", "transfer", "--to", f"127.0.0.1:{b.port}", "--user", "app",
                   "--password-stdin", "--tls-no-verify", "--json", config=a.config,
                   input=PASSWORD + "\n", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return dict(json.loads(done.stdout.splitlines()[-1]))


def _queue_size(node: Node) -> int:
    store = QueueStore(node.state / "queue", SystemClock())
    try:
        return store.message_count()
    finally:
        store.close_sync()


def _sends(node: Node) -> list[dict[str, Any]]:
    path = node.state / "events.jsonl"
    return [e for e in (json.loads(line) for line in path.read_text().splitlines()
                        if line.strip()) if e.get("eventType") == "Send"]


def _wait(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_thousands_transferred_while_both_nodes_deliver(tmp_path: Path,
                                                        dns_server: DnsServer) -> None:
    tls = Tls()
    records = _records(QUEUED_ON_A)
    sink_a, sink_b = Sink("127.0.0.2", 0).start(), Sink("127.0.0.2", 0).start()
    nodes: list[Node] = []
    try:
        starting = [threading.Thread(target=lambda name=name, sink=sink, fill=fill: nodes.append(
            _start(tmp_path, name, dns_server, sink, tls, before=fill)))
            for name, sink, fill in (("node-a", sink_a, lambda s: _fill(s, records)),
                                     ("node-b", sink_b, None))]
        for t in starting:
            t.start()
        for t in starting:
            t.join(60)
        a, b = sorted(nodes, key=lambda n: n.state.parent.name)
        assert len(nodes) == 2

        errors: list[BaseException] = []
        fresh = threading.Thread(target=_submit_fresh, args=(a.port, errors))
        began = time.monotonic()
        counts = _transfer_while(a, b, fresh)
        took = time.monotonic() - began
        fresh.join(60)
        assert not errors, errors
        assert counts == {"to": f"127.0.0.1:{b.port}", "messages": QUEUED_ON_A,
                          "transferred": QUEUED_ON_A, "duplicates": 0, "failed": 0,
                          "skipped": 0, "tag": "relay:transferred-from"}, counts

        got_b = sink_b.wait_for(QUEUED_ON_A, timeout=60)
        got_a = sink_a.wait_for(FRESH_ON_A, timeout=30)
        subjects_b = [m.data.decode().split("Subject: ", 1)[1].split("\r\n", 1)[0]
                      for m in got_b]
        assert sorted(subjects_b) == sorted(f"queued {i}" for i in range(QUEUED_ON_A))
        assert sorted(m.rcpt_tos[0] for m in got_a) == \
            sorted(f"f{i}@dest.test" for i in range(FRESH_ON_A))
        _wait("both queues empty", lambda: _queue_size(a) == 0 and _queue_size(b) == 0, 30)
        tagged = {e["mail"]["tags"]["relay:transferred-from"][0] for e in _sends(b)}
        assert tagged == {f"{r.id}@node-a.relay.test" for r in records}

        # -- five of them put back on A, as if their removal had not happened
        _fill(a.state, records[:PUT_BACK])
        again = _transfer(a, b)
        assert (again["transferred"], again["duplicates"], again["failed"]) == (0, PUT_BACK, 0)
        assert _queue_size(a) == 0
        assert len(_sends(b)) == QUEUED_ON_A  # none queued again
        assert b.relay.stderr().count("(duplicate transfer)") == PUT_BACK
        assert sink_b.message_count == QUEUED_ON_A and sink_a.message_count == FRESH_ON_A
        print(f"transfer of {QUEUED_ON_A}: {took:.1f}s")
    finally:
        for node in nodes:
            node.relay.stop()
        sink_a.stop()
        sink_b.stop()
