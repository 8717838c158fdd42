"""The cost of AWS Signature V4 verification per SES API request (relay.sesapi.sigv4).

`make bench` measures; under `make test` each case runs once as a smoke test
(--benchmark-disable). The request is a SES v2 SendEmail signed by botocore's own
signer; each round verifies it whole (parsing, canonical request, key chain, compare)
with the access key's secret from a real ApiKeyStore (cached after the first lookup, as
in the server). The 1 MB case adds hashing the body.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import pytest

from relay.sesapi.keys import ApiKeyStore
from relay.sesapi.sigv4 import Verified, verify

botocore = pytest.importorskip("botocore")
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

NOW = 1_790_000_000.0
SIZES = {"1KB": 1_000, "1MB": 1_000_000}


@pytest.mark.parametrize("size", list(SIZES))
def test_verify_rate(benchmark: object, tmp_path: Path, size: str) -> None:
    keys = ApiKeyStore(tmp_path)
    key_id, secret = keys.create("app")
    body = json.dumps({"FromEmailAddress": "app@example.com",
                       "Destination": {"ToAddresses": ["to@example.org"]},
                       "Content": {"Simple": {"Subject": {"Data": "hi"}, "Body": {
                           "Text": {"Data": "x" * SIZES[size]}}}}}).encode()
    request = AWSRequest(method="POST", url="http://127.0.0.1:8026/v2/email/outbound-emails",
                         data=body, headers={"Content-Type": "application/json"})
    fixed = datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
        SigV4Auth(Credentials(key_id, secret), "ses", "us-east-1").add_auth(request)
    parts = urlsplit(request.url)
    headers = [*request.headers.items(), ("Host", parts.netloc)]

    def once() -> object:
        return verify("POST", parts.path, parts.query, headers, now=NOW,
                      secret_for=keys.secret_for, region="us-east-1", body=body)

    result = benchmark(once)  # type: ignore[operator]
    assert isinstance(result, Verified) and result.key_id == key_id
