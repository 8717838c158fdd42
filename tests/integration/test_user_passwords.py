"""Passwords an operator sets with `relay user add|passwd`, run as real processes: a short
one is refused with a clear one-line error (and nothing is stored), `--generate-password`
makes one and prints it once, alone on stdout, and a credential made or reset that way logs
in to a real relay over STARTTLS (the lost development password is recovered this way,
without touching the queue)."""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

from relay.testing.process import RelayProcess, free_port, run_cli
from relay.testing.submission import Tls
from relay.users import UserStore

MIN_NEW_PASSWORD_LENGTH = 12  # the documented minimum for a password an operator sets


def _config(tmp_path: Path, port: int = 0, cert: Path | None = None,
            key: Path | None = None) -> Path:
    path = tmp_path / "relay.toml"
    text = f'[server]\nhostname = "relay.test"\nstate_dir = "{tmp_path / "state"}"\n'
    if port:
        text += (f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
                 f'[[listener]]\naddress = "127.0.0.1:{port}"\ntls = "starttls"\n'
                 'auth = "required"\n')
    path.write_text(text)
    return path


def test_a_password_shorter_than_the_minimum_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    short = "x" * (MIN_NEW_PASSWORD_LENGTH - 1)
    r = run_cli("user", "add", "app", "--password-stdin", config=config, input=short + "\n")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert f"at least {MIN_NEW_PASSWORD_LENGTH}" in r.stderr
    assert "--generate-password" in r.stderr and short not in r.stderr
    assert UserStore(tmp_path / "state" / "users.json").get("app") is None
    one = run_cli("user", "add", "app", "--password-stdin", config=config, input="p\n")
    assert one.returncode == 1 and "too short: 1 characters" in one.stderr

    exact = "y" * MIN_NEW_PASSWORD_LENGTH
    r = run_cli("user", "add", "app", "--password-stdin", config=config, input=exact + "\n")
    assert r.returncode == 0, r.stderr
    r = run_cli("user", "passwd", "app", "--password-stdin", config=config, input="short\n")
    assert r.returncode == 1 and f"at least {MIN_NEW_PASSWORD_LENGTH}" in r.stderr
    assert UserStore(tmp_path / "state" / "users.json").verify("app", exact)


def test_generate_password_prints_it_once_alone_on_stdout(tmp_path: Path) -> None:
    config = _config(tmp_path)
    r = run_cli("user", "add", "app", "--generate-password", config=config)
    assert r.returncode == 0, r.stderr
    password = r.stdout.strip()
    assert r.stdout == password + "\n" and len(password) >= 24
    assert "added" in r.stderr and password not in r.stderr
    users = tmp_path / "state" / "users.json"
    assert password not in users.read_text()
    assert UserStore(users).verify("app", password)
    listed = run_cli("user", "list", config=config)
    assert password not in listed.stdout + listed.stderr

    again = run_cli("user", "passwd", "app", "--generate-password", config=config)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() != password
    assert UserStore(users).verify("app", again.stdout.strip())
    assert not UserStore(users).verify("app", password)

    both = run_cli("user", "add", "ops", "--generate-password", "--password-stdin",
                   config=config, input="whatever-long-enough\n")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_a_lost_password_is_reset_and_works_without_touching_the_queue(
        tmp_path: Path) -> None:
    tls = Tls()
    cert, key = tls.write_files(tmp_path)
    port = free_port()
    config = _config(tmp_path, port, cert, key)
    assert run_cli("user", "add", "dev", "--generate-password", config=config).returncode == 0
    relay = RelayProcess(config, log_dir=tmp_path / "logs",
                         env={**os.environ, "RELAY_CONFIG": ""}).start()
    try:
        queue = tmp_path / "state" / "queue" / "data.mdb"
        assert queue.exists()
        # The password was lost: reset it while relay runs; relay re-reads users.json.
        reset = run_cli("user", "passwd", "dev", "--generate-password", config=config)
        assert reset.returncode == 0, reset.stderr
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=tls.client)
            code, _ = client.login("dev", reset.stdout.strip())
            assert code == 235
        assert queue.exists() and relay.running
    finally:
        relay.stop()
