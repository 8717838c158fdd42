"""Fixtures of the reliability suite: an in-process submission server with real TLS, and a
real small disk (`tiny_disk`, a tmpfs) for the disk-full tests.

Attack tests speak raw bytes through `RawClient` (relay.testing.submission) so every
input is exactly the one in RELIABILITY.md §2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relay.smtp.server import SubmissionServer
from relay.testing.disk import mounted_tmpfs
from relay.testing.submission import RecordingSubmitter, Tls, app_users, running_server
from relay.testing.submission import fast_limits as limits
from relay.users import UserStore


@pytest.fixture(scope="session")
def tls() -> Tls:
    return Tls()


@pytest.fixture(scope="session")
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
def tiny_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB tmpfs (another size with `@pytest.mark.parametrize("tiny_disk", ["8m"],
    indirect=True)`); skipped without root, a failure under RELAY_REQUIRE_ALL=1."""
    with mounted_tmpfs(tmp_path / "tiny", getattr(request, "param", "1m")) as mnt:
        yield mnt
