"""The endpoints outside /api/: /metrics (Prometheus), /openapi.json and the dashboard page."""

from __future__ import annotations

import asyncio
from importlib import resources

from aiohttp import web

from relay.admin.api.common import _json
from relay.admin.api.context import _ctx
from relay.admin.metrics import CONTENT_TYPE
from relay.admin.openapi import document


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(_ctx(request).metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return _json(document())


def dashboard_html() -> bytes:
    return (resources.files("relay") / "admin" / "dashboard.html").read_bytes()


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=dashboard_html(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy":
                                     "default-src 'self'; script-src 'unsafe-inline'; "
                                     "style-src 'unsafe-inline'; img-src 'self' data:"})
