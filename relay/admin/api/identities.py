"""/api/identities: the sending identities, stored and declared, with their DKIM selectors.

No DKIM private key is ever in a response: only the active and pending selectors.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.admin.api.common import _json
from relay.admin.api.context import _ctx
from relay.events.model import iso


async def identities(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    cfg = ctx.config()
    stored: dict[str, Any] = ctx.identities.all() if ctx.identities is not None else {}
    declared = {(i.address or i.domain).lower(): i for i in cfg.identity}
    rows: list[dict[str, Any]] = []
    for name in sorted(set(stored) | set(declared)):
        rec = stored.get(name)
        decl = declared.get(name)
        domain = name.rpartition("@")[2]
        dkim: dict[str, Any] | None = None
        if ctx.dkim_keys is not None:
            try:
                keys = ctx.dkim_keys.get(domain)
            except Exception:
                keys = None
            active = keys.active if keys is not None else None
            pending = keys.pending if keys is not None else None
            dkim = {"active": [k.selector for k in active.keys] if active else [],
                    "pending": [k.selector for k in pending.keys] if pending else []}
        rows.append({
            "name": name, "declared_in_config": decl is not None,
            "mail_from": getattr(decl, "mail_from", "") if decl else "",
            "verified": bool(rec.verified) if rec else False,
            "verified_at": iso(rec.verified_at) if rec and rec.verified_at else None,
            "checked_at": iso(rec.checked_at) if rec and rec.checked_at else None,
            "tenant": rec.tenant if rec else "",
            "dkim": dkim,
        })
    return _json({"identities": rows})
