"""Log levels: aiosmtpd's per-command lines ("mail.log" at INFO, addresses included) are
kept out of the default (info) log and shown at debug."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from relay import logfmt


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    root, mail = logging.getLogger(), logging.getLogger("mail.log")
    saved = (root.level, list(root.handlers), mail.level)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    mail.setLevel(saved[2])


def test_aiosmtpd_command_lines_only_at_debug() -> None:
    logfmt.setup("info")
    assert logging.getLogger().getEffectiveLevel() == logging.INFO
    assert not logging.getLogger("mail.log").isEnabledFor(logging.INFO)
    assert logging.getLogger("mail.log").isEnabledFor(logging.WARNING)
    logfmt.set_level("debug")  # what a reload to log_level = "debug" does
    assert logging.getLogger("mail.log").isEnabledFor(logging.DEBUG)
    logfmt.set_level("error")
    assert not logging.getLogger("mail.log").isEnabledFor(logging.WARNING)
