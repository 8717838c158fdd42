"""Tenants and status records in a real LMDB spool: defaults, sandbox, pause/resume,
removal rules, the cached view and its generation, and a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.queue.store import QueueStore
from relay.tenants.model import DEFAULT_TENANT, Quota, StatusRecord
from relay.tenants.store import (
    NoSuchTenant,
    TenantError,
    TenantExists,
    TenantStore,
    parse_scope,
    set_status,
)


def _open(path: Path, clock: FakeClock, recheck: float = 0.0) -> tuple[QueueStore, TenantStore]:
    q = QueueStore(path, clock, map_size=1 << 24)
    return q, TenantStore(q, clock, recheck=recheck)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_default_tenant_exists_without_being_stored(tmp_path: Path, clock: FakeClock) -> None:
    q, ts = _open(tmp_path / "q", clock)
    try:
        default = ts.get(DEFAULT_TENANT)
        assert default is not None and not default.sandbox
        assert list(ts.tenants()) == [DEFAULT_TENANT]
        assert ts.get("nobody") is None
        assert ts.tenant_status(DEFAULT_TENANT).status == "Healthy"
        with pytest.raises(TenantExists, match="'default' already exists"):
            ts.write_now(ts.add_op(DEFAULT_TENANT))
        with pytest.raises(TenantError, match="'default' cannot be removed"):
            ts.remove_op(DEFAULT_TENANT, {})
    finally:
        q.close_sync()


def test_a_new_tenant_starts_in_the_sandbox_until_production(
        tmp_path: Path, clock: FakeClock) -> None:
    q, ts = _open(tmp_path / "q", clock)
    try:
        t = ts.write_now(ts.add_op("acme", quota=Quota(max_24h_send=500)))
        assert t.sandbox and t.created_at == clock.now() and t.quota.max_24h_send == 500
        assert ts.write_now(ts.add_op("beta", sandbox=False)).sandbox is False
        with pytest.raises(TenantExists):
            ts.write_now(ts.add_op("acme"))
        clock.advance(60)
        prod = ts.write_now(ts.production_op("acme"))
        assert not prod.sandbox and prod.production_at == clock.now()
        assert ts.get("acme") == prod
        with pytest.raises(NoSuchTenant):
            ts.write_now(ts.production_op("ghost"))
    finally:
        q.close_sync()


@pytest.mark.parametrize(("name", "m24", "rate", "scope", "expected"), [
    ("bad name", None, None, "account", "tenant name 'bad name'"),
    ("x" * 65, None, None, "account", "expected 1-64"),
    ("ok", -1, None, "account", "max_24h_send: expected a whole number >= 0"),
    ("ok", None, float("inf"), "account", "max_send_rate: expected a number >= 0"),
    ("ok", None, None, "global", "suppression_scope: expected one of account, tenant"),
])
def test_bad_input_names_the_key_the_value_and_what_was_expected(
        tmp_path: Path, clock: FakeClock, name: str, m24: int | None, rate: float | None,
        scope: str, expected: str) -> None:
    q, ts = _open(tmp_path / "q", clock)
    try:
        with pytest.raises(TenantError, match=expected):
            ts.add_op(name, quota=Quota(m24, rate), suppression_scope=scope)
    finally:
        q.close_sync()


def test_remove_is_refused_while_credentials_belong_to_the_tenant(
        tmp_path: Path, clock: FakeClock) -> None:
    q, ts = _open(tmp_path / "q", clock)
    try:
        ts.write_now(ts.add_op("acme"))
        ts.write_now(ts.pause_op("tenant:acme", who="ops"))
        creds = {"alice": ["acme"], "platform": ["default", "acme"], "bob": ["default"]}
        with pytest.raises(TenantError, match="still has credentials: alice, platform"):
            ts.remove_op("acme", creds)
        ts.write_now(ts.remove_op("acme", {"bob": ["default"]}))
        assert ts.get("acme") is None
        assert "tenant:acme" not in ts.statuses()  # its status went with it
        with pytest.raises(NoSuchTenant):
            ts.write_now(ts.remove_op("acme", {}))
    finally:
        q.close_sync()


def test_pause_and_resume_record_who_when_and_a_fresh_start(
        tmp_path: Path, clock: FakeClock) -> None:
    q, ts = _open(tmp_path / "q", clock)
    try:
        ts.write_now(ts.add_op("acme"))
        paused = ts.write_now(ts.pause_op("tenant:acme", who="ops", reason="list cleanup"))
        assert (paused.status, paused.automatic, paused.changed_by, paused.reason,
                paused.changed_at) == ("Paused", False, "ops", "list cleanup", clock.now())
        assert ts.paused("acme") == paused
        assert ts.paused("default") is None
        clock.advance(3600)
        resumed = ts.write_now(ts.resume_op("tenant:acme", who="lead"))
        assert resumed.status == "Healthy" and resumed.changed_by == "lead"
        assert resumed.last_fresh_start == clock.now() == resumed.changed_at
        assert ts.paused("acme") is None
        # A configuration set's scope (sets live in the config, so any name is taken).
        ts.write_now(ts.pause_op("configuration-set:news", who="ops"))
        assert ts.paused("default", "news") is not None
        assert ts.paused("default", "other") is None
        with pytest.raises(NoSuchTenant):
            ts.write_now(ts.pause_op("tenant:ghost", who="ops"))
    finally:
        q.close_sync()


@pytest.mark.parametrize("scope", ["acme", "tenant:", "tenant:a b", "cs:x",
                                   "configuration-set:", "configuration-set: x"])
def test_scope_syntax(scope: str) -> None:
    with pytest.raises(TenantError, match="expected \"tenant:NAME\""):
        parse_scope(scope)


def test_automatic_status_commits_inside_another_write(tmp_path: Path,
                                                       clock: FakeClock) -> None:
    q, ts = _open(tmp_path / "q", clock)
    try:
        ts.write_now(ts.add_op("acme"))
        rec = StatusRecord(status="UnderReview", reason="bounce rate 6%", automatic=True,
                           changed_at=clock.now(), bounce_rate=0.06, volume=1000)
        op = set_status(q.dbs, "tenant:acme", rec)

        def both(txn: object) -> str:
            op(txn)
            return "other work in the same transaction"
        q.write_now(both)
        ts.invalidate()
        assert ts.tenant_status("acme") == rec
    finally:
        q.close_sync()


def test_another_process_edit_shows_after_recheck(tmp_path: Path, clock: FakeClock) -> None:
    """The server's view (recheck 0.5 s) sees another writer's change (here another
    TenantStore on the spool; tests/integration/test_tenant_cli.py runs the real CLI
    process) only through the generation, within recheck."""
    q, server = _open(tmp_path / "q", clock, recheck=0.5)
    cli = TenantStore(q, clock)
    try:
        assert server.get("acme") is None
        cli.write_now(cli.add_op("acme"))
        assert server.get("acme") is None  # within recheck: the dict, no LMDB read
        clock.advance(0.5)
        assert server.get("acme") is not None
        cli.write_now(cli.pause_op("tenant:acme", who="ops"))
        clock.advance(0.6)
        assert server.paused("acme") is not None
    finally:
        q.close_sync()


def test_restart_keeps_tenants_and_status(tmp_path: Path, clock: FakeClock) -> None:
    q, ts = _open(tmp_path / "q", clock)
    ts.write_now(ts.add_op("acme", quota=Quota(100, 2.5), suppression_scope="tenant"))
    ts.write_now(ts.pause_op("tenant:acme", who="ops", reason="why"))
    before = (ts.get("acme"), ts.tenant_status("acme"))
    q.close_sync()
    q, ts = _open(tmp_path / "q", clock)
    try:
        assert (ts.get("acme"), ts.tenant_status("acme")) == before
        assert before[0] is not None and before[0].suppression_scope == "tenant"
    finally:
        q.close_sync()


async def test_server_writes_through_the_group_commit(tmp_path: Path,
                                                      clock: FakeClock) -> None:
    q, ts = _open(tmp_path / "q", clock, recheck=0.5)
    await q.start()
    try:
        await ts.write(ts.add_op("acme"))
        assert ts.get("acme") is not None  # its own write shows at once
        with pytest.raises(TenantExists):
            await ts.write(ts.add_op("acme"))
    finally:
        await q.close()


def test_a_spool_from_before_tenants_opens_with_them(tmp_path: Path, clock: FakeClock,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool made before the "tenants" and "status" sub-databases existed."""
    old = tuple(d for d in QueueStore.DBS if d not in ("tenants", "status"))
    with monkeypatch.context() as m:
        m.setattr(QueueStore, "DBS", old)
        q = QueueStore(tmp_path / "q", clock, map_size=1 << 24)
        q.write_now(lambda txn: txn.put(b"k", b"v", db=q.named_db("warmup")))
        q.close_sync()
    q, ts = _open(tmp_path / "q", clock)
    try:
        assert list(ts.tenants()) == ["default"]
        ts.write_now(ts.add_op("acme"))
        assert ts.get("acme") is not None
        assert q.read_db("warmup") == [(b"k", b"v")]
    finally:
        q.close_sync()
