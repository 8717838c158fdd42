"""Wires one relay process: queue, events, scheduler, delivery client, listeners.

`RelayApp` builds the object graph once from a Config and passes each part
what it needs (no global singletons). Start order is chosen so nothing is
accepted before it can be stored, and nothing is delivered before crashed
leases are recovered; stop order is the reverse, so a SIGTERM drains
gracefully: listeners stop accepting, transactions under way finish, unstarted
leases go back to the spool, the store commits and closes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import signal
import ssl
import sys
from pathlib import Path

from relay.clock import Clock, SystemClock
from relay.config import Config
from relay.delivery.client import Sender
from relay.delivery.routing import Router
from relay.delivery.scheduler import Scheduler
from relay.dns.resolver import DnsResolver
from relay.events.log import EventLog
from relay.events.model import send_event
from relay.queue.store import NewMessage, QueueStore
from relay.smtp import AuthPolicy, SubmissionServer
from relay.tlsutil import ensure_self_signed, server_context
from relay.users import UserStore

log = logging.getLogger("relay")

DEV_USER = "dev"


class QueueSubmitter:
    """What the SMTP server calls: durable submit, then a Send event and a scheduler nudge."""

    def __init__(self, store: QueueStore, events: EventLog, scheduler: Scheduler) -> None:
        self.store = store
        self.events = events
        self.scheduler = scheduler

    async def submit(self, msg: NewMessage) -> str:
        record = await self.store.submit_record(msg)
        self.events.emit([send_event(record)])
        self.scheduler.wake()
        return record.id


class RelayApp:
    def __init__(self, cfg: Config, clock: Clock | None = None,
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.state_dir = cfg.state_path
        self.listeners: list[SubmissionServer] = []
        self.recovered = 0
        self.dev_password: str | None = None

    def _lease_seconds(self) -> float:
        d = self.cfg.delivery
        # Longer than any single attempt can take, so a live attempt is never leased twice.
        return d.connect_timeout + 4 * d.command_timeout + d.data_timeout + 60

    def _tls_context(self) -> ssl.SSLContext | None:
        needs_tls = any(lst.tls != "none" for lst in self.cfg.listener)
        if not needs_tls:
            return None
        if self.cfg.tls.cert:
            cert, key = Path(self.cfg.tls.cert), Path(self.cfg.tls.key)
        else:
            cert, key = ensure_self_signed(self.state_dir, self.cfg.server.hostname)
        return server_context(cert, key)

    async def start(self) -> None:
        cfg = self.cfg
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = QueueStore(
            self.state_dir / "queue", self.clock, map_size=cfg.server.queue_map_size,
            commit_window=cfg.server.commit_window, commit_batch_max=cfg.server.commit_batch_max,
            lease_seconds=self._lease_seconds())
        self.recovered = self.store.write_now(self.store.recover_op(self.clock.now()))
        if self.recovered:
            log.warning("recovered %d recipients that were in flight at the last stop",
                        self.recovered)
        await self.store.start()
        events_path = Path(cfg.events.log)
        self.events = EventLog(events_path if events_path.is_absolute()
                               else self.state_dir / events_path)
        self.users = UserStore(self.state_dir / "users.json")
        if cfg.server.dev_credential and not self.users.names():
            self.dev_password = secrets.token_urlsafe(18)
            self.users.add(DEV_USER, self.dev_password)
        self.resolver = DnsResolver.from_config(cfg.dns, self.clock)
        self.router = Router(cfg.delivery, self.resolver, self.rng)
        self.sender = Sender(cfg.delivery, hostname=cfg.server.hostname, clock=self.clock)
        self.scheduler = Scheduler(self.store, self.router, self.sender, self.events, self.clock,
                                   cfg.delivery, hostname=cfg.server.hostname, rng=self.rng)
        self.scheduler.start()
        submitter = QueueSubmitter(self.store, self.events, self.scheduler)
        tls = self._tls_context()
        # One lockout tracker for every listener: a lockout on 587 holds on 465 too.
        auth_policy = AuthPolicy(cfg.limits.auth_failure_delay, cfg.limits.auth_max_failures,
                                 cfg.limits.auth_lockout)
        for lst in cfg.listener:
            if lst.role != "submission":
                continue  # the feedback listener arrives with bounce processing
            server = SubmissionServer(lst, cfg.limits, cfg.server.hostname, submitter,
                                      self.users, self.clock, tls, auth_policy=auth_policy)
            await server.start()
            self.listeners.append(server)

    async def stop(self) -> None:
        for server in self.listeners:
            await server.stop()
        await self.scheduler.stop()
        await self.sender.close()
        await self.store.close()
        self.events.close()


async def serve(cfg: Config) -> None:
    """Run until SIGTERM/SIGINT, then drain and exit."""
    app = RelayApp(cfg)
    await app.start()
    if app.dev_password is not None:
        print(f"relay: development credential (shown once): user {DEV_USER!r} "
              f"password {app.dev_password!r}", flush=True)
    for server, lst in zip(app.listeners, [x for x in cfg.listener if x.role == "submission"],
                           strict=True):
        print(f"relay: listening on {lst.address} (tls={lst.tls}, auth={lst.auth}) "
              f"port {server.port}", flush=True)
    print(f"relay: ready (state {app.state_dir}, recovered {app.recovered})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("relay: stopping (draining)", file=sys.stderr, flush=True)
    await app.stop()
