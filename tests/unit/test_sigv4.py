"""AWS Signature V4 verification (relay.sesapi.sigv4) against requests signed by botocore's
own signers, and AWS's published test-suite vectors."""

from __future__ import annotations

import calendar
import json
import time
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest

botocore = pytest.importorskip("botocore")
from botocore.auth import SigV4Auth, SigV4QueryAuth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

from relay.clock import FakeClock  # noqa: E402
from relay.sesapi import sigv4  # noqa: E402
from relay.sesapi.sigv4 import Failure, Problem, Verified, smtp_password, verify  # noqa: E402

KEY_ID, SECRET = "AKIAEXAMPLEEXAMPLE01", "s3cr3t/SECRET+secret/SECRET+secret/SECRE"
REGION = "us-east-1"
START = 1_790_000_000.0
ENDPOINT = "http://127.0.0.1:8026"


def secrets_of(key_id: str) -> str | None:
    return {KEY_ID: SECRET}.get(key_id)


def signed(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None,
           *, secret: str = SECRET, key_id: str = KEY_ID, region: str = REGION,
           service: str = "ses", at: float = START, presign: int | None = None,
           token: str | None = None) -> AWSRequest:
    """A request signed by botocore at time `at` (its clock patched: botocore reads it)."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    creds = Credentials(key_id, secret, token)
    signer = (SigV4Auth(creds, service, region) if presign is None
              else SigV4QueryAuth(creds, service, region, expires=presign))
    moment = time.gmtime(at)
    import datetime
    fixed = datetime.datetime(*moment[:6])
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
        signer.add_auth(request)
    return request


def check(request: AWSRequest, *, now: float = START, region: str = REGION,
          body: bytes | None = None, **kw: Any) -> Verified | Failure:
    parts = urlsplit(request.url)
    headers = list(request.headers.items())
    if not any(k.lower() == "host" for k, _ in headers):
        headers.append(("Host", parts.netloc))
    data = request.body if body is None else body
    if isinstance(data, str):
        data = data.encode()
    return verify(request.method, parts.path or "/", parts.query, headers, now=now,
                  secret_for=secrets_of, region=region, body=data or b"", **kw)


def rest_json_send() -> AWSRequest:
    """An SES v2 SendEmail as the sesv2 client sends it (REST-JSON POST)."""
    body = json.dumps({"FromEmailAddress": "app@example.com",
                       "Destination": {"ToAddresses": ["to@example.org"]},
                       "Content": {"Simple": {"Subject": {"Data": "hi"},
                                              "Body": {"Text": {"Data": "hello"}}}}}).encode()
    return signed("POST", f"{ENDPOINT}/v2/email/outbound-emails", body,
                  {"Content-Type": "application/json"})


def query_send() -> AWSRequest:
    """An SES v1 SendRawEmail as the ses client sends it (query protocol, form POST)."""
    body = b"Action=SendRawEmail&Version=2010-12-01&RawMessage.Data=RnJvbTogYQ%3D%3D"
    return signed("POST", f"{ENDPOINT}/", body,
                  {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})


def failed(result: Verified | Failure, problem: Problem) -> Failure:
    assert isinstance(result, Failure), result
    assert result.problem is problem, result
    return result


# --- accepted -------------------------------------------------------------------------


def test_a_rest_json_post_signed_by_botocore_verifies() -> None:
    result = check(rest_json_send())
    assert result == Verified(KEY_ID, START, "ses", presigned=False)


def test_a_query_protocol_post_signed_by_botocore_verifies() -> None:
    assert isinstance(check(query_send()), Verified)


def test_a_path_with_encoded_characters_and_a_sorted_query_verify() -> None:
    request = signed("GET", f"{ENDPOINT}/v2/email/templates/My%20Template%2Fx"
                     "?b=2&a=%2F&NextToken=x%2By&PageSize=10")
    assert isinstance(check(request), Verified)


def test_the_endpoint_prefix_as_service_name_is_accepted() -> None:
    assert isinstance(check(signed("GET", f"{ENDPOINT}/v2/email/account", service="email")),
                      Verified)


def test_a_presigned_get_verifies_until_it_expires() -> None:
    request = signed("GET", f"{ENDPOINT}/?Action=GetSendQuota&Version=2010-12-01",
                     presign=600)
    result = check(request, now=START + 599)
    assert isinstance(result, Verified) and result.presigned
    expired = failed(check(request, now=START + 601), Problem.EXPIRED)
    assert expired.error("query").code == "RequestExpired"
    assert expired.error("json").code == "InvalidSignatureException"


def test_the_payload_hash_may_be_given_instead_of_the_body() -> None:
    request = rest_json_send()
    parts = urlsplit(request.url)
    body = request.body if isinstance(request.body, bytes) else b""
    result = verify("POST", parts.path, parts.query, [*request.headers.items(),
                                                      ("Host", parts.netloc)],
                    now=START, secret_for=secrets_of, region=REGION,
                    payload_sha256=sigv4.payload_hash(body))
    assert isinstance(result, Verified)


def test_a_signed_x_amz_content_sha256_of_the_body_is_accepted() -> None:
    body = b'{"a":1}'
    request = signed("POST", f"{ENDPOINT}/v2/email/outbound-emails", body,
                     {"X-Amz-Content-SHA256": sigv4.payload_hash(body)})
    assert isinstance(check(request), Verified)


def test_within_the_clock_skew_either_way_is_accepted() -> None:
    request = rest_json_send()
    assert isinstance(check(request, now=START + 299), Verified)
    assert isinstance(check(request, now=START - 299), Verified)


# --- refused --------------------------------------------------------------------------


def test_a_tampered_body_is_refused_with_the_canonical_request_in_the_message() -> None:
    result = failed(check(rest_json_send(), body=b'{"FromEmailAddress":"ceo@example.com"}'),
                    Problem.MISMATCH)
    assert result.error("json").code == "InvalidSignatureException"
    assert result.error("json").status == 403
    assert result.error("query").code == "SignatureDoesNotMatch"
    assert "The Canonical String for this request should have been" in result.message
    assert result.key_id == KEY_ID


def test_a_changed_signed_header_is_refused() -> None:
    request = rest_json_send()
    request.headers.replace_header("Content-Type", "text/plain")
    failed(check(request), Problem.MISMATCH)


def test_a_changed_path_or_query_is_refused() -> None:
    request = signed("GET", f"{ENDPOINT}/v2/email/templates?PageSize=10")
    request.url = f"{ENDPOINT}/v2/email/templates?PageSize=11"
    failed(check(request), Problem.MISMATCH)
    request.url = f"{ENDPOINT}/v2/email/identities?PageSize=10"
    failed(check(request), Problem.MISMATCH)


def test_a_wrong_secret_is_refused() -> None:
    request = signed("POST", f"{ENDPOINT}/v2/email/outbound-emails", b"{}",
                     secret="not-the-secret")
    failed(check(request), Problem.MISMATCH)


def test_an_unknown_key_is_an_unrecognized_client() -> None:
    result = failed(check(signed("GET", f"{ENDPOINT}/v2/email/account",
                                 key_id="AKIANOBODYHASTHIS000")), Problem.UNKNOWN_KEY)
    error = result.error("json")
    assert (error.status, error.code) == (403, "UnrecognizedClientException")
    assert error.message == "The security token included in the request is invalid."
    assert result.error("query").code == "InvalidClientTokenId"


def test_a_session_token_relay_never_issued_is_refused() -> None:
    request = signed("GET", f"{ENDPOINT}/v2/email/account", token="FQoGZXIvYXdzE")
    failed(check(request), Problem.UNKNOWN_KEY)


def test_a_request_signed_more_than_five_minutes_ago_is_refused_as_aws_words_it() -> None:
    clock = FakeClock(START)
    request = rest_json_send()
    clock.advance(minutes=5, seconds=1)
    result = failed(check(request, now=clock.now()), Problem.SKEW)
    error = result.error("json")
    assert (error.status, error.code) == (403, "InvalidSignatureException")
    signed_at = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(START))
    assert error.message.startswith(f"Signature expired: {signed_at} is now earlier than ")
    assert error.message.endswith(" - 5 min.)")
    assert result.error("query").code == "SignatureDoesNotMatch"


def test_a_request_signed_more_than_five_minutes_ahead_is_refused() -> None:
    clock = FakeClock(START)
    clock.advance(minutes=-5, seconds=-1)
    result = failed(check(rest_json_send(), now=clock.now()), Problem.SKEW)
    assert result.message.startswith("Signature not yet current: ")
    assert result.message.endswith(" + 5 min.)")


def test_no_signature_at_all_is_a_missing_authentication_token() -> None:
    result = failed(verify("POST", "/v2/email/outbound-emails", "",
                           [("Host", "127.0.0.1:8026")], now=START, secret_for=secrets_of,
                           region=REGION, body=b"{}"), Problem.MISSING)
    error = result.error("json")
    assert (error.status, error.code) == (403, "MissingAuthenticationTokenException")
    assert result.error("query").code == "MissingAuthenticationToken"


@pytest.mark.parametrize("drop", ["Credential", "SignedHeaders", "Signature"])
def test_an_authorization_header_missing_a_part_is_an_incomplete_signature(drop: str) -> None:
    request = rest_json_send()
    auth = request.headers["Authorization"]
    algorithm, rest = auth.split(" ", 1)
    kept = [p for p in rest.split(", ") if not p.startswith(drop + "=")]
    request.headers.replace_header("Authorization", f"{algorithm} {', '.join(kept)}")
    result = failed(check(request), Problem.INCOMPLETE)
    assert drop in result.message
    error = result.error("json")
    assert (error.status, error.code) == (400, "IncompleteSignatureException")


def test_no_date_is_an_incomplete_signature() -> None:
    request = rest_json_send()
    del request.headers["X-Amz-Date"]
    failed(check(request), Problem.INCOMPLETE)


def test_another_algorithm_is_an_incomplete_signature() -> None:
    request = rest_json_send()
    request.headers.replace_header(
        "Authorization", "AWS3-HTTPS AWSAccessKeyId=AKIA,Algorithm=HmacSHA256,Signature=x")
    failed(check(request), Problem.INCOMPLETE)


def test_a_presigned_request_missing_its_expiry_is_incomplete() -> None:
    request = signed("GET", f"{ENDPOINT}/?Action=GetSendQuota", presign=60)
    request.url = "&".join(p for p in request.url.split("&")
                           if not p.startswith("X-Amz-Expires="))
    failed(check(request), Problem.INCOMPLETE)


def test_both_forms_at_once_are_refused() -> None:
    request = signed("GET", f"{ENDPOINT}/?Action=GetSendQuota", presign=60)
    request.headers["Authorization"] = rest_json_send().headers["Authorization"]
    failed(check(request), Problem.INCOMPLETE)


def test_another_region_or_service_is_refused() -> None:
    failed(check(signed("GET", f"{ENDPOINT}/v2/email/account", region="eu-west-1")),
           Problem.MISMATCH)
    failed(check(signed("GET", f"{ENDPOINT}/v2/email/account", service="s3")),
           Problem.MISMATCH)


def test_host_must_be_signed() -> None:
    request = rest_json_send()
    auth = request.headers["Authorization"]
    request.headers.replace_header("Authorization", auth.replace(
        "SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=content-type;x-amz-date"))
    failed(check(request), Problem.INCOMPLETE)


def test_a_content_hash_header_that_is_not_the_bodys_is_refused() -> None:
    body = b'{"a":1}'
    request = signed("POST", f"{ENDPOINT}/v2/email/outbound-emails", body,
                     {"X-Amz-Content-SHA256": sigv4.payload_hash(body)})
    result = failed(check(request, body=b'{"a":2}'), Problem.MISMATCH)
    assert "x-amz-content-sha256" in result.message


def test_an_unsigned_payload_is_refused() -> None:
    request = signed("POST", f"{ENDPOINT}/v2/email/outbound-emails", b"{}",
                     {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    failed(check(request), Problem.MISMATCH)


def test_hostile_sizes_are_refused_before_any_signature_work() -> None:
    looked_up: list[str] = []

    def lookup(key_id: str) -> str | None:
        looked_up.append(key_id)
        return SECRET

    request = rest_json_send()
    parts = urlsplit(request.url)
    base = [*request.headers.items(), ("Host", parts.netloc)]
    many = base + [(f"X-Junk-{i}", "x") for i in range(sigv4.MAX_HEADERS)]
    huge = [*base, ("X-Junk", "x" * sigv4.MAX_HEADER_BYTES)]
    for headers, query in ((many, ""), (huge, ""),
                           (base, "a=1&" * (sigv4.MAX_QUERY_PARAMS + 1)),
                           (base, "a=" + "x" * sigv4.MAX_QUERY_BYTES)):
        result = verify("POST", parts.path, query, headers, now=START, secret_for=lookup,
                        region=REGION, body=b"{}")
        failed(result, Problem.INCOMPLETE)
    assert looked_up == []


def test_too_many_signed_header_names_are_refused() -> None:
    request = rest_json_send()
    names = ";".join(f"x-h{i}" for i in range(sigv4.MAX_SIGNED_HEADERS + 1))
    auth = request.headers["Authorization"]
    request.headers.replace_header("Authorization", auth.replace(
        "SignedHeaders=content-type;host;x-amz-date", f"SignedHeaders={names}"))
    failed(check(request), Problem.INCOMPLETE)


# --- AWS's published test-suite vectors -----------------------------------------------

SUITE_KEY, SUITE_SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_2015 = float(calendar.timegm((2015, 8, 30, 12, 36, 0)))
SUITE_2011 = float(calendar.timegm((2011, 9, 9, 23, 36, 0)))


def _suite(method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes,
           now: float, service: str, signature: str, signed_headers: str,
           day: str) -> Verified | Failure:
    auth = (f"AWS4-HMAC-SHA256 Credential={SUITE_KEY}/{day}/us-east-1/{service}/"
            f"aws4_request, SignedHeaders={signed_headers}, Signature={signature}")
    return verify(method, path, query, [*headers, ("Authorization", auth)], now=now,
                  secret_for={SUITE_KEY: SUITE_SECRET}.get, region="us-east-1",
                  body=body, services=(service,))


_V2015 = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")]
_V2011 = [("Host", "host.foo.com"), ("Date", "Mon, 09 Sep 2011 23:36:00 GMT")]


@pytest.mark.parametrize("name, method, path, query, headers, body, signature", [
    ("get-vanilla", "GET", "/", "", _V2015, b"",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1", _V2015,
     b"", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("post-x-www-form-urlencoded", "POST", "/", "",
     [("Content-Type", "application/x-www-form-urlencoded"), *_V2015], b"Param1=value1",
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
])
def test_the_2015_aws_test_suite(name: str, method: str, path: str, query: str,
                                 headers: list[tuple[str, str]], body: bytes,
                                 signature: str) -> None:
    names = ";".join(sorted(h.lower() for h, _ in headers))
    result = _suite(method, path, query, headers, body, SUITE_2015, "service", signature,
                    names, "20150830")
    assert isinstance(result, Verified), (name, result)
    wrong = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    failed(_suite(method, path, query, headers, body, SUITE_2015, "service", wrong, names,
                  "20150830"), Problem.MISMATCH)


@pytest.mark.parametrize("name, path, signature", [
    ("get-utf8", "/%E1%88%B4",
     "57b1eb3df3b16a8479c0097b66c0b261cfd65b829419a3f2c3d05319722490b8"),
    ("get-space", "/%20/foo",
     "2be9e587d1ee1f0fd02128724b86b4358ba3630d39f493b6e06610a19a50779e"),
])
def test_the_2011_aws_test_suite_with_a_date_header(name: str, path: str,
                                                    signature: str) -> None:
    result = _suite("GET", path, "", _V2011, b"", SUITE_2011, "host", signature,
                    "date;host", "20110909")
    assert isinstance(result, Verified), (name, result)


# --- SES SMTP passwords ---------------------------------------------------------------


@pytest.mark.parametrize("region, secret, password", [
    # terraform-provider-aws' vectors for the same documented conversion
    ("eu-central-1", "some+secret+key", "BMXhUYlu5Z3gSXVQORxlVa7XPaz91aGWdfHxvkOZdWZ2"),
    ("eu-central-1", "another+secret+key", "BBbphbrQmrKMx42d1N6+C7VINYEBGI5v9VsZeTxwskfh"),
    ("us-west-1", "some+secret+key", "BH+jbMzper5WwlwUar9E1ySBqHa9whi0GPo+sJ0mVYJj"),
    ("us-west-1", "another+secret+key", "BKVmjjMDFk/qqw8EROW99bjCS65PF8WKvK5bSr4Y6EqF"),
])
def test_the_ses_smtp_password_of_a_secret(region: str, secret: str, password: str) -> None:
    assert smtp_password(secret, region) == password


@pytest.mark.parametrize("signature", ["zz" * 32, "é" * 64, "ab", "A" * 64])
def test_a_signature_that_is_not_64_hex_digits_is_a_mismatch_not_a_crash(
        signature: str) -> None:
    request = rest_json_send()
    auth = request.headers["Authorization"]
    request.headers.replace_header("Authorization",
                                   auth.rsplit("Signature=", 1)[0] + f"Signature={signature}")
    failed(check(request), Problem.MISMATCH)
