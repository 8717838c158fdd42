"""Fixtures of the reliability suite: the loopback DNS server serving a test module's ZONE
(`ns`), and a real small disk (`tiny_disk`, a tmpfs) for the disk-full tests. The
in-process submission server with real TLS (`server`) is in tests/conftest.py.

Attack tests speak raw bytes through `RawClient` (relay.testing.submission) so every
input is exactly the attack's bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.testing.disk import mounted_tmpfs
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers


@pytest.fixture
def ns(request: pytest.FixtureRequest, dns_server: DnsServers) -> DnsServer:
    """relay.testing.dnsserver on loopback, answering from the test module's ZONE."""
    return dns_server(request.module.ZONE)


@pytest.fixture
def tiny_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB tmpfs (another size with `@pytest.mark.parametrize("tiny_disk", ["8m"],
    indirect=True)`); skipped without root, a failure under RELAY_REQUIRE_ALL=1."""
    with mounted_tmpfs(tmp_path / "tiny", getattr(request, "param", "1m")) as mnt:
        yield mnt
