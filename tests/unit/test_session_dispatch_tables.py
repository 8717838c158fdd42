"""SubmissionSession.__dir__ lists only the command and AUTH methods (aiosmtpd builds its
dispatch tables from dir() on every connection): the tables must be exactly the ones
the full dir() gives."""

from __future__ import annotations

import asyncio
import ssl

from relay.clock import FakeClock
from relay.config import Limits
from relay.smtp.session import ListenerContext, SubmissionSession
from relay.testing.submission import RecordingSubmitter, make_listener, make_users


class _FullDir(SubmissionSession):
    __dir__ = object.__dir__  # what aiosmtpd saw before


def _funcs(table: dict[str, object]) -> dict[str, object]:
    return {k: getattr(getattr(v, "method", v), "__func__", v) for k, v in table.items()}


async def test_dispatch_tables_match_the_full_dir() -> None:
    loop = asyncio.get_running_loop()
    ctx = ListenerContext(
        make_listener(), Limits(), "relay.test", RecordingSubmitter(), make_users(),
        FakeClock(), ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), None, [],
        lambda ip: None, lambda ip: None)
    fast, full = SubmissionSession(ctx, loop), _FullDir(ctx, loop)
    assert _funcs(fast._smtp_methods) == _funcs(full._smtp_methods)
    assert _funcs(fast._auth_methods) == _funcs(full._auth_methods)
    assert {"AUTH", "DATA", "EHLO", "MAIL", "RCPT", "STARTTLS"} <= set(fast._smtp_methods)
    assert {"LOGIN", "PLAIN"} == set(fast._auth_methods)
