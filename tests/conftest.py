"""Fixtures shared by the test directories: an in-process submission server on loopback with
real TLS (`server`, over `tls`, `users` and `submitter`), as the integration and reliability
tests drive it. A test module that needs another server overrides `server` (or `users`).

Factories: `dns_server(zone)` (and `module_dns_server(zone)` for module-scoped fixtures)
starts a relay.testing.dnsserver.DnsServer on loopback and stops it at teardown;
`make_config(**sections)` is a valid Config with test defaults and the given sections merged
in; `await make_store()` is a started QueueStore on tmp_path (FakeClock unless given a clock),
closed at teardown. A module that serves one zone to all its tests overrides `dns_server`:

    @pytest.fixture
    def dns_server(dns_server: DnsServers) -> DnsServer:
        return dns_server(ZONE)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.config import Config
from relay.smtp.server import SubmissionServer
from relay.testing.factories import DnsServers, Stores, merged_config
from relay.testing.submission import RecordingSubmitter, Tls, app_users, running_server
from relay.testing.submission import fast_limits as limits
from relay.users import UserStore


@pytest.fixture(scope="module")
def tls() -> Tls:
    return Tls()


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> UserStore:
    return app_users(tmp_path_factory.mktemp("users"))


@pytest.fixture
def submitter() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture
async def server(tls: Tls, users: UserStore,
                 submitter: RecordingSubmitter) -> AsyncIterator[SubmissionServer]:
    async with running_server(tls=tls, users=users, submitter=submitter,
                              limits=limits()) as srv:
        yield srv


@pytest.fixture
def dns_server() -> Iterator[DnsServers]:
    servers = DnsServers()
    yield servers
    servers.stop_all()


@pytest.fixture(scope="module")
def module_dns_server() -> Iterator[DnsServers]:
    servers = DnsServers()
    yield servers
    servers.stop_all()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    def make(**sections: Any) -> Config:
        return merged_config(tmp_path / "state", sections)
    return make


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[Stores]:
    stores = Stores(tmp_path)
    yield stores
    await stores.close_all()
