"""Fixtures shared by the test directories: an in-process submission server on loopback with
real TLS (`server`, over `tls`, `users` and `submitter`), as the integration and reliability
tests drive it. A test module that needs another server overrides `server` (or `users`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.smtp.server import SubmissionServer
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
