"""AUTH brute force by hanging up: a client that sends a guess and closes the connection
at once, without waiting for its 535 (and the failure delay before it), still has the
failure counted against its address; enough of them lock the address out.

Real submission server on loopback with real TLS and a real scrypt check in its thread;
the lockout window runs on the injected fake clock.
"""

from __future__ import annotations

import asyncio

from smtpkit import PASSWORD, USER, expect, plain
from test_auth_lockout_by_address import session_from

from relay.clock import FakeClock
from relay.config import Duration
from relay.smtp import replies as R
from relay.testing.submission import Tls, fast_limits, running_server
from relay.users import UserStore

ATTACKER = "127.0.0.30"


async def test_guesses_whose_client_hangs_up_before_the_answer_still_lock_the_address(
        tls: Tls, users: UserStore) -> None:
    clock = FakeClock()
    limits = fast_limits(auth_max_failures=3, auth_lockout=Duration(900.0),
                         auth_failure_delay=Duration(5.0))
    async with running_server(tls=tls, users=users, limits=limits, clock=clock) as srv:
        for i in range(3):
            client = await session_from(ATTACKER, srv.port, tls)
            await client.send(f"AUTH PLAIN {plain(USER, f'guess-{i}')}\r\n".encode())
            await client.close()  # at once: no 535, no failure delay waited out
        # The checks end in their threads after the hang-ups (bounded wait, ~10 s).
        policy = srv.context.auth_policy
        for _ in range(200):
            if policy.is_locked(ATTACKER, clock.monotonic()):
                break
            await asyncio.sleep(0.05)
        again = await session_from(ATTACKER, srv.port, tls)
        expect(await again.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_LOCKED)
        await again.close()
