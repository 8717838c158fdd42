"""relay's SES API driven by the AWS CLI (`aws sesv2` and `aws ses`, the test extra
`awscli`) with nothing but an endpoint URL and a key: a v2 and a v1 send reach the sink,
`get-account` answers the quota, and a wrong secret is refused with the error the CLI
names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from email.parser import BytesParser
from pathlib import Path

import pytest
from adminkit import Admin

from relay.testing.process import run_cli
from relay.testing.require import require_path

AWS = Path(sys.executable).parent / "aws"


@pytest.fixture(scope="module")
def relay(api_relay: Admin) -> Admin:
    return api_relay


@pytest.fixture(scope="module")
def key(relay: Admin) -> tuple[str, str]:
    done = run_cli("user", "keys", "create", "app", "--json", config=relay.config)
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    return made["AccessKeyId"], made["SecretAccessKey"]


def aws(relay: Admin, key: tuple[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    require_path(AWS, "pip install awscli (the test extra)")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1],
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_MAX_ATTEMPTS": "1", "AWS_PAGER": ""}
    return subprocess.run(
        [str(AWS), *args, "--endpoint-url", f"http://127.0.0.1:{relay.data['api_port']}",
         "--output", "json"], env=env, capture_output=True, text=True, timeout=60,
        check=False)


def arrived(relay: Admin, subject: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(BytesParser().parsebytes(m.data)["Subject"] == subject
               for m in relay.sinks[0].messages):
            return True
        time.sleep(0.05)
    return False


def test_aws_sesv2_send_email_and_get_account(relay: Admin, key: tuple[str, str]) -> None:
    sent = aws(relay, key, "sesv2", "send-email", "--from-email-address", "app@example.com",
               "--destination", "ToAddresses=pal@ok.test",
               "--content", "Simple={Subject={Data=from the aws cli},Body={Text={Data=hi}}}")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["MessageId"]
    assert arrived(relay, "from the aws cli")
    account = aws(relay, key, "sesv2", "get-account")
    assert account.returncode == 0, account.stderr
    assert "SendQuota" in json.loads(account.stdout)


def test_aws_ses_v1_send_email(relay: Admin, key: tuple[str, str]) -> None:
    sent = aws(relay, key, "ses", "send-email", "--from", "app@example.com",
               "--destination", "ToAddresses=pal@ok.test",
               "--message", "Subject={Data=v1 from the aws cli},Body={Text={Data=hi}}")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["MessageId"]
    assert arrived(relay, "v1 from the aws cli")


def test_aws_cli_wrong_secret_is_refused(relay: Admin, key: tuple[str, str]) -> None:
    wrong = (key[0], key[1][:-1] + ("A" if key[1][-1] != "A" else "B"))
    refused = aws(relay, wrong, "sesv2", "get-account")
    assert refused.returncode != 0
    assert "InvalidSignatureException" in refused.stderr, refused.stderr
