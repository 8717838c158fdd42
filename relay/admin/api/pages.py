"""The endpoints outside /api/: /metrics (Prometheus), /openapi.json, the dashboard page and
/health (a load balancer's health check)."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import re
from importlib import resources

from aiohttp import web

from relay.admin.api.common import _json
from relay.admin.api.context import _ctx
from relay.admin.metrics import CONTENT_TYPE
from relay.admin.openapi import document


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(_ctx(request).metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def health(request: web.Request) -> web.Response:
    """200 "ok", or 503 "draining" while `relay node drain` is in effect: public (no
    token), tiny and cheap, for a load balancer polling every second or two (HAProxy's
    `option httpchk GET /health`)."""
    if _ctx(request).draining():
        return web.Response(status=503, text="draining\n",
                            headers={"Cache-Control": "no-store"})
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


async def openapi(request: web.Request) -> web.Response:
    return _json(document())


def dashboard_html() -> bytes:
    return (resources.files("relay") / "admin" / "dashboard.html").read_bytes()


@functools.cache
def dashboard_csp() -> str:
    """The page's Content-Security-Policy: its own inline script allowed by its SHA-256, so
    markup that slipped into the page (an event handler in a subject line) never runs,
    where 'unsafe-inline' would let it."""
    scripts = re.findall(rb"<script>(.*?)</script>", dashboard_html(), re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts)
    return (f"default-src 'self'; script-src {hashes}; style-src 'unsafe-inline'; "
            "img-src 'self' data:")


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=dashboard_html(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": dashboard_csp()})
