"""Disk and LMDB map full while accepting (MapFull and ENOSPC mapped to 4xx): a real small
tmpfs runs out of space; the server answers 452 4.3.1 (never 250), nothing already queued
is damaged, and acceptance resumes once space returns. Needs root for `mount -t tmpfs`;
skipped with the reason otherwise (a failure under RELAY_REQUIRE_ALL=1). The mount
is always removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from smtpkit import expect, open_data, tls_session

from relay.clock import SystemClock
from relay.queue.store import QueueStore
from relay.smtp import replies as R
from relay.testing.submission import Tls, running_server
from relay.testing.submission import fast_limits as limits
from relay.users import UserStore


@pytest.mark.parametrize("tiny_disk", ["8m"], indirect=True)
async def test_disk_full_answers_452_keeps_queue_and_resumes(
        tiny_disk: Path, tls: Tls, users: UserStore) -> None:
    filler = tiny_disk / "filler"
    with open(filler, "wb") as f:  # leave ~2 MB for the queue
        f.write(b"\0" * (6 << 20))
    store = QueueStore(tiny_disk / "queue", SystemClock(), map_size=256 << 10,
                       commit_window=0.0)
    await store.start()
    accepted: dict[str, bytes] = {}
    try:
        async with running_server(tls=tls, users=users, submitter=store,
                                  limits=limits()) as srv:
            client = await tls_session(srv.port, tls)
            full = None
            for i in range(80):  # 80 × 100 KB ≫ 2 MB: bounded
                body = b"From: u@tenant.example\r\nSubject: %d\r\n\r\n" % i \
                    + (b"%05d" % i + b"x" * 93 + b"\r\n") * 1000
                await open_data(client)
                await client.send(body + b".\r\n")
                reply = await client.read_reply(timeout=10)
                if reply.code == 250:
                    accepted[reply.lines[-1].rsplit(" ", 1)[-1]] = body
                    continue
                full = reply
                break
            assert full is not None, "the disk never filled"
            expect(full, R.STORE_FULL)
            assert accepted, "nothing fit before the disk filled"
            # Nothing queued before is damaged.
            for mid, body in accepted.items():
                stored = store.body(mid)
                assert stored is not None and stored.endswith(body), mid
            # Space returns: acceptance resumes on the same connection.
            os.unlink(filler)
            await open_data(client)
            await client.send(b"From: u@tenant.example\r\n\r\nafter\r\n.\r\n")
            expect(await client.read_reply(timeout=10), R.QUEUED)
            await client.close()
        assert store.message_count() == len(accepted) + 1
    finally:
        await store.close()
