"""Quota counters in a real LMDB spool: written inside the accepting message's own write
transaction, read back after a restart into the same SentLast24Hours, pruned past 24 h."""

from __future__ import annotations

from pathlib import Path

from relay.clock import FakeClock
from relay.queue.ops import NewMessage
from relay.queue.store import QueueStore
from relay.tenants import quotastore
from relay.tenants.model import tenant_scope
from relay.tenants.quota import Cap, Limits, QuotaBook, Reservation, credential_scope
from relay.tenants.refusals import DAILY_QUOTA_EXCEEDED

T0 = 1_790_035_200.0
DAY = 86400


def _msg(n: int) -> NewMessage:
    return NewMessage(sender="s@sender.test", recipients=[f"r{i}@dest.test" for i in range(n)],
                      body=b"Subject: q\r\n\r\nhi\r\n")


def _reserve(book: QuotaBook, n: int, now: float, limits: Limits) -> list[Reservation]:
    out = []
    for _ in range(n):
        r = book.reserve("acme", "u", limits, now)
        assert isinstance(r, Reservation), r
        out.append(r)
    return out


async def test_counts_commit_with_the_message_and_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    limits = Limits(Cap(10, 0), Cap(8, 0))
    store = QueueStore(tmp_path / "q", clock)
    await store.start()
    book = QuotaBook()
    first = _reserve(book, 3, clock.now(), limits)
    # The counts are written by the message's own transaction (submit_record's `also`).
    op = quotastore.commit_op(store, first)
    await store.submit_record(_msg(3), also=lambda txn, rec: op(txn))
    for r in first:
        r.commit()
    clock.advance(3600.5)
    second = _reserve(book, 4, clock.now(), limits)
    op2 = quotastore.commit_op(store, second)
    await store.submit_record(_msg(4), also=lambda txn, rec: op2(txn))
    for r in second:
        r.commit()
    # A reservation never committed (the client disconnected) is not stored.
    _reserve(book, 1, clock.now(), limits)[0].release()
    before = {s: book.sent_last_24h(s, clock.now())
              for s in (tenant_scope("acme"), credential_scope("u"))}
    assert before == {tenant_scope("acme"): 7, credential_scope("u"): 7}
    await store.close()

    reopened = QueueStore(tmp_path / "q", clock)
    await reopened.start()
    fresh = QuotaBook()
    quotastore.load(reopened, fresh, clock.now())
    assert {s: fresh.sent_last_24h(s, clock.now()) for s in before} == before
    assert quotastore.sent_last_24h(reopened, tenant_scope("acme"), clock.now()) == 7
    # The credential's 8th is its last one, also after the restart.
    _reserve(fresh, 1, clock.now(), limits)
    assert fresh.reserve("acme", "u", limits, clock.now()) == DAILY_QUOTA_EXCEEDED
    # 24 h after the first message only the second is left, in memory and on disk.
    clock.set(T0 + DAY)
    assert fresh.sent_last_24h(tenant_scope("acme"), clock.now()) == 5
    assert quotastore.sent_last_24h(reopened, tenant_scope("acme"), clock.now()) == 4
    await reopened.close()


async def test_several_commits_to_one_second_add_up(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = QueueStore(tmp_path / "q", clock)
    limits = Limits(Cap(0, 0))
    book = QuotaBook()
    for _ in range(3):  # as two processes on one spool would: each adds to what is stored
        store.write_now(quotastore.commit_op(store, _reserve(book, 2, T0, limits)))
    assert quotastore.stored_counts(store, T0) == [(tenant_scope("acme"), int(T0), 6)]
    store.close_sync()


async def test_prune_deletes_only_what_left_the_window(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", FakeClock(T0))
    book = QuotaBook()
    for scope_tenant in ("a", "ab", "b"):
        for i in range(5):
            r = book.reserve(scope_tenant, "u", Limits(Cap(0, 0)), T0 + i * 3600)
            assert isinstance(r, Reservation)
            store.write_now(quotastore.commit_op(store, [r]))
    now = T0 + DAY + 2 * 3600  # seconds 0, 1 h and 2 h have left the window
    assert store.write_now(quotastore.prune_op(store, now, limit=4)) == 4
    assert store.write_now(quotastore.prune_op(store, now)) == 5
    assert store.write_now(quotastore.prune_op(store, now)) == 0
    left = store.read_db("quota")
    assert len(left) == 6
    assert {quotastore.parse_key(k) for k, _ in left} == {
        (tenant_scope(t), int(T0) + h * 3600) for t in ("a", "ab", "b") for h in (3, 4)}
    store.close_sync()


def test_key_layout_keeps_a_scopes_keys_together_in_time_order() -> None:
    k = quotastore.key("tenant:a", 1)
    assert k == b"tenant:a\x00" + (1).to_bytes(8, "big")
    assert quotastore.parse_key(k) == ("tenant:a", 1)
    assert quotastore.key("tenant:a", 2**40) < quotastore.key("tenant:ab", 0)


async def test_a_spool_from_before_gains_the_new_sub_databases(tmp_path: Path) -> None:
    class OldStore(QueueStore):
        DBS = tuple(d for d in QueueStore.DBS if d not in ("quota", "reputation"))

    clock = FakeClock(T0)
    old = OldStore(tmp_path / "q", clock)
    await old.start()
    mid = await old.submit(_msg(1))
    await old.close()
    store = QueueStore(tmp_path / "q", clock)
    assert store.message(mid) is not None
    book = QuotaBook()
    r = book.reserve("acme", "u", Limits(Cap(0, 0)), T0)
    assert isinstance(r, Reservation)
    store.write_now(quotastore.commit_op(store, [r]))
    assert quotastore.sent_last_24h(store, tenant_scope("acme"), T0) == 1
    store.close_sync()
