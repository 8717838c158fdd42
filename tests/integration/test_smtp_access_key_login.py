"""SMTP AUTH with an SES API access key id and its SES SMTP password, over a real socket
(STARTTLS, then AUTH PLAIN/LOGIN): the session sends as the key's credential; a wrong,
other-region, revoked or orphaned key is refused exactly as an unknown user is, paying
the same scrypt; and the same as real processes: keys made by the CLI log in to a
running relay."""

from __future__ import annotations

import base64
import os
import smtplib
from pathlib import Path
from typing import Any

import pytest

from relay.sesapi.keys import ApiKeyStore
from relay.sesapi.sigv4 import smtp_password
from relay.smtp import replies as R
from relay.testing.process import RelayProcess, free_port, run_cli
from relay.testing.submission import (
    PASSWORD,
    USER,
    RawClient,
    RecordingSubmitter,
    Tls,
    app_users,
    count_scrypt,
    expect,
    fast_limits,
    running_server,
)
from relay.users import UserStore

REGION = "eu-central-1"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def tls() -> Tls:
    return Tls()


@pytest.fixture
def users(tmp_path: Path) -> UserStore:
    return app_users(tmp_path)


@pytest.fixture
def keys(tmp_path: Path) -> ApiKeyStore:
    return ApiKeyStore(tmp_path)


def key_login(keys: ApiKeyStore) -> Any:
    return lambda login, password: keys.smtp_login(login, password, REGION)


async def session(port: int, tls: Tls) -> RawClient:
    client = await RawClient.connect(port)
    assert (await client.read_reply()).code == 220
    assert (await client.cmd("EHLO client.test")).code == 250
    assert (await client.starttls(tls.client)).code == 220
    assert (await client.cmd("EHLO client.test")).code == 250
    return client


async def test_a_key_and_its_smtp_password_send_as_the_keys_credential(
        tls: Tls, users: UserStore, keys: ApiKeyStore) -> None:
    key_id, secret = keys.create(USER)
    submitter = RecordingSubmitter()
    async with running_server(tls=tls, users=users, submitter=submitter,
                              key_login=key_login(keys)) as srv:
        client = await session(srv.port, tls)
        expect(await client.cmd(f"AUTH PLAIN {plain(key_id, smtp_password(secret, REGION))}"),
               R.AUTH_OK)
        assert (await client.cmd("MAIL FROM:<app@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<r@sink.test>")).code == 250
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
        assert (await client.read_reply()).code == 250
        await client.close()
        # AUTH LOGIN too
        client = await session(srv.port, tls)
        assert (await client.cmd("AUTH LOGIN")).code == 334
        assert (await client.cmd(b64(key_id))).code == 334
        expect(await client.cmd(b64(smtp_password(secret, REGION))), R.AUTH_OK)
        await client.close()
    assert [m.auth_user for m in submitter.messages] == [USER]
    # The key is recorded with the message, as for the SES API's (ses:caller-identity).
    assert [m.tags.get("ses:caller-identity") for m in submitter.messages] == [[key_id]]


async def test_refused_keys_answer_and_cost_as_an_unknown_user_does(
        tls: Tls, users: UserStore, keys: ApiKeyStore, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    key_id, secret = keys.create(USER)
    revoked, revoked_secret = keys.create(USER)
    keys.revoke(revoked)
    orphan, orphan_secret = keys.create("gone")  # its credential does not exist
    scrypt = count_scrypt(monkeypatch)
    async with running_server(tls=tls, users=users, key_login=key_login(keys),
                              limits=fast_limits(auth_max_failures=100)) as srv:
        client = await session(srv.port, tls)
        unknown = await client.cmd(f"AUTH PLAIN {plain('nobody', 'whatever')}")
        expect(unknown, R.AUTH_INVALID)
        attempts = [
            (key_id, "not-the-password"),
            (key_id, smtp_password(secret, "us-east-1")),  # another region's password
            (key_id, secret),  # the secret itself is not the SMTP password
            (revoked, smtp_password(revoked_secret, REGION)),
            (orphan, smtp_password(orphan_secret, REGION)),
        ]
        for login, password in attempts:
            reply = await client.cmd(f"AUTH PLAIN {plain(login, password)}")
            assert (reply.code, reply.lines) == (unknown.code, unknown.lines), login
        await client.close()
    # every failure paid scrypt, the unknown user's included
    assert len(scrypt) == 1 + len(attempts)


async def test_ordinary_credentials_still_log_in_with_keys_enabled(
        tls: Tls, users: UserStore, keys: ApiKeyStore) -> None:
    keys.create(USER)
    async with running_server(tls=tls, users=users, key_login=key_login(keys)) as srv:
        client = await session(srv.port, tls)
        expect(await client.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_OK)
        await client.close()


def test_a_key_made_by_the_cli_logs_in_to_a_running_relay(tmp_path: Path) -> None:
    tls = Tls()
    cert, key = tls.write_files(tmp_path)
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nhostname = "relay.test"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        f'[api]\nregion = "{REGION}"\n'
        f'[[listener]]\naddress = "127.0.0.1:{port}"\ntls = "starttls"\nauth = "required"\n')
    assert run_cli("user", "add", "app", "--generate-password", config=config).returncode == 0
    relay = RelayProcess(config, log_dir=tmp_path / "logs",
                         env={**os.environ, "RELAY_CONFIG": ""}).start()
    try:
        # made while relay runs: the server sees the new key file and record
        made = run_cli("user", "keys", "create", "app", config=config)
        assert made.returncode == 0, made.stderr
        fields = dict(line.split(None, 1) for line in made.stdout.splitlines())
        key_id, secret = fields["AccessKeyId"], fields["SecretAccessKey"]
        assert secret not in made.stderr
        derived = run_cli("user", "keys", "smtp-password", key_id, config=config)
        assert derived.returncode == 0, derived.stderr
        password = derived.stdout.strip()
        assert password == smtp_password(secret, REGION)
        listed = run_cli("user", "keys", "list", "app", config=config)
        assert key_id in listed.stdout and secret not in listed.stdout + listed.stderr
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=tls.client)
            assert client.login(key_id, password)[0] == 235
        assert run_cli("user", "keys", "revoke", "app", key_id,
                       config=config).returncode == 0
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=tls.client)
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login(key_id, password)
        log_text = "".join(p.read_text(errors="replace")
                           for p in (tmp_path / "logs").glob("*") if p.is_file())
        assert secret not in log_text and password not in log_text
    finally:
        relay.stop()
