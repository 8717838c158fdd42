"""A real webhook receiver on loopback (aiohttp) for event-destination tests."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from aiohttp import web


class WebhookReceiver:
    """POST /hook: records each event and its X-Relay-Event-Id, answers 200. With a
    `secret`, a wrong or missing X-Relay-Signature fails the handler (and the test)."""

    def __init__(self, port: int, secret: str | None = None) -> None:
        self.port = port
        self.secret = secret
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret.encode(), body,
                                            hashlib.sha256).hexdigest()
            assert request.headers["X-Relay-Signature"] == expected
        self.ids.append(request.headers["X-Relay-Event-Id"])
        self.events.append(json.loads(body))
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
