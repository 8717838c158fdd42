"""relay's SES API driven by the Node clients applications use: nodemailer's SES
transport over `@aws-sdk/client-sesv2`, and the SDK's SendEmailCommand alone (npm, in
tests/node). Each message reaches the sink; a wrong secret and an unknown key are refused
with the error names the SDK gives for AWS's answers."""

from __future__ import annotations

import json
import subprocess
import time
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from adminkit import Admin

from relay.testing.process import run_cli
from relay.testing.require import require_path, require_program

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def relay(api_relay: Admin) -> Admin:
    return api_relay


def _key(admin: Admin) -> tuple[str, str]:
    done = run_cli("user", "keys", "create", "app", "--json", config=admin.config)
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    return made["AccessKeyId"], made["SecretAccessKey"]


def _node_send(admin: Admin, key: tuple[str, str], via: str, subject: str) -> dict[str, Any]:
    require_program("node")
    for package in ("nodemailer", "@aws-sdk/client-sesv2"):
        require_path(NODE_DIR / "node_modules" / package, "npm ci --prefix tests/node")
    args = {"endpoint": f"http://127.0.0.1:{admin.data['api_port']}", "region": REGION,
            "key": key[0], "secret": key[1], "from": "app@example.com",
            "to": "pal@ok.test", "subject": subject, "via": via}
    out = subprocess.run(["node", str(NODE_DIR / "ses_send.js"), json.dumps(args)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _arrived(admin: Admin, subject: str, timeout: float = 15) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in admin.sinks[0].messages:
            if BytesParser().parsebytes(m.data)["Subject"] == subject:
                return m.data
        time.sleep(0.05)
    raise AssertionError(f"{subject!r} never reached the sink")


@pytest.mark.parametrize("via", ["sdk", "nodemailer"])
def test_node_clients_send_through_the_ses_api(relay: Admin, via: str) -> None:
    key = _key(relay)
    subject = f"from node ({via})"
    sent = _node_send(relay, key, via, subject)
    assert sent["ok"] is True, sent
    assert sent["messageId"]
    data = _arrived(relay, subject)
    assert b"pal@ok.test" in data


@pytest.mark.parametrize(("mangle", "name"), [
    (lambda k: (k[0], k[1][:-1] + ("A" if k[1][-1] != "A" else "B")),
     "InvalidSignatureException"),
    (lambda k: ("AKIA" + "Z" * 16, k[1]), "UnrecognizedClientException"),
])
def test_node_sdk_gets_aws_error_names(relay: Admin, mangle: Any, name: str) -> None:
    refused = _node_send(relay, mangle(_key(relay)), "sdk", "never sent")
    assert refused["ok"] is False and refused["name"] == name, refused
    assert refused["status"] in (400, 403)
