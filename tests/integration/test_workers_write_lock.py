"""With server.workers = N every worker commits to one LMDB environment: each worker's
store must keep the write lock only for its ops and sync (QueueStore.shared_writers;
relay/queue/store.py `_run_batch_split`). A single process does not need to."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosmtplib
import pytest

from relay.app import RelayApp
from relay.config import from_dict
from relay.testing.process import free_port


@pytest.mark.parametrize("worker", [None, (0, 2), (1, 2)])
async def test_workers_share_the_write_lock_briefly_and_still_accept(
        tmp_path: Path, worker: tuple[int, int] | None) -> None:
    port = free_port()
    app = RelayApp(from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path),
                   "sender_authorization": "off"},
        "listener": [{"address": f"127.0.0.1:{port}", "tls": "none", "auth": "none",
                      "trusted_networks": ["127.0.0.0/8"]}],
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": "1s"},
        "delivery": {"mta_sts": False},
    }), worker=worker)
    await app.start()
    try:
        assert app.store.shared_writers is (worker is not None)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as smtp:
            for i in range(5):
                await smtp.sendmail("app@example.com", [f"u{i}@dest.test"],
                                    f"From: app@example.com\r\nSubject: {i}\r\n\r\nhi\r\n")
        await asyncio.sleep(0)
        assert app.store.message_count() == 5
    finally:
        await app.stop()
