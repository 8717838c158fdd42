"""UserStore: scrypt records, constant-work verify, atomic 0600 writes, reload on change."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.testing.submission import count_scrypt
from relay.users import UserError, UserStore, hash_password


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    return UserStore(tmp_path / "state" / "users.json", clock=FakeClock(1_800_000_000.0))


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The passwords scrypt runs on from here on (relay.users._derive, still real)."""
    return count_scrypt(monkeypatch)


def test_add_and_verify(store: UserStore) -> None:
    store.add("app", "correct horse")
    assert store.verify("app", "correct horse")
    assert store.verify("app", b"correct horse")
    assert not store.verify("app", "wrong")
    assert not store.verify("nobody", "correct horse")
    assert store.names() == ["app"]


def test_file_has_scrypt_record_no_plaintext_mode_0600(store: UserStore) -> None:
    store.add("app", "correct horse")
    raw = store.path.read_bytes()
    assert b"correct horse" not in raw
    record = json.loads(raw)["users"]["app"]
    assert record["scheme"] == "scrypt" and record["n"] >= 2**14
    assert {"r", "p", "salt", "hash"} <= record.keys()
    assert record["created_at"] == 1_800_000_000.0
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_same_password_gets_different_salts(store: UserStore) -> None:
    store.add("a", "same")
    store.add("b", "same")
    users = store.read_all()
    assert users["a"].salt != users["b"].salt and users["a"].hash != users["b"].hash


def test_passwd_and_remove(store: UserStore) -> None:
    store.add("app", "one")
    store.set_password("app", "two")
    assert not store.verify("app", "one") and store.verify("app", "two")
    store.remove("app")
    assert store.names() == [] and not store.verify("app", "two")


def test_errors(store: UserStore) -> None:
    store.add("app", "pw")
    with pytest.raises(UserError, match="already exists"):
        store.add("app", "pw")
    with pytest.raises(UserError, match="no user"):
        store.remove("ghost")
    with pytest.raises(UserError, match="no user"):
        store.set_password("ghost", "pw")
    with pytest.raises(UserError, match="empty"):
        store.add("other", "")
    with pytest.raises(UserError, match="invalid user name"):
        store.add("bad name\n", "pw")


def test_reloads_when_another_process_edits(store: UserStore, tmp_path: Path) -> None:
    assert not store.verify("late", "pw")
    other = UserStore(store.path)  # e.g. the CLI, while the server runs
    other.add("late", "pw")
    assert store.verify("late", "pw")
    other.remove("late")
    assert not store.verify("late", "pw")


def test_corrupt_file_keeps_previous_users(store: UserStore) -> None:
    store.add("app", "pw")
    assert store.verify("app", "pw")
    store.path.write_text("{not json")
    assert store.verify("app", "pw")  # keeps serving with the last good set
    with pytest.raises(UserError, match="not a valid users file"):
        store.read_all()


def test_unknown_user_does_scrypt_work(store: UserStore, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    import hashlib

    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: object, **kw: object) -> bytes:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    store.add("app", "pw")
    monkeypatch.setattr(hashlib, "scrypt", counting)
    store.verify("app", "x")
    store.verify("nobody", "x")
    assert len(calls) == 2


def test_verified_credentials_are_cached_until_the_record_changes(
        store: UserStore, scrypt_calls: list[bytes]) -> None:
    store.add("app", "correct horse")
    calls = scrypt_calls
    calls.clear()  # count the logins, not the add
    assert store.verify("app", "correct horse")
    assert store.verify("app", "correct horse")
    assert len(calls) == 1  # the second connection skips scrypt
    assert not store.verify("app", "wrong")
    assert not store.verify("app", "wrong")
    assert len(calls) == 3  # failures always pay
    store.set_password("app", "battery staple")
    assert not store.verify("app", "correct horse")
    assert store.verify("app", "battery staple")
    store.remove("app")
    assert not store.verify("app", "battery staple")


def test_logins_at_the_same_moment_pay_scrypt_once(
        store: UserStore, scrypt_calls: list[bytes]) -> None:
    """A pool of connections opening together with one credential: the first login's
    scrypt is shared; wrong passwords still pay each time and never wait on the right one."""
    import threading

    store.add("app", "correct horse")
    calls = scrypt_calls
    calls.clear()  # count the logins, not the add
    gate = threading.Barrier(8)
    results: list[bool] = []

    def login(password: str) -> None:
        gate.wait()
        results.append(store.verify("app", password))

    threads = [threading.Thread(target=login, args=("correct horse",)) for _ in range(6)]
    threads += [threading.Thread(target=login, args=(f"wrong {i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False] * 2 + [True] * 6
    assert calls.count(b"correct horse") == 1
    assert calls.count(b"wrong 0") == calls.count(b"wrong 1") == 1


def test_get_looks_at_the_file_at_most_every_recheck(tmp_path: Path) -> None:
    """The server asks get() on every message: it stats the file at most every `recheck`
    seconds; a login (verify) and refresh() (SIGHUP) always look."""
    clock = FakeClock(1_800_000_000.0)
    server = UserStore(tmp_path / "users.json", clock=clock, recheck=0.5)
    cli = UserStore(tmp_path / "users.json")
    assert server.get("app") is None
    cli.add("app", "pw", allow=["example.com"])
    assert server.get("app") is None  # within recheck: the last look stands
    clock.advance(0.6)
    rec = server.get("app")
    assert rec is not None and rec.allow == ["example.com"]
    cli.set_allow("app", ["other.org"])
    assert server.get("app").allow == ["example.com"]  # type: ignore[union-attr]
    server.refresh()
    assert server.get("app").allow == ["other.org"]  # type: ignore[union-attr]
    cli.remove("app")
    assert not server.verify("app", "pw")  # a login looks at once
    assert server.get("app") is None


def test_verify_cached_answers_only_from_the_cache(
        store: UserStore, scrypt_calls: list[bytes]) -> None:
    """The loop asks verify_cached() before handing a login to a thread: it never runs
    scrypt, says True only for a credential that verified against the current record."""
    store.add("app", "correct horse")
    calls = scrypt_calls
    calls.clear()  # count the logins, not the add
    assert not store.verify_cached("app", "correct horse")  # never verified yet
    assert store.verify("app", "correct horse")
    assert store.verify_cached("app", "correct horse")
    assert store.verify_cached("app", b"correct horse")
    assert not store.verify_cached("app", "wrong")
    assert not store.verify_cached("nobody", "correct horse")
    assert len(calls) == 1  # only verify() paid scrypt
    store.set_password("app", "battery staple")
    assert not store.verify_cached("app", "correct horse")  # the record changed
    assert not store.verify_cached("app", "battery staple")  # and is not verified yet


def test_users_file_from_before_tenants_reads_as_default_tenant(tmp_path: Path) -> None:
    """A users.json written before credentials had a tenant or a quota override."""
    record = hash_password("correct horse battery", n=2, now=5.0)
    old = {"version": 1, "users": {"legacy": {
        "scheme": "scrypt", "n": record.n, "r": record.r, "p": record.p,
        "salt": record.salt, "hash": record.hash, "created_at": 5.0, "updated_at": 5.0,
        "allow": [], "configuration_set": "", "pool": ""}}}
    (tmp_path / "users.json").write_text(json.dumps(old))
    store = UserStore(tmp_path / "users.json")
    rec = store.get("legacy")
    assert rec is not None
    assert (rec.tenant, rec.tenants, rec.max_24h_send, rec.max_send_rate) == (
        "default", [], None, None)
    assert rec.allowed_tenants == ["default"]
    assert store.verify("legacy", "correct horse battery")


def test_tenant_and_quota_override_survive_a_password_change(store: UserStore) -> None:
    store.add("platform", "correct horse battery", tenant="acme",
              tenants=["beta", "acme", "beta"])
    rec = store.get("platform")
    assert rec is not None and rec.allowed_tenants == ["acme", "beta"]
    store.set_quota("platform", 1000, 2.5)
    store.set_password("platform", "another long password")
    rec = store.get("platform")
    assert rec is not None
    assert (rec.tenant, rec.tenants, rec.max_24h_send, rec.max_send_rate) == (
        "acme", ["beta"], 1000, 2.5)
    assert store.verify("platform", "another long password")
    store.set_tenant("platform", "beta")
    assert store.tenant_map() == {"platform": ["beta"]}
    store.set_quota("platform", None, None)
    rec = store.get("platform")
    assert rec is not None and rec.max_24h_send is None and rec.max_send_rate is None
