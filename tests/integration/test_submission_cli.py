"""`relay user ...` run as a real process: exit codes, one-line errors, no plaintext on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.users import UserStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    return path


def relay(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "--config", str(config), *args],
                          input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RELAY_CONFIG": ""})


def test_user_lifecycle(config: Path, tmp_path: Path) -> None:
    users_json = tmp_path / "state" / "users.json"
    r = relay(config, "user", "add", "x", "--password-stdin", stdin="Tr0ub4dor&3-x\n")
    assert r.returncode == 0, r.stderr
    raw = users_json.read_text()
    assert "Tr0ub4dor&3-x" not in raw and "Tr0ub4dor&3-x" not in r.stdout + r.stderr
    assert json.loads(raw)["users"]["x"]["scheme"] == "scrypt"
    assert oct(users_json.stat().st_mode & 0o777) == "0o600"
    assert UserStore(users_json).verify("x", "Tr0ub4dor&3-x")

    r = relay(config, "user", "add", "x", "--password-stdin", stdin="other\n")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "already exists" in r.stderr

    r = relay(config, "user", "list", "--json")
    assert r.returncode == 0
    assert [row["name"] for row in json.loads(r.stdout)] == ["x"]

    r = relay(config, "user", "passwd", "x", "--password-stdin", stdin="n3w-pass-long-enough\n")
    assert r.returncode == 0, r.stderr
    assert UserStore(users_json).verify("x", "n3w-pass-long-enough")

    r = relay(config, "user", "remove", "x")
    assert r.returncode == 0
    assert relay(config, "user", "list").stdout.strip() == "no users"


def test_user_errors(config: Path) -> None:
    r = relay(config, "user", "remove", "ghost")
    assert (r.returncode, r.stderr.strip()) == (1, "relay: no user 'ghost'")
    r = relay(config, "user", "add", "x", "--password-stdin", stdin="")
    assert r.returncode == 1 and "no password" in r.stderr
    r = relay(config, "user", "add", "x")  # stdin is not a terminal
    assert r.returncode == 1 and "--password-stdin" in r.stderr
    r = relay(config, "user", "frob")
    assert r.returncode == 2
    r = relay(config, "user", "passwd", "ghost", "--password-stdin", stdin="pw\n")
    assert r.returncode == 1 and "no user" in r.stderr
