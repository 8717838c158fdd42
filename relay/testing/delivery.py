"""Stand-ins for tests of the delivery client (relay/delivery/client.py `Sender`): a routing
target with just the attributes `Sender` reads, and a [delivery] config with short timeouts
so a test of a silent or slow server ends in seconds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from relay.config import Delivery, Duration
from relay.testing.sink import Sink

# The `make_sink` fixture (tests/integration/conftest.py): start a loopback sink.
MakeSink = Callable[..., Sink]

BODY = b"From: a@sender.test\r\nTo: r@dest.test\r\nSubject: hi\r\n\r\nhello\r\n"


@dataclass(frozen=True)
class StubTarget:
    """Stands in for relay.delivery.routing.Target."""

    host_name: str
    address: str
    port: int
    preference: int = 10


def short_delivery(timeout: float, connect: float | None = None, **over: Any) -> Delivery:
    """Delivery config with command and data timeouts of `timeout` seconds (connect: `connect`,
    default the same), other keys from `over`."""
    base = Delivery(connect_timeout=Duration(timeout if connect is None else connect),
                    command_timeout=Duration(timeout), data_timeout=Duration(timeout))
    return msgspec.structs.replace(base, **over)
