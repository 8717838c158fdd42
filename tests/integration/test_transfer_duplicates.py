"""`relay queue transfer` is at least once on the wire; the receiving relay makes it once in
its queue. A message whose local removal "failed" after the peer's 250 (its record put back
in the sender's spool, as a crash between the 250 and the removal leaves it) is sent again
by the next run: the peer answers 250 "already queued" without queueing it, counts it
(relay_queue_transfer_duplicates_total, a log line), the sender reports it as already at
the peer and removes it, and the sink receives it once; the same after a real kill -9 of
the sender between the peer's 250s and its local removal. Two sessions racing with one
transfer id queue it once. The record of ids is bounded (pruned by age and count).
A whole in-process RelayApp as the peer, the CLI as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from transferkit import fill, one_each

from relay.app import RelayApp
from relay.clock import SystemClock
from relay.config import from_dict
from relay.configsets import TRANSFERRED_TAG
from relay.queue import transferlog
from relay.queue.ops import put_message
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore
from relay.smtp import replies as R
from relay.testing.process import free_port, relay_command, run_cli, write_config
from relay.testing.sink import Sink
from relay.testing.submission import verified_sender
from relay.testing.wait import wait_for

PASSWORD = "pw-for-app"


def _source_config(tmp: Path) -> Path:
    return write_config(tmp / "source.toml", {
        "server": {"hostname": "node-a.test", "state_dir": str(tmp / "source")},
        "listener": [{"address": f"127.0.0.1:{free_port()}", "tls": "starttls"}]})


def _peer(tmp: Path, sink: Sink) -> RelayApp:
    verified_sender(tmp / "peer", PASSWORD)
    return RelayApp(from_dict({
        "server": {"hostname": "node-b.test", "state_dir": str(tmp / "peer")},
        "listener": [{"address": f"127.0.0.1:{free_port()}"}],
        "delivery": {"routes": {"plain.test": f"127.0.0.2:{sink.port}"}},
    }))


def _port(app: RelayApp) -> int:
    return app.cfg.listener[0].address.port


async def _transfer(config: Path, port: int, *extra: str) -> Any:
    return await asyncio.to_thread(
        run_cli, "queue", "transfer", "--to", f"127.0.0.1:{port}", "--user", "app",
        "--password-stdin", "--tls-no-verify", *extra, config=config, input=PASSWORD + "\n")


async def test_a_message_sent_twice_is_queued_and_delivered_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    config = _source_config(tmp_path)
    ids = await fill(tmp_path / "source", one_each(3))
    source = QueueStore(tmp_path / "source" / "queue", SystemClock())
    kept: tuple[MessageRecord, bytes] | None = None
    try:
        record, body = source.message(ids[0]), source.body(ids[0])
        assert record is not None and body is not None
        kept = (record, body)
    finally:
        source.close_sync()
    sink = Sink("127.0.0.2", 0).start()
    app = _peer(tmp_path, sink)
    await app.start()
    try:
        first = await _transfer(config, _port(app))
        assert first.returncode == 0, first.stdout + first.stderr
        assert "3 transferred, 0 already at the peer (duplicates), 0 failed" in first.stdout
        # The removal of ids[0] "failed": its record is back in the sender's spool.
        source = QueueStore(tmp_path / "source" / "queue", SystemClock())
        try:
            source.write_now(lambda txn: put_message(txn, source.dbs, *kept))
        finally:
            source.close_sync()
        again = await _transfer(config, _port(app), "--json", "--verbose")
        assert again.returncode == 0, again.stdout + again.stderr
        lines = again.stdout.splitlines()
        assert json.loads(lines[-1]) == {
            "to": f"127.0.0.1:{_port(app)}", "messages": 1, "transferred": 0,
            "duplicates": 1, "failed": 0, "skipped": 0, "tag": TRANSFERRED_TAG}
        assert f"{ids[0]}: 1 recipient(s)" in lines[0] and "already at the peer" in lines[0]
        assert "(duplicate transfer " + f"{ids[0]}@node-a.test)" in lines[0]
        source = QueueStore(tmp_path / "source" / "queue", SystemClock())
        try:
            assert source.message_count() == 0  # the duplicate was removed locally too
        finally:
            source.close_sync()
        await asyncio.to_thread(sink.wait_for, 3, 15.0)
        await wait_for("the peer's queue empty", lambda: app.store.message_count() == 0 or None)
        assert app.metrics.registry.get_sample_value(
            "relay_queue_transfer_duplicates_total") == 1.0
    finally:
        await app.stop()
        sink.stop()
    got = sorted(m.rcpt_tos[0] for m in sink.messages)
    assert got == ["r0@plain.test", "r1@plain.test", "r2@plain.test"]  # r0 once
    assert any("duplicate transfer" in r.getMessage() and ids[0] in r.getMessage()
               for r in caplog.records)
    sends = [json.loads(line) for line in (tmp_path / "peer" / "events.jsonl")
             .read_text().splitlines() if '"Send"' in line]
    assert sorted(tag for e in sends for tag in e["mail"]["tags"][TRANSFERRED_TAG]) == \
        sorted(f"{mid}@node-a.test" for mid in ids)


async def test_two_sessions_racing_with_one_transfer_id_queue_it_once(tmp_path: Path) -> None:
    sink = Sink("127.0.0.2", 0).start()
    app = _peer(tmp_path, sink)
    await app.start()
    data = ("From: app@example.com\r\nSubject: raced\r\n"
            "X-Relay-Transfer-Id: 0123456789abcdef0123@node-a.test\r\n\r\nhello\r\n")

    async def send() -> str:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=_port(app), start_tls=True,
                                   validate_certs=False, timeout=10) as client:
            await client.login("app", PASSWORD)
            _, reply = await client.sendmail("app@example.com", ["x@plain.test"], data)
        return reply

    try:
        replies = await asyncio.gather(*(send() for _ in range(4)))
        queued = [r for r in replies if r.startswith("2.0.0 Ok: queued as")]
        already = [r for r in replies if r.startswith("2.0.0 Ok: already queued as")]
        assert len(queued) == 1 and len(already) == 3, replies
        qid = queued[0].split()[-1]
        assert all(f"already queued as {qid} " in r for r in already)
        await asyncio.to_thread(sink.wait_for, 1, 15.0)
        await wait_for("the peer's queue empty", lambda: app.store.message_count() == 0 or None)
        assert app.metrics.registry.get_sample_value(
            "relay_queue_transfer_duplicates_total") == 3.0
    finally:
        await app.stop()
        sink.stop()
    assert len(sink.messages) == 1


def test_duplicate_reply_is_the_one_the_sender_counts() -> None:
    text = R.TRANSFER_DUPLICATE.text.format(queue_id="q1", transfer_id="a@b")
    assert "(duplicate transfer a@b)" in text and R.TRANSFER_DUPLICATE.code == 250


def test_record_of_transfer_ids_is_pruned_by_age_and_count(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue", SystemClock())
    db = store.dbs
    try:
        t0 = 1_000_000.0
        for i in range(10):
            store.write_now(lambda txn, i=i: transferlog.record(
                txn, db, f"m{i}@node-a.test", f"q{i}", t0 + i))
        assert store.read(lambda txn: transferlog.count(txn, db)) == 10
        assert store.read(lambda txn: transferlog.accepted_as(txn, db, "m3@node-a.test")) \
            == "q3"
        # Over the cap: the oldest go first, at most `budget` a call.
        removed = store.write_now(lambda txn: transferlog.prune(
            txn, db, t0 + 10, 3, max_entries=5))
        assert removed == 3
        removed = store.write_now(lambda txn: transferlog.prune(
            txn, db, t0 + 10, 100, max_entries=5))
        assert removed == 2
        assert store.read(lambda txn: transferlog.accepted_as(txn, db, "m4@node-a.test")) \
            is None
        assert store.read(lambda txn: transferlog.accepted_as(txn, db, "m5@node-a.test")) \
            == "q5"
        # By age: older than `keep` seconds.
        removed = store.write_now(lambda txn: transferlog.prune(
            txn, db, t0 + 20, 100, keep=12.0))
        assert removed == 3  # m5, m6, m7 (written at t0+5..7, before t0+8)
        assert store.read(lambda txn: transferlog.count(txn, db)) == 2
        # Each new id prunes a few expired ones as it is written.
        store.write_now(lambda txn: transferlog.record(
            txn, db, "new@node-a.test", "qn", t0 + transferlog.KEEP_SECONDS + 100))
        assert store.read(lambda txn: transferlog.count(txn, db)) == 1
    finally:
        store.close_sync()


async def test_sender_killed_between_the_250s_and_the_removal(tmp_path: Path) -> None:
    """kill -9 of the sender once the peer has queued three messages (or a few more) of its
    chunk, before the chunk's removal: after the relay's start-up recovery (here its op,
    run on the spool), the next run reports those as already at the peer and the others as
    transferred, and the sink receives each of the ten once. The connection runs through a
    forwarder that stops passing the peer's bytes once it has accepted three (STARTTLS:
    the forwarder sees no replies, so it asks the peer's own counter)."""
    config = _source_config(tmp_path)
    ids = await fill(tmp_path / "source", one_each(10))
    sink = Sink("127.0.0.2", 0).start()
    app = _peer(tmp_path, sink)
    await app.start()
    third = asyncio.Event()

    def accepted() -> int:
        return int(app.metrics.registry.get_sample_value("relay_messages_accepted_total")
                   or 0)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   stall: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if stall and accepted() >= 3:  # the peer has three: nothing more reaches
                    third.set()                # the sender, which waits until killed
                    await asyncio.Event().wait()
                writer.write(data)
                await writer.drain()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", _port(app))
        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    forwarder = await asyncio.start_server(forward, "127.0.0.9", 0)
    front = forwarder.sockets[0].getsockname()[1]
    proc = subprocess.Popen(relay_command(
        "queue", "transfer", "--to", f"127.0.0.9:{front}", "--user", "app",
        "--password-stdin", "--tls-no-verify", "--connections", "1", config=config),
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        text=True)
    try:
        assert proc.stdin is not None
        proc.stdin.write(PASSWORD + "\n")
        proc.stdin.close()
        await asyncio.wait_for(third.wait(), 30)
        proc.kill()
        await asyncio.to_thread(proc.wait, 30)
        forwarder.close()
        taken = accepted()  # three, or one or two more that went through meanwhile
        assert 3 <= taken < 10
        source = QueueStore(tmp_path / "source" / "queue", SystemClock())
        try:  # what `relay serve` does first on the sending node
            assert source.message_count() == 10
            source.write_now(source.recover_op(SystemClock().now()))
        finally:
            source.close_sync()
        again = await _transfer(config, _port(app), "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        counts = json.loads(again.stdout.splitlines()[-1])
        assert (counts["transferred"], counts["duplicates"], counts["failed"]) == \
            (10 - taken, taken, 0)
        await asyncio.to_thread(sink.wait_for, 10, 15.0)
        await wait_for("the peer's queue empty", lambda: app.store.message_count() == 0 or None)
    finally:
        if proc.poll() is None:
            proc.kill()
        forwarder.close()
        await app.stop()
        sink.stop()
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == \
        sorted(f"r{i}@plain.test" for i in range(10))
    sends = [line for line in (tmp_path / "peer" / "events.jsonl").read_text().splitlines()
             if '"Send"' in line]
    assert len(sends) == 10 and all(any(mid in line for line in sends) for mid in ids)
