"""Session-path benchmarks: one SMTP transaction through a real SubmissionServer.

The client is relay.testing.submission.RawClient on a real loopback socket, kept open
across rounds (connection set-up is not in the figure): MAIL, RCPT, DATA, 2 KB body,
end-of-DATA → 250. The server uses the trusted-network plain listener (no TLS/AUTH), and
either a RecordingSubmitter (the session's own cost) or the real QueueStore (adds the
group-commit window and the synced LMDB commit: what a client waits for).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.clock import SystemClock
from relay.config import Duration, Limits, Tenants
from relay.events.log import EventLog
from relay.queue.store import QueueStore
from relay.smtp.session import Submitter
from relay.smtp.submitter import QueueSubmitter
from relay.tenants import quotastore
from relay.tenants.account import AccountGate
from relay.tenants.model import tenant_scope
from relay.tenants.quota import QuotaBook
from relay.tenants.store import RECHECK_SECONDS, TenantStore
from relay.testing.submission import RawClient, RecordingSubmitter, make_listener, running_server

BODY = (b"From: <bench@sender.test>\r\nTo: <user@bench.test>\r\nSubject: bench\r\n\r\n"
        + (b"y" * 76 + b"\r\n") * 25 + b".\r\n")


@contextlib.asynccontextmanager
async def _session(submitter: Submitter,
                   account: AccountGate | None = None) -> AsyncIterator[RawClient]:
    listener = make_listener(tls="none", auth="none", trusted_networks=["127.0.0.0/8"])
    async with running_server(tls=None, listener=listener, submitter=submitter,  # type: ignore[arg-type]
                              limits=Limits(auth_failure_delay=Duration(0.0),
                                            max_messages_per_connection=100_000),
                              account=account) as server:
        client = await RawClient.connect(server.port)
        assert (await client.read_reply()).code == 220
        assert (await client.cmd("EHLO bench.client")).code == 250
        try:
            yield client
        finally:
            await client.close()


async def _transaction(client: RawClient) -> int:
    assert (await client.cmd("MAIL FROM:<bench@sender.test>")).code == 250
    assert (await client.cmd("RCPT TO:<user@bench.test>")).code == 250
    assert (await client.cmd("DATA")).code == 354
    await client.send(BODY)
    return (await client.read_reply()).code


def _run(benchmark: Any, loop: asyncio.AbstractEventLoop, submitter: Submitter,
         account: AccountGate | None = None) -> None:
    async def enter() -> tuple[contextlib.AsyncExitStack, RawClient]:
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(_session(submitter, account))
        return stack, client

    stack, client = loop.run_until_complete(enter())
    try:
        code = benchmark(lambda: loop.run_until_complete(_transaction(client)))
        assert code == 250
    finally:
        loop.run_until_complete(stack.aclose())


def test_transaction_recording_submitter(benchmark: Any,
                                         loop: asyncio.AbstractEventLoop) -> None:
    submitter = RecordingSubmitter()
    _run(benchmark, loop, submitter)
    assert submitter.messages
    assert submitter.messages[0].body.endswith(b"\r\n")


@pytest.fixture
def queue(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> Iterator[QueueStore]:
    store = QueueStore(tmp_path / "queue", SystemClock(), map_size=1 << 28)
    loop.run_until_complete(store.start())
    yield store
    loop.run_until_complete(store.close())


def test_transaction_queue_store(benchmark: Any, loop: asyncio.AbstractEventLoop,
                                 queue: QueueStore) -> None:
    _run(benchmark, loop, queue)
    assert queue.message_count() >= 1


def test_transaction_queue_store_account_gate(benchmark: Any, loop: asyncio.AbstractEventLoop,
                                              queue: QueueStore) -> None:
    """As test_transaction_queue_store, with the account model on (the default tenant, a
    quota of 10 million a day and 100,000 a second, so the check runs and never refuses):
    the pause check at MAIL, the quota reservation at RCPT, the counts committed in the
    message's transaction. Against test_transaction_queue_store: what the checks cost."""
    clock = SystemClock()
    tenants = TenantStore(queue, clock, recheck=RECHECK_SECONDS)
    defaults = Tenants(max_24h_send=10_000_000, max_send_rate=100_000.0)
    account = AccountGate(tenants, QuotaBook(), queue, credential=lambda name: None,
                          defaults=lambda: defaults, verified=lambda t, i: False,
                          is_simulator=lambda a: False, now=clock.now)
    submitter = QueueSubmitter(queue, EventLog(queue.path.parent / "events.jsonl"),
                               _NoScheduler(), account=account)
    _run(benchmark, loop, submitter, account)
    assert queue.message_count() >= 1
    assert quotastore.sent_last_24h(queue, tenant_scope("default"), clock.now()) >= 1


class _NoScheduler:
    def wake(self) -> None:
        pass
