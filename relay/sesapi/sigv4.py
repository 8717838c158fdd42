"""AWS Signature Version 4: verify a request as AWS does, and derive SES SMTP passwords.

`verify()` checks both forms a client signs with: the Authorization header
("AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…" with X-Amz-Date or Date)
and the presigned query (X-Amz-Algorithm, X-Amz-Credential, X-Amz-Date, X-Amz-Expires,
X-Amz-SignedHeaders, X-Amz-Signature). The canonical request is built as AWS defines it
for every service but S3 (and as botocore signs): the path as received, dot segments
and empty segments removed, URI-encoded once more; the query decoded and re-encoded
(RFC 3986 unreserved characters kept), sorted by name then value; each signed header
lower-cased, its values trimmed, runs of spaces made one, repeats joined with ",";
the payload's SHA-256 as computed here (an x-amz-content-sha256 header must equal it).

Before any HMAC work, bounded parsing: at most MAX_HEADERS header fields and
MAX_HEADER_BYTES of them, MAX_QUERY_BYTES and MAX_QUERY_PARAMS of query, MAX_PATH_BYTES
of path, MAX_SIGNED_HEADERS signed names. The date must be within MAX_SKEW (5 minutes)
of `now` either way (a replay outside it is refused); a presigned request until its
X-Amz-Expires. Signatures are compared with hmac.compare_digest.

A refusal is a `Failure` of one `Problem`; `Failure.error("json" | "query")` gives the
HTTP status, AWS error code and message a REST-JSON (SES v2) or query (SES v1) client
expects: the JSON services answer InvalidSignatureException / UnrecognizedClientException
/ MissingAuthenticationTokenException / IncompleteSignatureException, the query services
SignatureDoesNotMatch / InvalidClientTokenId / MissingAuthenticationToken /
IncompleteSignature (and RequestExpired for a presigned request past its expiry).

Must not: import asyncio or sockets, read files or the clock (`now` is passed in).
"""

from __future__ import annotations

import base64
import calendar
import enum
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import Literal
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
# The names SES clients sign for: botocore's ses and sesv2 models say signingName "ses";
# "email" is SES's endpoint prefix, which some hand-rolled signers use instead.
SERVICES = ("ses", "email")
MAX_SKEW = 300.0  # seconds either way, as AWS
MAX_EXPIRES = 7 * 86400  # the longest X-Amz-Expires AWS accepts
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Bounds on the work done before a signature is checked (hostile input).
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
MAX_QUERY_BYTES = 64 * 1024
MAX_QUERY_PARAMS = 1000
MAX_PATH_BYTES = 8 * 1024
MAX_SIGNED_HEADERS = 64
MAX_AUTHORIZATION_BYTES = 8 * 1024

_MISMATCH_TEXT = ("The request signature we calculated does not match the signature you "
                  "provided. Check your AWS Secret Access Key and signing method. Consult "
                  "the service documentation for details.")
_INVALID_TOKEN = "The security token included in the request is invalid."
_AMZ_DATE_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$")
_SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}$")
_PRESIGN_MARKS = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"})
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


class Problem(enum.Enum):
    MISSING = "missing"  # no signature of any form
    INCOMPLETE = "incomplete"  # a signature whose parts are missing, malformed or too big
    UNKNOWN_KEY = "unknown_key"  # an access key id nobody has (or a session token)
    MISMATCH = "mismatch"  # wrong signature, scope or payload hash
    SKEW = "skew"  # signed more than MAX_SKEW from now (either way)
    EXPIRED = "expired"  # a presigned request past X-Amz-Expires


Protocol = Literal["json", "query"]

# Problem -> (status, REST-JSON error type, query error code). REST-JSON: the types the
# JSON services answer (x-amzn-ErrorType); query: the codes SES v1's XML ErrorResponse
# carries, as the AWS common-errors pages list them.
_ERRORS: dict[Problem, tuple[int, str, int, str]] = {
    Problem.MISSING: (403, "MissingAuthenticationTokenException",
                      403, "MissingAuthenticationToken"),
    Problem.INCOMPLETE: (400, "IncompleteSignatureException", 400, "IncompleteSignature"),
    Problem.UNKNOWN_KEY: (403, "UnrecognizedClientException", 403, "InvalidClientTokenId"),
    Problem.MISMATCH: (403, "InvalidSignatureException", 403, "SignatureDoesNotMatch"),
    Problem.SKEW: (403, "InvalidSignatureException", 403, "SignatureDoesNotMatch"),
    Problem.EXPIRED: (403, "InvalidSignatureException", 400, "RequestExpired"),
}


@dataclass(frozen=True)
class AwsError:
    status: int
    code: str
    message: str


@dataclass(frozen=True)
class Failure:
    problem: Problem
    message: str
    key_id: str = ""  # the access key id the request named, when it got that far

    def error(self, protocol: Protocol) -> AwsError:
        """The HTTP status, error code and message for a client of `protocol`."""
        json_status, json_code, query_status, query_code = _ERRORS[self.problem]
        message = self.message
        if self.problem is Problem.MISSING:
            message = ("Missing Authentication Token" if protocol == "json"
                       else "Request is missing Authentication Token")
        if protocol == "json":
            return AwsError(json_status, json_code, message)
        return AwsError(query_status, query_code, message)


@dataclass(frozen=True)
class Verified:
    key_id: str
    signed_at: float  # the request's date (epoch seconds)
    service: str  # the service name it was signed for ("ses" or "email")
    presigned: bool


Result = Verified | Failure
SecretLookup = Callable[[str], "str | None"]


def payload_hash(body: bytes) -> str:
    """The hex SHA-256 a client signs for `body`."""
    return hashlib.sha256(body).hexdigest()


def verify(method: str, path: str, query: str, headers: Iterable[tuple[str, str]], *,
           now: float, secret_for: SecretLookup, region: str,
           body: bytes | None = None, payload_sha256: str | None = None,
           services: Collection[str] = SERVICES) -> Result:
    """Check the AWS Signature V4 of one request.

    `path` and `query`: as received, still percent-encoded (aiohttp: request.raw_path
    split at "?"); `headers`: every (name, value) field, repeats included. The payload:
    `body` or its hex SHA-256 `payload_sha256` (for a caller that hashed it while
    reading). `secret_for(key_id)`: the secret access key, or None for an unknown key.
    `region`: the one region clients must sign for; `services`: the accepted names."""
    parsed = _parse_request(path, query, headers)
    if isinstance(parsed, Failure):
        return parsed
    params, fields = parsed
    authorization = fields.get("authorization")
    presigned = any(k in _PRESIGN_MARKS for k, _ in params)
    if authorization is not None and presigned:
        return Failure(Problem.INCOMPLETE, "Only one auth mechanism allowed; only the "
                       "X-Amz-Algorithm query parameter or the Authorization header "
                       "should be specified")
    if authorization is None and not presigned:
        return Failure(Problem.MISSING, "Missing Authentication Token")
    parts = (_presigned_parts(params) if presigned
             else _header_parts(",".join(authorization or []), fields))
    if isinstance(parts, Failure):
        return parts
    key_id, scope, signed_names, signature, amz_date, expires = parts
    signed_at = _parse_amz_date(amz_date)
    if signed_at is None:
        return Failure(Problem.INCOMPLETE, f"Date must be in ISO-8601 'basic format'. "
                       f"Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
    scope_problem = _scope_problem(scope, stamp, region, services)
    if scope_problem:
        return Failure(Problem.MISMATCH, scope_problem, key_id)
    timing = _timing_problem(signed_at, expires, now)
    if timing is not None:
        return Failure(timing[0], timing[1], key_id)
    if "x-amz-security-token" in fields or any(k == "X-Amz-Security-Token"
                                               for k, _ in params):
        # relay issues no temporary credentials: a session token is one it never made.
        return Failure(Problem.UNKNOWN_KEY, _INVALID_TOKEN, key_id)
    secret = secret_for(key_id)
    if secret is None:
        return Failure(Problem.UNKNOWN_KEY, _INVALID_TOKEN, key_id)
    if "host" not in signed_names:
        return Failure(Problem.INCOMPLETE, "'Host' or ':authority' must be a "
                       "'SignedHeader' in the AWS Authorization.", key_id)
    digest = payload_sha256 if payload_sha256 is not None else payload_hash(body or b"")
    claimed = fields.get("x-amz-content-sha256")
    if claimed is not None and ",".join(claimed).strip() != digest:
        text = ("Unsigned payloads are not accepted." if claimed == [UNSIGNED_PAYLOAD]
                else "The provided 'x-amz-content-sha256' header does not match what "
                     "was computed.")
        return Failure(Problem.MISMATCH, text, key_id)
    canonical = canonical_request(method, path, params, fields, signed_names, digest,
                                  drop_signature=presigned)
    if isinstance(canonical, Failure):
        return Failure(canonical.problem, canonical.message, key_id)
    to_sign = string_to_sign(stamp, "/".join(scope[1:]), canonical)
    expected = sign(secret, scope[1], scope[2], scope[3], to_sign)
    given = signature.encode("ascii") if _SIGNATURE_RE.match(signature) else b""
    if not hmac.compare_digest(expected.encode("ascii"), given):
        return Failure(Problem.MISMATCH, f"{_MISMATCH_TEXT}\n\nThe Canonical String for "
                       f"this request should have been\n'{canonical}'\n\nThe String-to-Sign "
                       f"should have been\n'{to_sign}'\n", key_id)
    return Verified(key_id, signed_at, scope[3], presigned)


# --- the parts of a signature ------------------------------------------------------


def _parse_request(path: str, query: str, headers: Iterable[tuple[str, str]],
                   ) -> tuple[list[tuple[str, str]], dict[str, list[str]]] | Failure:
    """(decoded query pairs, lower-cased header name -> its values), within the bounds."""
    if len(path) > MAX_PATH_BYTES:
        return Failure(Problem.INCOMPLETE, f"The path is longer than {MAX_PATH_BYTES} bytes")
    if len(query) > MAX_QUERY_BYTES:
        return Failure(Problem.INCOMPLETE,
                       f"The query string is longer than {MAX_QUERY_BYTES} bytes")
    fields: dict[str, list[str]] = {}
    size = 0
    for count, (name, value) in enumerate(headers, 1):
        size += len(name) + len(value)
        if count > MAX_HEADERS or size > MAX_HEADER_BYTES:
            return Failure(Problem.INCOMPLETE, f"Too many header fields (at most "
                           f"{MAX_HEADERS}, {MAX_HEADER_BYTES} bytes)")
        fields.setdefault(name.lower(), []).append(value)
    auth = fields.get("authorization")
    if auth is not None and sum(len(v) for v in auth) > MAX_AUTHORIZATION_BYTES:
        return Failure(Problem.INCOMPLETE, "The Authorization header is too long")
    pieces = [p for p in query.split("&") if p] if query else []
    if len(pieces) > MAX_QUERY_PARAMS:
        return Failure(Problem.INCOMPLETE,
                       f"More than {MAX_QUERY_PARAMS} query string parameters")
    params: list[tuple[str, str]] = []
    for piece in pieces:
        name, _, value = piece.partition("=")
        params.append((unquote_to_bytes(name).decode("utf-8", "surrogateescape"),
                       unquote_to_bytes(value).decode("utf-8", "surrogateescape")))
    return params, fields


_Parts = tuple[str, list[str], list[str], str, str, int | None]


def _header_parts(authorization: str, fields: dict[str, list[str]]) -> _Parts | Failure:
    """(key id, scope, signed header names, signature, date, None) of the header form."""
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        return Failure(Problem.INCOMPLETE, f"Unsupported AWS 'algorithm': '{algorithm[:64]}'"
                       f" (only {ALGORITHM}, Signature Version 4, is accepted)")
    values: dict[str, str] = {}
    for item in rest.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq or name in values:
            return Failure(Problem.INCOMPLETE, "Authorization header requires 'Credential'"
                           ", 'SignedHeaders' and 'Signature' parameters, each once, as "
                           "name=value separated by commas")
        values[name] = value.strip()
    for needed in ("Credential", "SignedHeaders", "Signature"):
        if needed not in values:
            return Failure(Problem.INCOMPLETE,
                           f"Authorization header requires '{needed}' parameter.")
    date = fields.get("x-amz-date") or fields.get("date")
    if not date:
        return Failure(Problem.INCOMPLETE, "Authorization header requires existence of "
                       "either a 'X-Amz-Date' or a 'Date' header.")
    return _common_parts(values["Credential"], values["SignedHeaders"],
                         values["Signature"], date[0].strip(), None)


def _presigned_parts(params: list[tuple[str, str]]) -> _Parts | Failure:
    values: dict[str, str] = {}
    for name, value in params:
        if name.startswith("X-Amz-"):
            if name in values:
                return Failure(Problem.INCOMPLETE, f"The query parameter '{name}' is "
                               "given more than once")
            values[name] = value
    for needed in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                   "X-Amz-SignedHeaders", "X-Amz-Signature"):
        if needed not in values:
            return Failure(Problem.INCOMPLETE,
                           f"AWS query-string parameters must include '{needed}'.")
    if values["X-Amz-Algorithm"] != ALGORITHM:
        return Failure(Problem.INCOMPLETE, "X-Amz-Algorithm only supports "
                       f"'{ALGORITHM}'")
    raw = values["X-Amz-Expires"]
    if not raw.isdigit() or len(raw) > 7 or not 0 < int(raw) <= MAX_EXPIRES:
        return Failure(Problem.INCOMPLETE, "X-Amz-Expires must be a whole number of "
                       f"seconds from 1 to {MAX_EXPIRES} (a week)")
    return _common_parts(values["X-Amz-Credential"], values["X-Amz-SignedHeaders"],
                         values["X-Amz-Signature"], values["X-Amz-Date"], int(raw))


def _common_parts(credential: str, signed: str, signature: str, date: str,
                  expires: int | None) -> _Parts | Failure:
    scope = credential.split("/")
    if len(scope) != 5 or not scope[0]:
        return Failure(Problem.INCOMPLETE, "Credential must have exactly 5 slash-delimited "
                       "elements, e.g. keyid/date/region/service/term")
    names = signed.split(";")
    if len(names) > MAX_SIGNED_HEADERS or not all(_HEADER_NAME_RE.match(n) for n in names):
        return Failure(Problem.INCOMPLETE, "SignedHeaders must be at most "
                       f"{MAX_SIGNED_HEADERS} lower-case header names separated by ';'")
    if len(signature) > 128:
        return Failure(Problem.INCOMPLETE, "The signature is longer than a SHA-256 HMAC")
    return scope[0], scope, names, signature, date, expires


def _parse_amz_date(text: str) -> float | None:
    """Epoch seconds of an ISO 8601 basic date (20150830T123600Z) or an HTTP date."""
    m = _AMZ_DATE_RE.match(text)
    if m:
        year, month, day, hour, minute, second = (int(g) for g in m.groups())
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60
                and second < 61):
            return None
        return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    if len(text) > 64:
        return None
    parsed = parsedate_tz(text)
    if parsed is None or parsed[9] is None:
        return None
    return float(calendar.timegm(parsed[:9]) - parsed[9])


def _scope_problem(scope: list[str], stamp: str, region: str,
                   services: Collection[str]) -> str:
    """Why the credential scope is not one this server accepts, or ""."""
    _, day, scope_region, service, terminator = scope
    if day != stamp[:8]:
        return ("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                f"date from HTTP: '{day[:16]}' != '{stamp[:8]}', from '{stamp}'.")
    if scope_region != region:
        return (f"Credential should be scoped to a valid region, not '{scope_region[:64]}'. "
                f"This server's region is '{region}'.")
    if service not in services:
        return f"Credential should be scoped to correct service: '{min(services)}'. "
    if terminator != TERMINATOR:
        return ("Credential should be scoped with a valid terminator: 'aws4_request', "
                f"not '{terminator[:64]}'. ")
    return ""


def _amz(seconds: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def _timing_problem(signed_at: float, expires: int | None,
                    now: float) -> tuple[Problem, str] | None:
    """AWS's own wording for a request signed too long ago, in the future, or expired."""
    if signed_at > now + MAX_SKEW:
        return (Problem.SKEW, f"Signature not yet current: {_amz(signed_at)} is still later "
                f"than {_amz(now + MAX_SKEW)} ({_amz(now)} + 5 min.)")
    if expires is not None:
        if now > signed_at + expires:
            return Problem.EXPIRED, "Request has expired."
        return None
    if signed_at < now - MAX_SKEW:
        return (Problem.SKEW, f"Signature expired: {_amz(signed_at)} is now earlier than "
                f"{_amz(now - MAX_SKEW)} ({_amz(now)} - 5 min.)")
    return None


# --- the canonical request -----------------------------------------------------------


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, and empty segments dropped (as AWS normalises paths)."""
    if not path:
        return "/"
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    last = "/" if path.endswith("/") and out else ""
    return ("/" if path.startswith("/") else "") + "/".join(out) + last


def canonical_uri(path: str) -> str:
    """The path as received, normalised and URI-encoded once more (every service but S3
    signs the already-encoded path encoded again)."""
    return quote(remove_dot_segments(path) or "/", safe="/~")


def _encode(text: str) -> str:
    return quote_from_bytes(text.encode("utf-8", "surrogateescape"), safe="-_.~")


def canonical_query(params: Iterable[tuple[str, str]], *, drop_signature: bool = False) -> str:
    pairs = sorted((_encode(k), _encode(v)) for k, v in params
                   if not (drop_signature and k == "X-Amz-Signature"))
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_request(method: str, path: str, params: list[tuple[str, str]],
                      fields: dict[str, list[str]], signed_names: list[str], digest: str,
                      *, drop_signature: bool = False) -> str | Failure:
    names = sorted(set(signed_names))
    lines = []
    for name in names:
        values = fields.get(name)
        if values is None:
            return Failure(Problem.MISMATCH, f"{_MISMATCH_TEXT} (the signed header "
                           f"'{name[:64]}' is not in the request)")
        lines.append(f"{name}:" + ",".join(" ".join(v.split()) for v in values))
    return "\n".join([method.upper(), canonical_uri(path),
                      canonical_query(params, drop_signature=drop_signature),
                      "\n".join(lines) + "\n", ";".join(names), digest])


def string_to_sign(stamp: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, stamp, scope,
                      hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()])


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode("utf-8"), day)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, TERMINATOR)


def sign(secret: str, day: str, region: str, service: str, to_sign: str) -> str:
    """The hex signature of `to_sign` under the key derived for (day, region, service)."""
    key = signing_key(secret, day, region, service)
    return hmac.new(key, to_sign.encode("utf-8", "surrogateescape"),
                    hashlib.sha256).hexdigest()


# --- SES SMTP passwords --------------------------------------------------------------

# AWS's documented conversion of a secret access key into an SES SMTP password: the
# SigV4 key chain for a fixed date and the region, then "SendRawEmail", version byte 4.
_SMTP_DATE = "11111111"
_SMTP_MESSAGE = "SendRawEmail"
_SMTP_VERSION = b"\x04"


def smtp_password(secret: str, region: str) -> str:
    """The SES SMTP password of secret access key `secret` for `region`."""
    key = signing_key(secret, _SMTP_DATE, region, "ses")
    return base64.b64encode(_SMTP_VERSION + _hmac(key, _SMTP_MESSAGE)).decode("ascii")
