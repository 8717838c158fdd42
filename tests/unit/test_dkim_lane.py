"""The DKIM signing lane: private-key operations on its own threads, results posted back
to the loop in batches; real keys, real signatures (verified with dkimpy)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import dkim
import pytest

from relay.dkim.keys import KeyStore
from relay.dkim.lane import SigningLane
from relay.dkim.sign import Signer, plan_signatures

DOMAIN = "example.com"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore(tmp_path_factory.mktemp("dkim"))
    ks.keygen(DOMAIN, "s1", "both")
    return ks


def message(i: int) -> bytes:
    return (f"From: a@{DOMAIN}\r\nTo: b@example.net\r\nSubject: lane {i}\r\n"
            f"Message-ID: <{i}@{DOMAIN}>\r\n\r\nbody {i}\r\n").encode()


def verifies(msg: bytes, store: KeyStore) -> bool:
    state = store.get(DOMAIN)
    assert state is not None
    records = {f"{k.selector}._domainkey.{DOMAIN}": k.record
               for g in state.generations for k in g.keys}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        rec = records.get(name.decode().rstrip(".").lower())
        return rec.encode() if rec is not None else None

    return all(dkim.DKIM(msg).verify(idx=i, dnsfunc=dnsfunc) for i in range(2))


class Gated:
    """A plan that waits for `gate` before signing: the lane's queue fills meanwhile."""

    def __init__(self, gate: threading.Event, inner: object) -> None:
        self.gate, self.inner = gate, inner
        self.entered = threading.Event()

    def private_operations(self) -> list[bytes]:
        self.entered.set()
        assert self.gate.wait(10)
        return self.inner.private_operations()  # type: ignore[attr-defined,no-any-return]


class Broken:
    def private_operations(self) -> list[bytes]:
        raise ValueError("key unusable")


async def test_signatures_from_the_lane_verify(store: KeyStore, tmp_path: Path) -> None:
    lane = SigningLane(threads=2)
    try:
        signer = Signer(store, lane=lane)
        state = store.get(DOMAIN)
        assert state is not None and state.active is not None
        msgs = [message(i) for i in range(12)]
        sigs = await asyncio.gather(*(signer._compute_split(f"{DOMAIN}/{state.active.name}", m,
                                                            state) for m in msgs))
        for msg, sig in zip(msgs, sigs, strict=True):
            assert verifies(sig + msg, store)
        assert signer.signed == 12
    finally:
        lane.close()


async def test_waiting_plans_are_taken_and_posted_back_together(store: KeyStore) -> None:
    """20 plans queued while the only thread is busy: it takes them 8 at a time, so the
    loop is woken a handful of times, not once per signature."""
    state = store.get(DOMAIN)
    assert state is not None and state.active is not None
    keys = [(k, store.private_key(DOMAIN, k)) for k in state.active.keys]
    lane = SigningLane(threads=1, batch=8)
    gate = threading.Event()
    try:
        gated = Gated(gate, plan_signatures(message(0), DOMAIN, keys))
        first = asyncio.ensure_future(lane.run(gated))
        assert await asyncio.to_thread(gated.entered.wait, 10)  # the thread is busy
        plans = [plan_signatures(message(i), DOMAIN, keys) for i in range(1, 21)]
        rest = [asyncio.ensure_future(lane.run(p)) for p in plans]
        await asyncio.sleep(0)
        gate.set()
        results = [await first, *await asyncio.gather(*rest)]
        assert [len(r) for r in results] == [2] * 21
        for i, (plan, raw) in enumerate(zip(plans, results[1:], strict=True), start=1):
            assert verifies(plan.assemble(raw) + message(i), store)
        assert lane.batches == 4  # the gated one, then 8 + 8 + 4
    finally:
        lane.close()


async def test_a_failing_plan_fails_only_its_waiter(store: KeyStore) -> None:
    state = store.get(DOMAIN)
    assert state is not None and state.active is not None
    keys = [(k, store.private_key(DOMAIN, k)) for k in state.active.keys]
    lane = SigningLane(threads=1)
    gate = threading.Event()
    try:
        good = plan_signatures(message(1), DOMAIN, keys)
        waiting = [asyncio.ensure_future(lane.run(Gated(gate, good))),
                   asyncio.ensure_future(lane.run(Broken())),
                   asyncio.ensure_future(lane.run(good))]
        await asyncio.sleep(0)
        waiting[2].cancel()  # a waiter that gave up does not break the batch it is in
        gate.set()
        assert len(await waiting[0]) == 2
        with pytest.raises(ValueError, match="key unusable"):
            await waiting[1]
        with pytest.raises(asyncio.CancelledError):
            await waiting[2]
        assert len(await lane.run(good)) == 2  # the lane goes on
    finally:
        lane.close()


async def test_closed_lane_refuses_and_its_threads_end(store: KeyStore) -> None:
    lane = SigningLane(threads=2)
    state = store.get(DOMAIN)
    assert state is not None and state.active is not None
    keys = [(k, store.private_key(DOMAIN, k)) for k in state.active.keys]
    await lane.run(plan_signatures(message(1), DOMAIN, keys))
    threads = list(lane._threads)
    lane.close()
    assert threads and not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError, match="closed"):
        await lane.run(plan_signatures(message(2), DOMAIN, keys))


def test_a_lane_needs_a_thread() -> None:
    with pytest.raises(ValueError):
        SigningLane(threads=0)


def test_a_forked_child_signs_on_threads_of_its_own(store: KeyStore) -> None:
    """The lane's threads are not copied by fork: the child starts its own."""
    import os

    state = store.get(DOMAIN)
    assert state is not None and state.active is not None
    keys = [(k, store.private_key(DOMAIN, k)) for k in state.active.keys]
    lane = SigningLane(threads=1)
    try:
        assert len(asyncio.run(lane.run(plan_signatures(message(1), DOMAIN, keys)))) == 2
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if it signed within the bound
            code = 1
            try:
                async def bounded() -> list[bytes]:
                    return await asyncio.wait_for(
                        lane.run(plan_signatures(message(2), DOMAIN, keys)), 10)
                code = 0 if len(asyncio.run(bounded())) == 2 else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        lane.close()
