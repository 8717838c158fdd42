"""The admin server's middleware: the bearer-token guard and the security headers.

Every /api/ request (and /metrics with admin.metrics_auth) needs `Authorization: Bearer
<token>` (401 otherwise; tokens from relay.admin.tokens, checked in a thread); a BadInput
becomes a 400 naming its field; HTTP errors under /api/ are answered in JSON. Every
response, errors included, forbids framing and content sniffing.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from relay.admin.api.common import TOKEN_NAME, Handler, _error
from relay.admin.api.context import _ctx
from relay.admin.params import BadInput

_OPEN = {"/", "/openapi.json", "/favicon.ico"}


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = _ctx(request)
    path = request.path
    needs = path.startswith("/api/") or (path == "/metrics" and ctx.config().admin.metrics_auth)
    name: str | None = None
    if needs:
        token = _bearer(request)
        name = None if token is None else await asyncio.to_thread(ctx.tokens.verify, token)
        if name is None:
            resp = _error(401, "a valid bearer token is required "
                               "(Authorization: Bearer TOKEN; create one with "
                               "`relay admin token add NAME`)")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="relay"'
            return resp
    if name is not None:
        request[TOKEN_NAME] = name
    try:
        return await handler(request)
    except BadInput as e:
        return _error(400, e.message, e.field)
    except web.HTTPException as e:
        if path.startswith("/api/") or path in ("/metrics", "/openapi.json"):
            return _error(e.status, e.reason)
        raise


# On every response, errors and 404s included: no page of the admin server may be framed
# (clickjacking the dashboard's buttons) or content-sniffed into another type.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
_FRAME_ANCESTORS = "frame-ancestors 'none'"


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    csp = response.headers.get("Content-Security-Policy", "")
    if "frame-ancestors" not in csp:
        response.headers["Content-Security-Policy"] = (
            f"{csp}; {_FRAME_ANCESTORS}" if csp else _FRAME_ANCESTORS)
