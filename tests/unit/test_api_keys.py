"""SES API access keys (relay.sesapi.keys): encrypted at rest, looked up by the verifier,
reloaded when the CLI edits them, and SES SMTP passwords checked against them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.sesapi.keys import KEY_ID_RE, ApiKeyError, ApiKeyStore
from relay.sesapi.sigv4 import smtp_password


def test_a_created_key_looks_like_an_aws_key_and_its_secret_is_not_on_disk(
        tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path, FakeClock(1_800_000_000.0))
    key_id, secret = store.create("app")
    assert KEY_ID_RE.match(key_id)
    assert len(secret) == 40
    on_disk = (tmp_path / "api_keys.json").read_text()
    assert secret not in on_disk and key_id in on_disk
    record = json.loads(on_disk)["keys"][key_id]
    assert record["user"] == "app" and record["created_at"] == 1_800_000_000.0
    for name in ("api_keys.json", "api_keys.key"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    assert len((tmp_path / "api_keys.key").read_bytes()) == 32
    assert store.secret_for(key_id) == secret
    assert store.lookup(key_id) == ("app", secret)
    assert store.secret(key_id) == secret


def test_the_master_key_is_made_once_and_shared(tmp_path: Path) -> None:
    one, two = ApiKeyStore(tmp_path), ApiKeyStore(tmp_path)
    k1, s1 = one.create("app")
    master = (tmp_path / "api_keys.key").read_bytes()
    k2, s2 = two.create("other")
    assert (tmp_path / "api_keys.key").read_bytes() == master
    third = ApiKeyStore(tmp_path)
    assert third.secret_for(k1) == s1 and third.secret_for(k2) == s2


def test_list_and_revoke(tmp_path: Path) -> None:
    clock = FakeClock()
    store = ApiKeyStore(tmp_path, clock)
    a, _ = store.create("app")
    clock.advance(1)
    b, _ = store.create("app")
    c, _ = store.create("other")
    assert [k.key_id for k in store.list_keys("app")] == [a, b]
    assert {k.key_id for k in store.list_keys()} == {a, b, c}
    with pytest.raises(ApiKeyError, match="no access key"):
        store.revoke(c, user="app")  # not app's key
    assert store.revoke(a).user == "app"
    assert store.secret_for(a) is None
    with pytest.raises(ApiKeyError):
        store.revoke(a)
    assert store.revoke_user("app") == [b]
    assert [k.key_id for k in store.list_keys()] == [c]


def test_a_running_server_sees_a_revoke_by_the_cli_within_its_recheck(tmp_path: Path) -> None:
    clock = FakeClock()
    server = ApiKeyStore(tmp_path, clock, recheck=0.5)
    cli = ApiKeyStore(tmp_path)
    key_id, secret = cli.create("app")
    assert server.secret_for(key_id) == secret
    cli.revoke(key_id)
    clock.advance(0.6)
    assert server.secret_for(key_id) is None


def test_a_record_moved_to_another_key_id_or_user_does_not_decrypt(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
    key_id, _ = store.create("app")
    path = tmp_path / "api_keys.json"
    data = json.loads(path.read_text())
    record = data["keys"][key_id]
    data["keys"]["AKIAAAAAAAAAAAAAAAAA"] = record
    data["keys"][key_id] = {**record, "user": "admin"}
    path.write_text(json.dumps(data))
    fresh = ApiKeyStore(tmp_path)
    assert fresh.lookup("AKIAAAAAAAAAAAAAAAAA") is None
    assert fresh.lookup(key_id) is None


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
    key_id, _ = store.create("app")
    os.chmod(tmp_path / "api_keys.key", 0o644)
    with pytest.raises(ApiKeyError, match="0644"):
        ApiKeyStore(tmp_path).secret(key_id)


def test_the_smtp_login_with_a_key_id_and_its_derived_password(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
    key_id, secret = store.create("app")
    password = smtp_password(secret, "us-east-1")
    assert store.smtp_login(key_id, password, "us-east-1") == "app"
    assert store.smtp_login(key_id, password.encode(), "us-east-1") == "app"
    assert store.smtp_login(key_id, smtp_password(secret, "eu-west-1"), "us-east-1") is None
    assert store.smtp_login(key_id, secret, "us-east-1") is None
    assert store.smtp_login("AKIA0000000000000000", password, "us-east-1") is None
    assert store.smtp_login("app", password, "us-east-1") is None
