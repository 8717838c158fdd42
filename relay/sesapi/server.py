"""Runs the SES HTTP API on `[api] address` in relay's loop (aiohttp), HTTPS when
`[api] tls_cert`/`tls_key` are set, plain HTTP otherwise (behind a reverse proxy).

Every request, in this order, before any operation sees it:
1. a bounded read: a Content-Length over `[api] max_body_size` is refused (413) before a
   byte of the body is read; a body without one is read in chunks and refused as soon as
   it passes the limit; the whole read must finish within BODY_TIMEOUT (a client that
   trickles its body is cut off);
2. AWS Signature V4 verification (relay/sesapi/sigv4.py) of the request as received,
   against the secrets of relay/sesapi/keys.py and `[api] region`, before the body is
   parsed;
3. the operation (relay/sesapi/operations.py), by method and path.
Every failure is answered as the SES v2 REST-JSON protocol does: the HTTP status, the
error type in `x-amzn-ErrorType` and `{"message": ...}`; botocore raises
`client.exceptions.<type>` from it. A path relay does not serve is named as the SES
operation it is (relay/sesapi/catalog.py) in a 400, never a 500.

SES v1 (the query protocol: a form POSTed to "/", XML answers) is served on the same
listener for SendEmail, SendRawEmail and GetSendQuota (relay/sesapi/v1.py); its SigV4
refusals and errors use v1's codes (SignatureDoesNotMatch, Throttling, ...).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from relay.config import Address
from relay.sesapi import sigv4, v1
from relay.sesapi.catalog import operation_of
from relay.sesapi.errors import ApiError, bad_request, unsupported
from relay.sesapi.keys import ApiKeyStore
from relay.sesapi.operations import ApiContext, Caller, SesV2
from relay.sesapi.template_api import TemplateApi

log = logging.getLogger("relay.sesapi")

KEEPALIVE = 30.0
BODY_TIMEOUT = 120.0  # seconds for the whole body: 40 MB at ~350 KB/s
_CHUNK = 256 * 1024


class _SignatureError(ApiError):
    """A SigV4 refusal, already in the terms of the request's protocol."""


def error_response(err: ApiError, request_id: str) -> web.Response:
    return web.Response(
        status=err.status, body=json.dumps({"message": err.message}).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": err.code, "x-amzn-RequestId": request_id})


class ApiServer:
    def __init__(self, ctx: ApiContext, keys: ApiKeyStore, *, address: Address,
                 region: Callable[[], str], max_body: Callable[[], int],
                 tls: ssl.SSLContext | None = None) -> None:
        self.ctx = ctx
        self.keys = keys
        self.address = address
        self.region = region
        self.max_body = max_body
        self.tls = tls
        self.v2 = SesV2(ctx)
        self.templates = (TemplateApi(ctx.templates, ctx.store, self.v2.tenant_of)
                          if ctx.templates is not None else None)
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("SES API server is not started")
        for addr in self._runner.addresses:
            return int(addr[1])
        raise RuntimeError("SES API server has no socket")

    def make_app(self) -> web.Application:
        # client_max_size: aiohttp's own cap on request.read(), a second line behind ours.
        app = web.Application(client_max_size=self.max_body() + 1)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(self) -> None:
        # keepalive_timeout: an idle kept-alive connection is closed after KEEPALIVE
        # seconds (aiohttp's default is an hour); max_* bound the request head.
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0, keepalive_timeout=KEEPALIVE,
                                     max_line_size=8190, max_field_size=8190,
                                     max_headers=100)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address.host, self.address.port,
                           ssl_context=self.tls, reuse_address=True)
        await site.start()
        log.info("SES API on %s (%s)", self.address, "https" if self.tls else "http")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ requests

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        query_protocol = request.path in ("", "/")  # SES v1: POST / with a form
        try:
            result = await self._handle(request, query_protocol)
        except ApiError as err:
            if query_protocol:
                status, text = v1.xml_error(err, request_id,
                                            signature=isinstance(err, _SignatureError))
                return web.Response(status=status, text=text, content_type="text/xml",
                                    headers={"x-amzn-RequestId": request_id})
            return error_response(err, request_id)
        except Exception:
            log.exception("SES API: %s %s failed", request.method, request.path)
            return error_response(ApiError(500, "InternalFailure",
                                           "The request processing has failed because of "
                                           "an unknown error."), request_id)
        if query_protocol:
            action, fields = result
            return web.Response(text=v1.xml_result(action, fields, request_id),
                                content_type="text/xml",
                                headers={"x-amzn-RequestId": request_id})
        return web.Response(body=json.dumps(result).encode(), content_type="application/json",
                            headers={"x-amzn-RequestId": request_id})

    async def _read(self, request: web.Request) -> bytes:
        limit = self.max_body()
        length = request.content_length
        if length is not None and length > limit:
            raise ApiError(413, "RequestEntityTooLargeException",
                           f"Request body of {length} bytes exceeds the limit of {limit} "
                           "bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                while True:
                    chunk = await request.content.read(_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, "RequestEntityTooLargeException",
                                       f"Request body exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(408, "RequestTimeoutException",
                           "The request body was not received in time") from None
        return b"".join(chunks)

    async def _handle(self, request: web.Request, query_protocol: bool) -> Any:
        body = await self._read(request)
        raw_path, _, query = request.raw_path.partition("?")
        # A large body's SHA-256 (~2.5 ms a MB) in a thread, off the event loop.
        digest = (await asyncio.to_thread(_sha256, body)) if len(body) > _CHUNK else None
        verified = sigv4.verify(
            request.method, raw_path, query,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            now=self.ctx.clock.now(), secret_for=self.keys.secret_for,
            region=self.region(), body=None if digest else body, payload_sha256=digest)
        if isinstance(verified, sigv4.Failure):
            log.info("SES API: %s %s refused: %s", request.method, request.path,
                     verified.message)
            error = verified.error("query" if query_protocol else "json")
            raise _SignatureError(error.status, error.code, error.message)
        user = self.keys.user_of(verified.key_id)
        if user is None:  # revoked between the lookup and now
            raise ApiError(403, "UnrecognizedClientException",
                           "The security token included in the request is invalid.")
        caller = Caller(verified.key_id, user, request.remote or "")
        if query_protocol:
            return await self._v1_operation(request.method, query, body, caller)
        return await self._operation(request.method, raw_path, query, body, caller)

    async def _v1_operation(self, method: str, query: str, body: bytes, caller: Caller
                            ) -> tuple[str, dict[str, Any]]:
        """SES v1: (the action, its result's fields)."""
        try:
            form = body.decode("utf-8") if method == "POST" else ""
            pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=v1.MAX_PARAMS)
            pairs += parse_qsl(form, keep_blank_values=True, max_num_fields=v1.MAX_PARAMS)
        except (UnicodeDecodeError, ValueError):
            raise bad_request("The request body is not a form of at most "
                              f"{v1.MAX_PARAMS} UTF-8 parameters") from None
        request = v1.unflatten(pairs)
        action = request.pop("Action", "")
        request.pop("Version", None)
        if action in ("SendEmail", "SendRawEmail"):
            sent = await self.v2.send_email(caller, v1.to_v2(action, request))
            return action, {"MessageId": sent["MessageId"]}
        if action == "GetSendQuota":
            quota = (await self.v2.get_account(caller))["SendQuota"]
            return action, {k: quota[k] for k in ("Max24HourSend", "MaxSendRate",
                                                  "SentLast24Hours")}
        raise v1.unsupported_action(action if isinstance(action, str) else "")

    async def _operation(self, method: str, raw_path: str, query: str, body: bytes,
                         caller: Caller) -> Any:
        path = raw_path.rstrip("/") or "/"
        v2 = self.v2
        params: dict[str, list[str]] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            params.setdefault(name, []).append(value)
        if method == "POST" and path == "/v2/email/outbound-emails":
            return await v2.send_email(caller, _json(body))
        if method == "POST" and path == "/v2/email/outbound-bulk-emails":
            return await v2.send_bulk_email(caller, _json(body))
        if method == "GET" and path == "/v2/email/account":
            return await v2.get_account(caller)
        if method == "POST" and path == "/v2/email/list-identities":
            request = _json(body) if body else {}
            return v2.list_email_identities(caller, {
                "PageSize": str(request.get("PageSize") or ""),
                "NextToken": str(request.get("NextToken") or "")})
        if method == "GET" and path == "/v2/email/identities":
            return v2.list_email_identities(caller, {k: v[0] for k, v in params.items()})
        if method == "POST" and path == "/v2/email/identities":
            return await v2.create_email_identity(caller, _json(body))
        identity = _label(path, "/v2/email/identities/")
        if method == "GET" and identity is not None:
            return await v2.get_email_identity(caller, identity)
        if method == "DELETE" and identity is not None:
            return await v2.delete_email_identity(caller, identity)
        mail_from = _label(path.removesuffix("/mail-from"), "/v2/email/identities/")
        if method == "PUT" and path.endswith("/mail-from") and mail_from is not None:
            return await v2.put_email_identity_mail_from_attributes(caller, mail_from,
                                                                    _json(body))
        templates = self.templates
        if templates is not None:
            found = await _template_operation(templates, method, path, params, body,
                                              caller)
            if found is not None:
                return found
        if method == "GET" and path == "/v2/email/configuration-sets":
            return v2.list_configuration_sets(caller, params)
        if method == "POST" and path == "/v2/email/list-configuration-sets":
            request = _json(body) if body else {}
            return v2.list_configuration_sets(caller, {
                k: [str(request[k])] for k in ("PageSize", "NextToken") if request.get(k)})
        config_set = _label(path, "/v2/email/configuration-sets/")
        if method == "GET" and config_set is not None:
            return v2.get_configuration_set(caller, config_set)
        suppressed = "/v2/email/suppression/addresses"
        if path == suppressed and method == "PUT":
            return await v2.put_suppressed_destination(caller, _json(body))
        if path == suppressed and method == "GET":
            return await v2.list_suppressed_destinations(caller, params)
        address = _label(path, suppressed + "/")
        if address is not None and method == "GET":
            return v2.get_suppressed_destination(caller, address, params)
        if address is not None and method == "DELETE":
            return await v2.delete_suppressed_destination(caller, address, params)
        raise unsupported(method, path, operation_of(method, path) or "")


async def _template_operation(api: TemplateApi, method: str, path: str,
                              params: dict[str, list[str]], body: bytes,
                              caller: Caller) -> Any:
    """Create/Get/Update/Delete/ListEmailTemplates and TestRenderEmailTemplate; None: the
    request is none of them."""
    base = "/v2/email/templates"
    user = caller.user
    if path == base:
        if method == "POST":
            return await api.create(user, _json(body))
        if method == "GET":
            return api.list(user, params)
        return None
    name = _label(path, base + "/")
    if name is not None:
        if method == "GET":
            return api.get(user, name)
        if method == "PUT":
            return await api.update(user, name, _json(body))
        if method == "DELETE":
            return await api.delete(user, name)
        return None
    if path.endswith("/render") and method == "POST":
        name = _label(path.removesuffix("/render"), base + "/")
        if name is not None:
            return api.test_render(user, name, _json(body))
    return None


def _label(path: str, prefix: str) -> str | None:
    """The one path segment after `prefix`, decoded (None: `path` is not prefix + one)."""
    if not path.startswith(prefix) or not path[len(prefix):] \
            or "/" in path[len(prefix):]:
        return None
    return unquote(path[len(prefix):])


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting past the stack too
        raise bad_request("The request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_request("The request body must be a JSON object")
    return value

