"""Damaged state at start, against a real `relay serve`: each state file the server loads,
made unusable the way crashes, bad copies and hand edits do, stops the start with exit
code 1 and one line naming the file and what is wrong, never a traceback, and never a
relay that runs on it (a corrupt users.json used to give a relay that answered every
login 535). A state dir whose files are all sound still starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.testing.process import (
    RelayNotReady,
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)

pytestmark = pytest.mark.slow

_NO_DNS = "127.0.0.1:9"  # nothing is delivered: no DNS server behind it


def _config(tmp: Path) -> Path:
    cfg = relay_config(tmp / "state", _NO_DNS, 25, [listener_config(tls="none")])
    cfg["admin"] = {"enabled": True, "address": f"127.0.0.1:{free_port()}"}
    return write_config(tmp / "relay.toml", cfg)


def _garbage_queue(state: Path) -> str:
    (state / "queue").mkdir(parents=True)
    (state / "queue" / "data.mdb").write_bytes(os.urandom(64 << 10))
    return "queue/data.mdb: not a usable queue"


def _empty_verp_key(state: Path) -> str:
    (state / "verp.key").write_bytes(b"")  # a crash between create and write
    return "verp.key: 0 bytes, expected at least 16"


def _short_verp_key(state: Path) -> str:
    (state / "verp.key").write_bytes(os.urandom(5))
    return "verp.key: 5 bytes, expected at least 16"


def _truncated_users(state: Path) -> str:
    (state / "users.json").write_text('{"version": 1, "users": {"app": {"scheme": "scr')
    return "users.json is not a valid users file"


def _users_wrong_shape(state: Path) -> str:
    (state / "users.json").write_text('{"version": 1, "users": ["app"]}')
    return "users.json is not a valid users file"


def _users_unusable_record(state: Path) -> str:
    (state / "users.json").write_text(json.dumps({"version": 1, "users": {"app": {
        "scheme": "scrypt", "n": 16384, "r": 8, "p": 1, "salt": "not base64!",
        "hash": "aGFzaA=="}}}))
    return "users.json: user 'app': salt is not base64"


def _corrupt_admin_tokens(state: Path) -> str:
    (state / "admin_tokens.json").write_bytes(b"\x00" * 100)
    return "admin_tokens.json is not a valid tokens file"


def _corrupt_api_keys(state: Path) -> str:
    (state / "api_keys.json").write_text('{"version": 1, "keys": {"AKIA')
    return "api_keys.json is not a valid API keys file"


def _api_keys_without_their_key_file(state: Path) -> str:
    from relay.sesapi.keys import ApiKeyStore

    ApiKeyStore(state).create("app")
    (state / "api_keys.key").unlink()
    return "api_keys.key is missing"


def _api_keys_under_another_key_file(state: Path) -> str:
    from relay.sesapi.keys import ApiKeyStore

    key_id, _ = ApiKeyStore(state).create("app")
    (state / "api_keys.key").write_bytes(os.urandom(32))
    return f"api_keys.json: key {key_id} cannot be decrypted"


def _corrupt_identities(state: Path) -> str:
    (state / "identities.json").write_text("{]")
    return "identities.json is not a valid identities file"


def _corrupt_dkim_state(state: Path) -> str:
    (state / "dkim" / "example.com").mkdir(parents=True)
    (state / "dkim" / "example.com" / "state.json").write_text('{"domain": ')
    return "dkim/example.com/state.json: not a valid DKIM state file"


def _garbage_dkim_key(state: Path) -> str:
    domain = state / "dkim" / "example.com"
    domain.mkdir(parents=True)
    (domain / "state.json").write_text(json.dumps({"domain": "example.com", "generations": [{
        "name": "s1", "status": "active", "created_at": 1.0,
        "keys": [{"selector": "s1", "algorithm": "rsa", "public": "AAAA"}]}]}))
    (domain / "s1.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\nnot a key\n")
    return "dkim/example.com/s1.pem: DKIM private key of selector 's1' (active): not a PEM"


def _missing_dkim_key(state: Path) -> str:
    domain = state / "dkim" / "example.com"
    domain.mkdir(parents=True)
    (domain / "state.json").write_text(json.dumps({"domain": "example.com", "generations": [{
        "name": "s2", "status": "pending", "created_at": 1.0,
        "keys": [{"selector": "s2", "algorithm": "ed25519", "public": "AAAA"}]}]}))
    return "dkim/example.com/s2.ed25519: DKIM private key of selector 's2' (pending): No such"


def _event_log_is_a_directory(state: Path) -> str:
    (state / "events.jsonl").mkdir(parents=True)
    return "events.jsonl: the event log cannot be opened: Is a directory"


DAMAGE: list[Callable[[Path], str]] = [
    _garbage_queue, _empty_verp_key, _short_verp_key, _truncated_users, _users_wrong_shape,
    _users_unusable_record, _corrupt_api_keys, _api_keys_without_their_key_file,
    _api_keys_under_another_key_file, _corrupt_admin_tokens, _corrupt_identities,
    _corrupt_dkim_state,
    _garbage_dkim_key, _missing_dkim_key, _event_log_is_a_directory]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__.lstrip("_") for d in DAMAGE])
def test_damaged_state_file_refuses_start_with_one_line(
        tmp_path: Path, damage: Callable[[Path], str]) -> None:
    config = _config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    expected = damage(state)
    relay = RelayProcess(config, log_dir=tmp_path / "logs")
    try:
        with pytest.raises(RelayNotReady):
            relay.start(timeout=20)  # returns only if relay became ready on the damage
    finally:
        relay.stop()
    assert relay.proc is not None and relay.proc.returncode == 1, relay.output()
    err = relay.stderr()
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert "cannot start: " in lines[0] and f"{state}/{expected}" in lines[0], lines[0]
    assert "relay: ready" not in relay.stdout()


def test_sound_state_of_every_kind_starts(tmp_path: Path) -> None:
    """The checks refuse only what is damaged: files written by the CLI pass them."""
    config = _config(tmp_path)
    for args, stdin in ((("user", "add", "app", "--password-stdin"), "a long password\n"),
                        (("identity", "add", "example.com"), None),
                        (("dkim", "keygen", "example.com", "--type", "both"), None),
                        (("admin", "token", "add", "ops"), None),
                        (("user", "keys", "create", "app"), None)):
        done = run_cli(*args, config=config, input=stdin)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    relay = RelayProcess(config, log_dir=tmp_path / "logs").start(timeout=20)
    assert relay.terminate() == 0, relay.output()


def test_queue_commands_on_a_damaged_queue_answer_one_line(tmp_path: Path) -> None:
    """The CLI reads the queue without a server: a garbage data.mdb is the same one line
    naming the file that `relay serve` prints, exit 1, not an LMDB traceback."""
    config = _config(tmp_path)
    expected = _garbage_queue(tmp_path / "state")
    for args in (("queue", "list"), ("queue", "show", "0123456789abcdef")):
        done = run_cli(*args, config=config)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert expected in lines[0], lines


def test_serve_logs_the_config_warnings_at_start(tmp_path: Path) -> None:
    """A setting `relay check-config` warns about (sender_authorization = "off" outside
    the development config) is also logged by `relay serve` as it starts, where an
    operator reading the journal sees it; relay still starts."""
    cfg = relay_config(tmp_path / "state", _NO_DNS, 25, [listener_config(tls="none")])
    cfg["server"]["sender_authorization"] = "off"
    config = write_config(tmp_path / "relay.toml", cfg)
    relay = RelayProcess(config, log_dir=tmp_path / "logs")
    try:
        relay.start(timeout=20)
    finally:
        relay.stop()
    assert "config: server.sender_authorization: \"off\" lets every credential send" \
        in relay.stderr(), relay.stderr()
