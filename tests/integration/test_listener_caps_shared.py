"""[limits] max_connections and max_connections_per_ip count a relay's client connections
in total, over every submission listener together (587 and 465 alike), as
config/relay.toml says: a client cannot double its share by opening connections on a
second listener. A whole in-process RelayApp with two listeners, real sockets."""

from __future__ import annotations

from pathlib import Path

from relay.app import RelayApp
from relay.config import from_dict
from relay.smtp import replies as R
from relay.testing.process import free_port
from relay.testing.submission import RawClient, expect


async def _app(tmp_path: Path, **limits: int) -> tuple[RelayApp, int, int]:
    first, second = free_port(), free_port()
    app = RelayApp(from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
        "listener": [{"address": f"127.0.0.1:{first}"}, {"address": f"127.0.0.1:{second}"}],
        "limits": limits,
    }))
    await app.start()
    return app, first, second


async def test_max_connections_holds_across_listeners(tmp_path: Path) -> None:
    app, first, second = await _app(tmp_path, max_connections=2)
    clients: list[RawClient] = []
    try:
        for port in (first, second):
            clients.append(await RawClient.connect(port))
            assert (await clients[-1].read_reply()).code == 220
        for port in (first, second):
            clients.append(await RawClient.connect(port))
            expect(await clients[-1].read_reply(), R.TOO_MANY_CONNECTIONS)
    finally:
        for c in clients:
            await c.close()
        await app.stop()


async def test_max_connections_per_ip_holds_across_listeners(tmp_path: Path) -> None:
    app, first, second = await _app(tmp_path, max_connections_per_ip=1)
    clients: list[RawClient] = []
    try:
        clients.append(await RawClient.connect(first))
        assert (await clients[-1].read_reply()).code == 220
        clients.append(await RawClient.connect(second))
        expect(await clients[-1].read_reply(), R.TOO_MANY_CONNECTIONS_FROM_IP)
        clients.append(await RawClient.connect(second, local_addr=("127.0.0.5", 0)))
        assert (await clients[-1].read_reply()).code == 220  # another client is served
    finally:
        for c in clients:
            await c.close()
        await app.stop()
