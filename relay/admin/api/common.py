"""The admin API's HTTP helpers: JSON responses and errors, query and body decoding, the
handler type and the request key of the caller's token name.

Query strings and JSON bodies are decoded into the Structs of relay.admin.params; a
BadInput raised here or in a handler becomes a 400 naming the field (relay.admin.api.guard).
The helpers keep their leading underscore: they are this package's own, used by its
handler modules, and not exported from relay.admin.api.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from relay.admin.params import BadInput, Params, from_body, from_query

VERSION = "1"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The name of the bearer token of an /api/ request (who paused a tenant).
TOKEN_NAME = "relay_admin_token"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status,
                        content_type="application/json")


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return _json(body, status)


P = TypeVar("P", bound=Params)


def _query(request: web.Request, cls: type[P]) -> P:
    return from_query(cls, request.query.items())


async def _body(request: web.Request, cls: type[P]) -> P:
    try:
        data = await request.json(loads=msgspec.json.decode)
    except RecursionError:
        # msgspec stops at the interpreter's recursion limit: a hostile body, not a bug.
        raise BadInput("body", "body: JSON nested too deeply (expected a flat JSON "
                               "object of strings, numbers and lists)") from None
    except (msgspec.DecodeError, ValueError):
        raise BadInput("body", "body: expected a JSON object") from None
    return from_body(cls, data)
