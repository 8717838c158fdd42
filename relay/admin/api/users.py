"""/api/users: list, add and remove SMTP users.

No password hash is ever in a response; a password relay generates is answered once.
scrypt runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from msgspec import UnsetType

from relay.admin.api.common import _body, _error, _json
from relay.admin.api.context import _ctx
from relay.admin.params import BadInput, UserAdd
from relay.identity.model import IdentityError, check_pattern
from relay.users import (
    UserError,
    check_name,
    check_new_password,
    generate_password,
)


async def users_list(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    rows = [{"name": name, "allow": list(rec.allow), "tenant": rec.tenant,
             "tenants": rec.allowed_tenants, "max_24h_send": rec.max_24h_send,
             "max_send_rate": rec.max_send_rate}
            for name, rec in sorted(ctx.users.read_all().items())]
    return _json({"users": rows})


async def users_add(request: web.Request) -> web.Response:
    """Add an SMTP user. A password given must have MIN_NEW_PASSWORD_LENGTH characters;
    with none, relay generates one and answers it once, in this response only."""
    ctx = _ctx(request)
    data = await _body(request, UserAdd)
    name = data.name
    generated = isinstance(data.password, UnsetType)
    password = generate_password() if isinstance(data.password, UnsetType) else data.password
    for pattern in data.allow:
        try:
            check_pattern(pattern)
        except IdentityError as e:
            raise BadInput("allow", f"allow: {e}") from None
    if not generated:
        try:
            check_name(name)  # a bad name is named first, whatever the password
        except UserError as e:
            raise BadInput("name", f"name: {e}") from None
        try:
            check_new_password(password)
        except UserError as e:
            raise BadInput("password", f"password: {e} (or leave it out: relay then "
                                       "generates one and answers it once)") from None
    try:
        await asyncio.to_thread(ctx.users.add, name, password, list(data.allow))
    except UserError as e:
        text = str(e)
        field_name = "password" if "password" in text.lower() else "name"
        if "already" in text:
            return _error(409, text, "name")
        raise BadInput(field_name, f"{field_name}: {text}") from None
    body: dict[str, Any] = {"name": name, "allow": list(data.allow)}
    if generated:
        body["generated_password"] = password  # shown once: only its scrypt hash is kept
    return _json(body, 201)


async def users_remove(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    name = request.match_info["name"]
    if ctx.users.get(name) is None:
        return _error(404, f"no user {name!r}", "name")
    try:
        await asyncio.to_thread(ctx.users.remove, name)
    except UserError as e:
        return _error(404, str(e), "name")
    return _json({"name": name, "removed": True})
