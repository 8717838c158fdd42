"""Runs the admin HTTP server on `[admin] address` (loopback by default) in relay's loop.

Owns: the aiohttp runner and site, and the sampler that records queue depth every
`[admin] history_interval` for the dashboard. Stopping ends the open event streams
(GET /api/events/stream, which would otherwise hold it for the runner's shutdown
timeout), closes the listening socket and waits briefly for requests in progress.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from relay.admin.api import AdminContext, make_app
from relay.config import Address
from relay.tasks import cancel_and_wait

log = logging.getLogger("relay.admin")


class AdminServer:
    def __init__(self, ctx: AdminContext, address: Address) -> None:
        self.ctx = ctx
        self.address = address
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._sampler: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("admin server is not started")
        for addr in self._runner.addresses:
            return int(addr[1])
        raise RuntimeError("admin server has no socket")

    async def start(self) -> None:
        self._runner = web.AppRunner(make_app(self.ctx), access_log=None,
                                     handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.address.host, self.address.port,
                                 reuse_address=True)
        await self._site.start()
        self._sampler = asyncio.create_task(self._sample_loop(), name="admin-history")
        log.info("admin API and dashboard on %s", self.address)

    async def _sample_loop(self) -> None:
        while True:
            try:
                self.ctx.history.append(self.ctx.sample())
            except Exception:
                log.exception("queue depth sample failed")
            await self.ctx.clock.sleep(float(self.ctx.config().admin.history_interval))

    async def stop(self) -> None:
        await cancel_and_wait(self._sampler)
        self._sampler = None
        if self.ctx.live is not None:
            await self.ctx.live.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
