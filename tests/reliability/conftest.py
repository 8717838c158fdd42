"""Fixtures of the reliability suite: an in-process submission server with real TLS.

Attack tests speak raw bytes through `RawClient` (relay.testing.submission) so every
input is exactly the one in RELIABILITY.md §2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.config import Duration, Limits
from relay.smtp.server import SubmissionServer
from relay.testing.submission import RecordingSubmitter, Tls, make_users, running_server
from relay.users import UserStore

USER, PASSWORD = "app", "s3cret-pw"


def limits(**kw: object) -> Limits:
    kw.setdefault("auth_failure_delay", Duration(0.0))
    return Limits(**kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tls() -> Tls:
    return Tls()


@pytest.fixture(scope="session")
def users(tmp_path_factory: pytest.TempPathFactory) -> UserStore:
    return make_users(tmp_path_factory.mktemp("users"), **{USER: PASSWORD})


@pytest.fixture
def submitter() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture
async def server(tls: Tls, users: UserStore,
                 submitter: RecordingSubmitter) -> AsyncIterator[SubmissionServer]:
    async with running_server(tls=tls, users=users, submitter=submitter,
                              limits=limits()) as srv:
        yield srv
