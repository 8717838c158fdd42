"""Factories the tests share through tests/conftest.py: DNS servers on loopback, a valid
Config with test defaults, and started queue stores. Each factory remembers what it made so
its fixture can stop or close all of it at teardown, whatever the test did in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dns.zone

from relay.clock import Clock, FakeClock
from relay.config import Config, from_dict
from relay.queue.store import QueueStore
from relay.testing.dnsserver import DEFAULT_TTL, DnsServer, ZoneData


class DnsServers:
    """`dns_server(zone)`: a started DnsServer on loopback, stopped by `stop_all()`."""

    def __init__(self) -> None:
        self.started: list[DnsServer] = []

    def __call__(self, zone: ZoneData | dns.zone.Zone | None = None, *,
                 host: str = "127.0.0.1", negative_ttl: int = DEFAULT_TTL) -> DnsServer:
        server = DnsServer(zone, host=host, negative_ttl=negative_ttl).start()
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


def config_defaults(state_dir: Path) -> dict[str, Any]:
    """The smallest valid config a test builds on: a hostname and its own state directory."""
    return {"server": {"hostname": "relay.test", "state_dir": str(state_dir)}}


def merged_config(state_dir: Path, keys: Mapping[str, Any]) -> Config:
    """`config_defaults` with `keys` merged in by section: a table's keys replace the default
    ones of that section one by one; a list (such as `listener`) replaces the whole entry."""
    raw = config_defaults(state_dir)
    for section, value in keys.items():
        base = raw.get(section)
        if isinstance(base, dict) and isinstance(value, Mapping):
            raw[section] = {**base, **value}
        else:
            raw[section] = value
    return from_dict(raw)


class Stores:
    """`await make_store()`: a started QueueStore under `root` (a FakeClock unless one is
    given), closed by `close_all()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: list[QueueStore] = []

    async def __call__(self, clock: Clock | None = None, *, name: str = "queue",
                       **options: Any) -> QueueStore:
        store = QueueStore(self.root / name, clock if clock is not None else FakeClock(),
                           **options)
        await store.start()
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        while self.opened:
            await self.opened.pop().close()
