"""AUTH brute-force defence locks out the offending client address, never a user name.

Real submission server on loopback with real TLS; clients bind distinct 127.0.0.x source
addresses, so each failure is counted against the address it really came from. The
lockout window runs on the injected fake clock.
"""

from __future__ import annotations

from smtpkit import PASSWORD, USER, expect, plain

from relay.clock import FakeClock
from relay.config import Duration
from relay.smtp import replies as R
from relay.testing.submission import RawClient, Tls, fast_limits, running_server
from relay.users import UserStore

LOCKOUT = 900.0


async def session_from(source: str, port: int, tls: Tls) -> RawClient:
    """EHLO, STARTTLS, EHLO from the loopback address `source`."""
    client = await RawClient.connect(port, local_addr=(source, 0))
    assert (await client.read_reply()).code == 220
    assert (await client.cmd("EHLO client.test")).code == 250
    assert (await client.starttls(tls.client)).code == 220
    assert (await client.cmd("EHLO client.test")).code == 250
    return client


async def test_failures_for_a_user_from_other_addresses_never_lock_out_the_real_user(
        tls: Tls, users: UserStore) -> None:
    clock = FakeClock()
    limits = fast_limits(auth_max_failures=5, auth_lockout=Duration(LOCKOUT))
    async with running_server(tls=tls, users=users, limits=limits, clock=clock) as srv:
        # Two wrong passwords for the real user name from each of five strangers: ten
        # failures for the name, two per address (under the per-address limit).
        for n in range(2, 7):
            client = await session_from(f"127.0.0.{n}", srv.port, tls)
            for _ in range(2):
                expect(await client.cmd(f"AUTH PLAIN {plain(USER, 'guess')}"),
                       R.AUTH_INVALID)
            await client.close()
        # The owner, from its own address, still gets in, and can send.
        owner = await session_from("127.0.0.9", srv.port, tls)
        expect(await owner.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_OK)
        await owner.close()


async def test_the_offending_address_is_locked_until_the_lockout_ends(
        tls: Tls, users: UserStore) -> None:
    clock = FakeClock()
    limits = fast_limits(auth_max_failures=5, auth_lockout=Duration(LOCKOUT))
    async with running_server(tls=tls, users=users, limits=limits, clock=clock) as srv:
        attacker = await session_from("127.0.0.20", srv.port, tls)
        for i in range(5):
            expect(await attacker.cmd(f"AUTH PLAIN {plain(f'user{i}', 'guess')}"),
                   R.AUTH_INVALID)
        # Locked: even the right credentials get 454 from this address ...
        expect(await attacker.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_LOCKED)
        await attacker.close()
        again = await session_from("127.0.0.20", srv.port, tls)
        expect(await again.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_LOCKED)
        await again.close()
        # ... while the user itself, from another address, is not locked.
        owner = await session_from("127.0.0.21", srv.port, tls)
        expect(await owner.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_OK)
        await owner.close()
        # The lock ends with the lockout window (fake clock).
        clock.advance(LOCKOUT + 1)
        later = await session_from("127.0.0.20", srv.port, tls)
        expect(await later.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_OK)
        await later.close()
