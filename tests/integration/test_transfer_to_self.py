"""`relay queue transfer --to` that reaches the node itself stops with exit 2 and a line
naming the address, and moves nothing: an address of one of this node's own listeners is
refused before anything is claimed (the same address, a name for it, or any local address
of a wildcard listener); reached another way (here a TCP forwarder standing for a load
balancer or NAT), the running relay finds the transfer id's message in its own queue and
answers 550 5.4.6, and the sender gives the message back and stops."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from transferkit import fill, one_each, queue, states

from relay.app import RelayApp
from relay.config import from_dict
from relay.queue.records import State
from relay.testing.process import free_port, run_cli, write_config
from relay.testing.submission import verified_sender
from relay.testing.wait import wait_for

PASSWORD = "pw-for-app"


def test_own_listener_address_is_refused_before_anything_moves(tmp_path: Path) -> None:
    port, wild = free_port(), free_port()
    config = write_config(tmp_path / "relay.toml", {
        "server": {"hostname": "node-a.test", "state_dir": str(tmp_path / "state")},
        "listener": [{"address": f"127.0.0.1:{port}", "tls": "starttls"},
                     {"address": f"0.0.0.0:{wild}", "tls": "starttls"}]})
    ids = queue(tmp_path / "state", one_each(2))
    for to, listener in ((f"127.0.0.1:{port}", f"127.0.0.1:{port}"),
                         (f"localhost:{port}", f"127.0.0.1:{port}"),
                         (f"127.0.0.3:{wild}", f"0.0.0.0:{wild}")):
        done = run_cli("queue", "transfer", "--to", to, "--tls", "none", config=config)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"--to {to}: that is this node (it reaches this node's listener {listener})" \
            in done.stderr, done.stderr
        assert "Nothing was moved" in done.stderr and "Traceback" not in done.stderr
        assert done.stdout == ""
    assert states(tmp_path / "state") == {mid: [State.QUEUED] for mid in ids}


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_node_reached_through_a_forwarder_refuses_its_own_messages(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    verified_sender(state, PASSWORD)
    data: dict[str, Any] = {
        "server": {"hostname": "node-a.test", "state_dir": str(state)},
        "listener": [{"address": f"127.0.0.1:{port}"}],
        # Nothing listens there: the messages are deferred, for an hour.
        "delivery": {"routes": {"plain.test": f"127.0.0.2:{free_port('127.0.0.2')}"},
                     "retry_schedule": ["1h"]},
    }
    config = write_config(tmp_path / "relay.toml", data)
    ids = await fill(state, one_each(2))
    app = RelayApp(from_dict(data))
    await app.start()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(_forward(reader, up_writer), _forward(up_reader, writer))

    forwarder = await asyncio.start_server(connect, "127.0.0.9", 0)
    front = forwarder.sockets[0].getsockname()[1]
    try:
        def all_deferred() -> bool:
            return all(r.state is State.DEFERRED for m in ids for r in app.store.recipients(m))

        await wait_for("both messages deferred", all_deferred, timeout=15)
        before = {m: app.store.recipients(m) for m in ids}
        done = await asyncio.to_thread(
            run_cli, "queue", "transfer", "--to", f"127.0.0.9:{front}", "--user", "app",
            "--password-stdin", "--tls-no-verify", config=config, input=PASSWORD + "\n")
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"--to 127.0.0.9:{front}: that is this node (the peer answered 5.4.6 " \
               f"Transfer refused: {ids[0]}@node-a.test is a message of this node's own " \
               "queue (a transfer to self))" in done.stderr, done.stderr
        assert "Nothing was moved" in done.stderr and "Traceback" not in done.stderr
        # Nothing moved: the same two messages, their recipients as they were.
        assert app.store.message_count() == 2
        after = {m: app.store.recipients(m) for m in ids}
        assert [[(r.state, r.next_attempt_at) for r in after[m]] for m in ids] == \
            [[(r.state, r.next_attempt_at) for r in before[m]] for m in ids]
    finally:
        forwarder.close()
        await app.stop()
