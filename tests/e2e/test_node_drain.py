"""`relay node drain|undrain|status` on a real `relay serve`: the drain reaches the running
process (state-dir file + SIGHUP), survives a reload and a restart, and ends with undrain;
/health is public and answers 200 / 503 accordingly; new SMTP connections get 421 4.3.2."""

from __future__ import annotations

import os
import signal
import smtplib
import time
import urllib.error
import urllib.request
from pathlib import Path

from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)


def _health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def _greeting(port: int) -> tuple[int, str]:
    smtp = smtplib.SMTP(timeout=5)
    try:
        code, text = smtp.connect("127.0.0.1", port)
    finally:
        smtp.close()
    return code, text.decode()


def _until(port: int, status: int) -> None:
    deadline = time.monotonic() + 10
    while _health(port)[0] != status:
        assert time.monotonic() < deadline, f"/health never answered {status}"
        time.sleep(0.05)


def test_drain_survives_reload_and_restart_until_undrain(tmp_path: Path) -> None:
    smtp_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path / "relay.toml", {
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path / "state")},
        "listener": [listener_config("none", "none", smtp_port,
                                     trusted_networks=["127.0.0.0/8"])],
        "admin": {"enabled": True, "address": f"127.0.0.1:{admin_port}"},
    })
    stopped = run_cli("node", "drain", config=config)  # no relay yet: for its next start
    assert stopped.returncode == 0 and "no relay runs" in stopped.stdout, stopped.stdout
    assert run_cli("node", "undrain", config=config).returncode == 0
    relay = RelayProcess(config, log_dir=tmp_path / "logs").start()
    try:
        assert _health(admin_port) == (200, "ok\n")  # no token needed
        assert _greeting(smtp_port)[0] == 220
        status = run_cli("node", "status", config=config)
        assert status.stdout.startswith(f"accepting mail; relay running (pid {relay.pid})")

        drained = run_cli("node", "drain", config=config)
        assert drained.returncode == 0 and f"pid {relay.pid}" in drained.stdout
        _until(admin_port, 503)
        assert _health(admin_port) == (503, "draining\n")
        code, text = _greeting(smtp_port)
        assert (code, text.split()[0]) == (421, "4.3.2"), text

        reloads = relay.stdout().count("relay: reloaded")
        os.kill(relay.pid, signal.SIGHUP)  # a reload keeps the drain
        deadline = time.monotonic() + 10
        while relay.stdout().count("relay: reloaded") == reloads:
            assert time.monotonic() < deadline, relay.output()
            time.sleep(0.05)
        assert _health(admin_port)[0] == 503

        relay.terminate()
        relay.start()  # so does a restart
        assert _health(admin_port)[0] == 503
        assert _greeting(smtp_port)[0] == 421
        assert run_cli("node", "status", config=config).stdout.startswith("draining;")

        assert run_cli("node", "undrain", config=config).returncode == 0
        _until(admin_port, 200)
        assert _greeting(smtp_port)[0] == 220
    finally:
        relay.stop()


def test_drain_reaches_every_worker(tmp_path: Path) -> None:
    # server.workers = 2: the supervisor passes the SIGHUP on; both workers share the
    # port (SO_REUSEPORT), so every new connection, whichever worker takes it, gets 421.
    smtp_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path / "relay.toml", {
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path / "state"),
                   "workers": 2},
        "listener": [listener_config("none", "none", smtp_port,
                                     trusted_networks=["127.0.0.0/8"])],
        "admin": {"enabled": True, "address": f"127.0.0.1:{admin_port}"},
    })
    relay = RelayProcess(config, log_dir=tmp_path / "logs").start()
    try:
        assert run_cli("node", "drain", config=config).returncode == 0
        _until(admin_port, 503)
        deadline = time.monotonic() + 10
        while True:  # until both workers have read the drain
            codes = [_greeting(smtp_port)[0] for _ in range(8)]
            if codes == [421] * 8:
                break
            assert time.monotonic() < deadline, codes
            time.sleep(0.05)
    finally:
        relay.stop()


def test_a_drained_node_refuses_ses_api_sends_with_a_503_the_sdks_retry(
        tmp_path: Path) -> None:
    """The SES API stops accepting mail with the SMTP listeners: SendEmail answers 503
    ServiceUnavailable (AWS's common error, which the SDKs retry, through the load
    balancer on another node) while drained, and is accepted again after undrain."""
    import json

    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import ClientError

    api_port = free_port()
    data = relay_config(tmp_path / "state", "127.0.0.1:1", free_port(),
                        [listener_config("none", "none", trusted_networks=["127.0.0.0/8"])])
    data["api"] = {"enabled": True, "address": f"127.0.0.1:{api_port}"}
    config = write_config(tmp_path / "relay.toml", data)
    assert run_cli("user", "add", "app", "--password-stdin", config=config,
                   input="pw-123456789\n").returncode == 0
    made = run_cli("user", "keys", "create", "app", "--json", config=config)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    relay = RelayProcess(config, log_dir=tmp_path / "logs").start()
    try:
        ses = boto3.client(
            "sesv2", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{api_port}",
            aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
            config=BotoConfig(retries={"total_max_attempts": 1}, read_timeout=15))

        def send() -> str:
            return str(ses.send_email(
                FromEmailAddress="app@example.com",
                Destination={"ToAddresses": ["user@ok.test"]},
                Content={"Simple": {"Subject": {"Data": "drain"},
                                    "Body": {"Text": {"Data": "x"}}}})["MessageId"])

        assert send()
        assert run_cli("node", "drain", config=config).returncode == 0
        deadline = time.monotonic() + 10
        refused: ClientError | None = None
        while refused is None and time.monotonic() < deadline:
            try:
                send()
                time.sleep(0.05)
            except ClientError as e:
                refused = e
        assert refused is not None, "SendEmail still accepted while draining"
        assert refused.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert refused.response["Error"]["Code"] == "ServiceUnavailable"
        assert "draining" in refused.response["Error"]["Message"]
        assert run_cli("node", "undrain", config=config).returncode == 0
        deadline = time.monotonic() + 10
        while True:
            try:
                assert send()
                break
            except ClientError:
                assert time.monotonic() < deadline, "SendEmail still refused after undrain"
                time.sleep(0.05)
    finally:
        relay.stop()
