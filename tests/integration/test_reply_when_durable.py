"""The 250 after DATA goes out the moment the message's commit is synced (the p99 of
end-of-DATA → 250).

A real QueueStore (LMDB, synced commits) behind the real submission server on loopback.
The submitter below is the queue submitter's shape, but it holds submit() open after
the commit until the test releases it: the client must already have its 250, the
message must already be in the spool when it does, and the session must still read
the next command in order once submit() returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from relay.clock import FakeClock
from relay.queue.ops import NewMessage
from relay.queue.store import QueueStore
from relay.smtp import replies as R
from relay.smtp.server import SubmissionServer
from relay.testing.factories import Stores
from relay.testing.submission import RawClient, make_listener, running_server


class HeldSubmitter:
    """Commits to a real store, then waits for `release` before submit() returns."""

    def __init__(self, store: QueueStore, *, report_durable: bool = True) -> None:
        self.store = store
        self.report_durable = report_durable
        self.release = asyncio.Event()
        self.returned = 0
        self.messages: list[NewMessage] = []
        self.fail_in_callback = False

    async def submit(self, msg: NewMessage,
                     on_durable: Callable[[str], None] | None = None,
                     account: object = None) -> str:
        def durable(queue_id: str) -> None:
            if self.fail_in_callback:
                raise RuntimeError("a broken on_durable callback")
            assert on_durable is not None
            on_durable(queue_id)

        self.messages.append(msg)
        use = durable if (on_durable is not None and self.report_durable) else None
        record = await self.store.submit_record(msg, on_durable=use)
        await self.release.wait()
        self.returned += 1
        return record.id


@pytest.fixture
async def store(make_store: Stores) -> QueueStore:
    return await make_store(FakeClock())


@pytest.fixture
def held(store: QueueStore) -> HeldSubmitter:
    return HeldSubmitter(store)


@pytest.fixture
async def server(held: HeldSubmitter) -> AsyncIterator[SubmissionServer]:
    listener = make_listener(tls="none", auth="none", trusted_networks=["127.0.0.0/8"])
    async with running_server(tls=None, listener=listener, submitter=held) as srv:
        yield srv


async def open_transaction(port: int, rcpt: str) -> RawClient:
    client = await RawClient.connect(port)
    assert (await client.read_reply()).code == 220
    assert (await client.cmd("EHLO client.test")).code == 250
    assert (await client.cmd("MAIL FROM:<app@tenant.example>")).code == 250
    assert (await client.cmd(f"RCPT TO:<{rcpt}>")).code == 250
    assert (await client.cmd("DATA")).code == 354
    return client


def queue_id(reply_text: str) -> str:
    return reply_text.rsplit(" ", 1)[-1]


async def test_250_arrives_when_durable_before_submit_returns(
        server: SubmissionServer, held: HeldSubmitter, store: QueueStore) -> None:
    client = await open_transaction(server.port, "first@sink.test")
    await client.send(b"Subject: one\r\n\r\nhello\r\n.\r\n")
    reply = await client.read_reply()
    assert reply.code == 250 and reply.lines[-1].startswith(R.QUEUED.enhanced), reply
    assert held.returned == 0  # submit() has not returned: the 250 came from the commit
    qid = queue_id(reply.lines[-1])
    assert store.message(qid) is not None  # durable in LMDB before the client heard 250

    # The client goes on at once; the session answers in order once submit() returns.
    await client.send(b"MAIL FROM:<app@tenant.example>\r\n")
    await asyncio.sleep(0.05)
    held.release.set()
    assert (await client.read_reply()).code == 250
    assert (await client.cmd("RCPT TO:<second@sink.test>")).code == 250
    assert (await client.cmd("DATA")).code == 354
    await client.send(b"Subject: two\r\n\r\nhello again\r\n.\r\n")
    second = await client.read_reply()
    assert second.code == 250, second
    assert held.returned == 2
    # A fresh envelope: the second message has only its own recipient, and one 250 each.
    assert [m.recipients for m in held.messages] == [["first@sink.test"], ["second@sink.test"]]
    assert (await client.cmd("NOOP")).code == 250  # no stray second 250 was queued
    await client.close()


async def test_a_submitter_that_does_not_report_durable_gets_the_reply_after_return(
        server: SubmissionServer, held: HeldSubmitter) -> None:
    held.report_durable = False
    client = await open_transaction(server.port, "r@sink.test")
    await client.send(b"Subject: one\r\n\r\nhello\r\n.\r\n")
    with pytest.raises(TimeoutError):
        await client.read_reply(timeout=0.3)
    held.release.set()
    reply = await client.read_reply()
    assert reply.code == 250 and held.returned == 1
    assert (await client.cmd("NOOP")).code == 250
    await client.close()


async def test_a_failing_on_durable_callback_still_answers_once(
        server: SubmissionServer, held: HeldSubmitter, store: QueueStore) -> None:
    held.fail_in_callback = True
    held.release.set()
    client = await open_transaction(server.port, "r@sink.test")
    await client.send(b"Subject: one\r\n\r\nhello\r\n.\r\n")
    reply = await client.read_reply()
    assert reply.code == 250, reply
    assert store.message(queue_id(reply.lines[-1])) is not None
    assert (await client.cmd("NOOP")).code == 250
    await client.close()


async def test_on_durable_runs_after_the_sync_and_not_for_a_failed_op(
        store: QueueStore) -> None:
    seen: list[tuple[str, bool]] = []

    def ok(txn: object) -> str:
        return "done"

    def bad(txn: object) -> str:
        raise ValueError("refused inside the transaction")

    good = store.write_soon(ok, on_durable=lambda r: seen.append((r, good.done())))
    failed = store.write_soon(bad, on_durable=lambda r: seen.append((r, True)))
    assert await good == "done"
    with pytest.raises(ValueError):
        await failed
    # Called once, with the result, before the waiter's future was resolved.
    assert seen == [("done", False)]
    assert store.stats.commits >= 1
