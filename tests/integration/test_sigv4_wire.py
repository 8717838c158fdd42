"""SigV4 verification of what boto3's real `sesv2` and `ses` clients put on the wire: a
loopback HTTP server verifies each request exactly as received (raw path and query,
every header field, the body) and answers a refusal the way SES does, and the SDK
raises the error code relay chose (x-amzn-ErrorType for REST-JSON, the XML
ErrorResponse for the query protocol). The server's clock is a FakeClock set against
real time (boto3 signs with the real clock), so skew is tested without waiting."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.config import Config as BotoConfig  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

from relay.clock import FakeClock  # noqa: E402
from relay.sesapi.keys import ApiKeyStore  # noqa: E402
from relay.sesapi.sigv4 import Failure, Verified, verify  # noqa: E402

REGION = "us-east-1"


class _Server:
    def __init__(self, keys: ApiKeyStore, clock: FakeClock) -> None:
        self.keys, self.clock = keys, clock
        self.results: list[Verified | Failure] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path, _, query = self.path.partition("?")
                result = verify(self.command, path, query, list(self.headers.items()),
                                now=server.clock.now(), secret_for=server.keys.secret_for,
                                region=REGION, body=body)
                server.results.append(result)
                query_protocol = not path.startswith("/v2/")
                if isinstance(result, Verified):
                    if query_protocol:
                        self._answer(200, "text/xml", (
                            "<SendRawEmailResponse><SendRawEmailResult><MessageId>m-1"
                            "</MessageId></SendRawEmailResult></SendRawEmailResponse>"))
                    else:
                        self._answer(200, "application/json", '{"MessageId": "m-1"}')
                    return
                if query_protocol:
                    error = result.error("query")
                    self._answer(error.status, "text/xml", (
                        f"<ErrorResponse><Error><Type>Sender</Type><Code>{error.code}</Code>"
                        f"<Message>{escape(error.message)}</Message></Error>"
                        "<RequestId>r-1</RequestId></ErrorResponse>"))
                else:
                    error = result.error("json")
                    self._answer(error.status, "application/json",
                                 json.dumps({"message": error.message}),
                                 {"x-amzn-ErrorType": error.code})

            do_GET = do_POST
            do_DELETE = do_POST

            def _answer(self, status: int, kind: str, text: str,
                        extra: dict[str, str] | None = None) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"


@pytest.fixture
def keys(tmp_path: Path) -> ApiKeyStore:
    return ApiKeyStore(tmp_path)


@pytest.fixture
def server(keys: ApiKeyStore) -> Iterator[_Server]:
    srv = _Server(keys, FakeClock(time.time()))
    thread = threading.Thread(target=srv.http.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.http.shutdown()
        srv.http.server_close()
        thread.join(5)


def client(server: _Server, service: str, key_id: str, secret: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=server.url,
                        aws_access_key_id=key_id, aws_secret_access_key=secret,
                        config=BotoConfig(retries={"total_max_attempts": 1}))


def send_v2(sesv2: Any) -> Any:
    return sesv2.send_email(
        FromEmailAddress="app@example.com",
        Destination={"ToAddresses": ["to@example.org"]},
        Content={"Simple": {"Subject": {"Data": "hi ünïcode"},
                            "Body": {"Text": {"Data": "hello"}}}},
        EmailTags=[{"Name": "campaign", "Value": "spring"}])


def send_v1(ses: Any) -> Any:
    return ses.send_raw_email(RawMessage={"Data": b"From: app@example.com\r\n\r\nhello\r\n"})


def code_of(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


def test_the_real_clients_requests_verify(server: _Server, keys: ApiKeyStore) -> None:
    key_id, secret = keys.create("app")
    assert send_v2(client(server, "sesv2", key_id, secret))["MessageId"] == "m-1"
    assert send_v1(client(server, "ses", key_id, secret))["MessageId"] == "m-1"
    # a path parameter the client percent-encodes, a query string, a DELETE
    sesv2 = client(server, "sesv2", key_id, secret)
    sesv2.get_email_template(TemplateName="Mÿ Tpl/1")
    sesv2.list_email_templates(PageSize=5, NextToken="a+b/c=")
    sesv2.delete_suppressed_destination(EmailAddress="x+y@example.org")
    assert len(server.results) == 5
    assert all(isinstance(r, Verified) and r.key_id == key_id for r in server.results), \
        server.results


def test_a_wrong_secret_raises_the_signature_error_of_each_protocol(
        server: _Server, keys: ApiKeyStore) -> None:
    key_id, _ = keys.create("app")
    wrong = "x" * 40
    assert code_of(lambda: send_v2(client(server, "sesv2", key_id, wrong))) == \
        "InvalidSignatureException"
    assert code_of(lambda: send_v1(client(server, "ses", key_id, wrong))) == \
        "SignatureDoesNotMatch"


def test_an_unknown_key_raises_unrecognized_client(server: _Server) -> None:
    assert code_of(lambda: send_v2(client(server, "sesv2", "AKIA0000000000000000",
                                          "y" * 40))) == "UnrecognizedClientException"
    assert code_of(lambda: send_v1(client(server, "ses", "AKIA0000000000000000",
                                          "y" * 40))) == "InvalidClientTokenId"


def test_a_skewed_server_clock_raises_signature_expired(
        server: _Server, keys: ApiKeyStore) -> None:
    key_id, secret = keys.create("app")
    server.clock.advance(minutes=6)  # the client is now 6 minutes behind
    sesv2 = client(server, "sesv2", key_id, secret)
    with pytest.raises(ClientError) as caught:
        send_v2(sesv2)
    error = caught.value.response["Error"]
    assert error["Code"] == "InvalidSignatureException"
    assert error["Message"].startswith("Signature expired: ")
