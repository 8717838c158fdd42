"""Runs one relay process: queue, events, scheduler, delivery client, listeners.

`RelayApp` has relay/wiring.py's `build()` make the object graph once from a Config
(every part given what it needs when it is made; no global singletons) and runs its
lifecycle. Start order is chosen so nothing is accepted before it can be stored, and
nothing is delivered before crashed leases are recovered; stop order is the reverse,
so a SIGTERM drains gracefully: listeners stop accepting, transactions under way
finish, unstarted leases go back to the spool, the store commits and closes. The
listeners and the admin API are made here, as they start, from the built parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import random
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from relay import logfmt, sdnotify
from relay.admin.api import AdminContext
from relay.admin.metrics import EventLogCollector, StateCollector
from relay.admin.server import AdminServer
from relay.admin.tokens import TokenStore
from relay.clock import Clock, SystemClock
from relay.config import Config, ConfigError, load
from relay.delivery.sentfrom import prune_sent_op
from relay.dkim.keys import DkimError
from relay.drain import DrainState
from relay.feedback.listener import FeedbackServer, owned_domains
from relay.history.recorder import HistoryRecorder
from relay.history.retention import HistoryPruner
from relay.identity.check import rotation_tick
from relay.sesapi.operations import ApiContext
from relay.sesapi.server import ApiServer
from relay.sesapi.templates import TemplateStore
from relay.signals import EarlySignals
from relay.smtp import SubmissionServer
from relay.smtp.server import ConnectionLimiter
from relay.supervisor import watch_supervisor
from relay.tenants import quotastore, repstore
from relay.tenants.model import tenant_scope
from relay.tlsutil import ensure_self_signed, server_context
from relay.tracking import engagement
from relay.users import DEV_USER
from relay.wiring import LiveConfig, Overrides, build
from relay.workers import worker_share

log = logging.getLogger("relay")


def _bound(sockets: Iterable[socket.socket]) -> set[tuple[str, int]]:
    """The (ip, port) each listening socket is bound to."""
    return {(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in sockets}


class RelayApp:
    def __init__(self, cfg: Config, clock: Clock | None = None,
                 rng: random.Random | None = None,
                 worker: tuple[int, int] | None = None,
                 overrides: Overrides | None = None) -> None:
        # Multi-process mode (relay/supervisor.py): (index, count). Worker i owns the
        # destinations of shard i (delivery, recovery); worker 0 also runs the admin API
        # and the feedback listener.
        self.worker = worker if worker is not None and worker[1] > 1 else None
        # A worker enforces its share of per-destination limits (relay/workers.py). The
        # parts that follow a reload read this cell; reload() replaces its Config.
        self.live = LiveConfig(worker_share(cfg, self.worker))
        self.clock = clock or SystemClock()
        self.rng = rng or (overrides and overrides.rng) or random.Random()
        self.overrides = dataclasses.replace(overrides or Overrides(), rng=self.rng)
        self.state_dir = self.cfg.state_path
        self.listeners: list[SubmissionServer] = []
        self.recovered = 0
        self.dev_password: str | None = None
        self.dev_admin_token: str | None = None
        self.admin: AdminServer | None = None
        self.api: ApiServer | None = None
        self.dev_api_key: tuple[str, str] | None = None
        self.tls: ssl.SSLContext | None = None
        self.feedback_listeners: list[FeedbackServer] = []
        self.history_recorder: HistoryRecorder | None = None
        self.history_pruner: HistoryPruner | None = None
        # [cluster] redis_url set: this node's relay.cluster.node.ClusterNode (worker 0's
        # under server.workers = N). None: a single node, and redis is never imported.
        self.cluster: Any = None

    @property
    def cfg(self) -> Config:
        return self.live.get()

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
        # The whole graph, built once (relay/wiring.py); then started in order: the spool
        # recovered and committing before anything can be accepted, events before the
        # work that reports them, delivery before the listeners, the admin API last.
        parts = self.parts = build(self.cfg, self.clock, self.overrides, worker=self.worker,
                                   live=self.live)
        cfg = self.cfg
        self.metrics, self.store, self.sent_from = parts.metrics, parts.store, parts.sent_from
        self.reputation, self.events, self.users = parts.reputation, parts.events, parts.users
        self.resolver, self.router, self.sender = parts.resolver, parts.router, parts.sender
        self.attempts, self.shaped = parts.attempts, parts.shaped
        self.identities, self.dkim_keys, self.verp = (parts.identities, parts.dkim_keys,
                                                      parts.verp)
        self.scheduler, self.suppressor, self.feedback = (parts.scheduler, parts.suppressor,
                                                          parts.feedback)
        self.event_router, self.journal, self.loop_lag = (parts.event_router, parts.journal,
                                                          parts.loop_lag)
        self.own_addresses = parts.own_addresses
        self.recovered = self.store.write_now(self.store.recover_op(self.clock.now(),
                                                                    shard=self.worker))
        if self.recovered:
            log.warning("recovered %d recipients that were in flight at the last stop",
                        self.recovered)
        await self.store.start()
        # The history's batches ride in the group commit: from now on they can be written.
        self.history_recorder = parts.recorder
        if self.history_recorder is not None:
            self.history_recorder.start()
        if cfg.server.dev_credential and not self.users.names() and not self._secondary:
            self.dev_password = secrets.token_urlsafe(18)
            self.users.add(DEV_USER, self.dev_password)
        await self.event_router.start()
        if not self._secondary:
            self.journal.replay()  # one worker publishes what the last run left staged
        self.journal.start()
        self.tenants, self.monitor = parts.tenants, parts.monitor
        self.monitor.start()
        self._prune_task = asyncio.create_task(self._prune_loop(), name="feedback-prune")
        self._dkim_task = asyncio.create_task(self._dkim_loop(), name="dkim-rotation")
        # One history pruner per spool, as one journal replay: worker 0's.
        self.history_pruner = parts.pruner if not self._secondary else None
        if self.history_pruner is not None:
            self.history_pruner.start()
        self.loop_lag.start()
        self.scheduler.start()
        tls = self.tls = self._tls_context()
        # `relay node drain`: read at start and on every SIGHUP (relay/drain.py).
        self.drain = DrainState(self.state_dir)
        limiter: ConnectionLimiter | None = None
        for lst in cfg.listener:
            if lst.role == "feedback":
                if self._secondary:
                    # One feedback listener, in worker 0; mail routed to it still loops.
                    self.own_addresses.add((str(lst.address.host), lst.address.port))
                    continue
                name = str(lst.address)
                fb = FeedbackServer(lst, cfg.server.hostname, self.feedback,
                                    lambda: owned_domains(self.cfg), tls,
                                    limits=cfg.limits, feedback=cfg.feedback,
                                    **self._feedback_observers(name))
                await fb.start()
                self.own_addresses.update(_bound(fb.sockets))
                self.feedback_listeners.append(fb)
                continue
            if lst.role != "submission":
                continue
            if limiter is None:  # one count for every submission listener
                limiter = ConnectionLimiter(cfg.limits.max_connections,
                                            cfg.limits.max_connections_per_ip)
            server = SubmissionServer(lst, cfg.limits, cfg.server.hostname,
                                      parts.mail_from_gate, self.users, self.clock, tls,
                                      auth_policy=parts.auth_policy,
                                      sender_check=parts.sender_policy,
                                      reuse_port=self.worker is not None,
                                      on_reject=parts.submitter.reject,
                                      account=parts.account,
                                      key_login=self._key_login,
                                      draining=self.drain, limiter=limiter,
                                      **self._observers(str(lst.address)))
            await server.start()
            self.own_addresses.update(_bound(server.sockets))
            self.listeners.append(server)
        self.cluster = parts.cluster
        if self.cluster is not None:
            await self._start_cluster()
        if cfg.admin.enabled and not self._secondary:
            await self._start_admin()
        if cfg.api.enabled and not self._secondary:
            await self._start_api()

    async def _start_cluster(self) -> None:
        # Built by wiring (its quotas and pause view are the gate's and the tenant
        # store's); worker 0 alone writes the heartbeat.
        self.metrics.add_collector(self.cluster.collector)
        await self.cluster.start(heartbeat=not self._secondary)

    def _key_login(self, login: str, password: bytes) -> str | None:
        """SMTP AUTH with an access key id and its SES SMTP password for [api] region:
        the credential the key sends as, or None."""
        return self.parts.api_keys.smtp_login(login, password, self.live.current.api.region)

    @property
    def _secondary(self) -> bool:
        """A worker other than worker 0 in multi-process mode."""
        return self.worker is not None and self.worker[0] != 0

    def _observers(self, name: str) -> dict[str, Any]:
        """A submission listener's metrics hooks: sessions, replies, AUTH defence, accept()
        failures, implicit-TLS handshakes."""
        metrics = self.metrics
        return {"on_session": functools.partial(metrics.observe_session, name),
                "on_reply": metrics.observe_reply, "on_auth": metrics.observe_auth,
                "on_accept_failure": metrics.observe_accept_failure,
                "on_handshake": functools.partial(metrics.observe_tls_gate, name),
                "on_proxy_refused": functools.partial(metrics.observe_proxy_refused, name)}

    def _feedback_observers(self, name: str) -> dict[str, Any]:
        """The feedback listener's metrics hooks: sessions, refused reports, accept()
        failures, implicit-TLS handshakes (the unparsed store's are wired in build())."""
        metrics = self.metrics
        return {"on_session": metrics.observe_feedback_session,
                "on_report": metrics.observe_feedback_report,
                "on_accept_failure": metrics.observe_accept_failure,
                "on_handshake": functools.partial(metrics.observe_tls_gate, name)}

    async def _prune_loop(self) -> None:
        """Forget sent-message records older than suppression.feedback_window, quota
        counts older than 24 hours and reputation counts past reputation.max_window."""
        while True:
            try:
                now = self.clock.now()
                before = now - self.cfg.suppression.feedback_window
                links_before = now - float(self.cfg.admin.tracked_link_retention)
                await self.store.write(prune_sent_op(self.store, before,
                                                     min(before, links_before)))
                await self.store.write(quotastore.prune_op(self.store, now))
                await self.store.write(repstore.prune_op(
                    self.store, now, float(self.cfg.reputation.max_window)))
                # Engagement older than the engaged window, in bounded ops.
                window = float(self.live.current.warmup.engaged_window)
                resume = b""
                while True:
                    resume = await self.store.write(engagement.prune_op(
                        self.store, now - window, resume))
                    if not resume:
                        break
                self.parts.quotas.sweep(now)
            except Exception:
                log.exception("pruning sent-message records failed")
            await self.clock.sleep(3600.0)

    def listener_status(self) -> list[dict[str, object]]:
        return [{"address": str(s.listener.address), "port": s.port, "tls": s.listener.tls,
                 "auth": s.listener.auth, "open_sessions": len(s.context.sessions)}
                for s in self.listeners if s.sockets]

    async def _start_admin(self) -> None:
        gate = self.shaped.gate if self.shaped is not None else None
        tokens = TokenStore.in_state_dir(self.state_dir)
        if self.cfg.server.dev_credential and not tokens.list():
            # make run: an admin token for the dashboard, printed once like the credential.
            self.dev_admin_token = tokens.add(DEV_USER)
        ctx = AdminContext(
            config=self.live.get, store=self.store, users=self.users,
            tokens=tokens, events=self.events,
            metrics=self.metrics, clock=self.clock, wake_scheduler=self.scheduler.wake,
            identities=self.identities, dkim_keys=self.dkim_keys, warmup_gate=gate,
            listeners=self.listener_status, verp=self.verp, tenants=self.tenants,
            message_history=self.parts.history, stats=self.parts.stats, cluster=self.cluster,
            tracked_links=self.parts.tracked_links, engagement=self.parts.engagement,
            draining=self.drain, **self._sent_last_24_hours())
        self.metrics.add_collector(StateCollector(
            depth=ctx.depth, oldest_age=ctx.oldest_age,
            open_sessions=lambda: {str(s.listener.address): len(s.context.sessions)
                                   for s in self.listeners},
            warmup=ctx.warmup_status, outbox=self.event_router.backlog,
            loop=self._loop_figures))
        self.metrics.add_collector(EventLogCollector(
            self.events, lambda: self.event_router.files))
        self.admin = AdminServer(ctx, self.cfg.admin.address)
        await self.admin.start()

    async def _start_api(self) -> None:
        """The SES HTTP API (worker 0 only, like the admin API); with dev_credential, a
        development access key for the dev credential, printed once, when it has none."""
        parts, cfg = self.parts, self.cfg
        if cfg.server.dev_credential and self.users.get(DEV_USER) is not None \
                and not parts.api_keys.list_keys(DEV_USER):
            self.dev_api_key = parts.api_keys.create(DEV_USER)
        ctx = ApiContext(
            config=self.live.get, clock=self.clock, users=self.users,
            identities=self.identities, tenants=parts.tenants, quotas=parts.quotas,
            account=parts.account, submitter=parts.mail_from_gate, store=self.store,
            templates=TemplateStore(self.store, self.clock),
            dkim_selectors=self._dkim_selectors, dkim_keygen=self._dkim_keygen,
            sender_check=parts.sender_policy, on_reject=parts.submitter.reject,
            mail_from_status=parts.outbound.mail_from_status,
            on_rendering_failure=parts.submitter.rendering_failure, cluster=self.cluster,
            draining=self.drain)
        api = cfg.api
        tls = server_context(Path(api.tls_cert), Path(api.tls_key)) if api.tls_cert else None
        self.api = ApiServer(ctx, parts.api_keys, address=api.address,
                             region=lambda: self.live.current.api.region,
                             max_body=lambda: int(self.live.current.api.max_body_size),
                             tls=tls)
        await self.api.start()

    def _dkim_selectors(self, domain: str) -> tuple[list[str], list[str]]:
        """The active and pending DKIM selectors of `domain` (none when it has no keys)."""
        try:
            keys = self.dkim_keys.get(domain)
        except Exception:  # an unreadable key file: nothing to show
            keys = None
        active = keys.active if keys is not None else None
        pending = keys.pending if keys is not None else None
        return ([k.selector for k in active.keys] if active else [],
                [k.selector for k in pending.keys] if pending else [])

    def _dkim_keygen(self, domain: str) -> None:
        """First DKIM keys for `domain` (`relay dkim keygen`), unless it has some."""
        with contextlib.suppress(DkimError):  # it has keys already
            self.dkim_keys.keygen(domain)

    def _sent_last_24_hours(self) -> dict[str, Any]:
        """One process: its quota book, reservations included (no spool read); several:
        the counts every worker committed to the spool (AdminContext's default)."""
        if self.worker is not None:
            return {}
        quotas, now = self.parts.quotas, self.clock.now
        return {"sent_last_24_hours":
                lambda _store, name: quotas.sent_last_24h(tenant_scope(name), now())}

    def _loop_figures(self) -> tuple[float, float]:
        gate = self.scheduler.gate
        return self.loop_lag.last_lag, gate.held_seconds if gate is not None else 0.0

    # ------------------------------------------------------------------ reload (SIGHUP)

    # Sections applied by reload; a change anywhere else is reported as needing a restart.
    LIVE_SECTIONS = frozenset({"tls", "dkim", "admin"})

    def reload(self, path: Path) -> tuple[bool, str]:
        """Re-read config, TLS certificate, credentials and DKIM keys; keep everything
        running (listeners, sessions, queue). An invalid config or certificate changes
        nothing. Returns (applied, one-line summary)."""
        try:
            new = worker_share(load(path), self.worker)
        except ConfigError as e:
            return False, f"config {path} is not valid, keeping the running one: " + \
                "; ".join(e.problems)
        old = self.cfg
        if self.tls is not None:
            try:
                if new.tls.cert:
                    cert, key = Path(new.tls.cert), Path(new.tls.key)
                else:
                    cert, key = ensure_self_signed(self.state_dir, new.server.hostname)
                server_context(cert, key)  # validate on a scratch context first
                # Same SSLContext object the listeners use: new handshakes get the new
                # certificate, established sessions keep theirs.
                self.tls.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as e:
                return False, f"TLS certificate not loaded, keeping the running one: {e}"
        needs_restart = []
        for field in msgspec.structs.fields(Config):
            name = field.name
            if name in self.LIVE_SECTIONS or getattr(old, name) == getattr(new, name):
                continue
            if name == "server" and msgspec.structs.replace(
                    old.server, log_level=new.server.log_level) == new.server:
                continue
            if name == "api" and msgspec.structs.replace(
                    old.api, region=new.api.region) == new.api:
                continue  # the region is read per request (SigV4, SES SMTP passwords)
            needs_restart.append(name)
        if old.admin.address != new.admin.address or old.admin.enabled != new.admin.enabled:
            needs_restart.append("admin")
        self.live.replace(new)
        logfmt.set_level(new.server.log_level)
        # Credentials, identities and DKIM state are files the stores re-read when they
        # change; drop the DKIM key cache so a replaced key file is read again too.
        for cache in ("_cache", "_private"):
            getattr(self.dkim_keys, cache, {}).clear()
        self.users.read_all()
        self.users.refresh()
        self.parts.api_keys.refresh()
        self.identities.refresh()
        summary = "reloaded config, TLS certificate, credentials and DKIM keys"
        if needs_restart:
            summary += ("; changes to " + ", ".join(f"[{n}]" for n in needs_restart)
                        + " take effect at the next restart")
        return True, summary

    async def _dkim_loop(self) -> None:
        """DKIM rotation on schedule; switch to a pending selector once it is in DNS."""
        while True:
            try:
                for line in await rotation_tick(self.dkim_keys, self.resolver,
                                                now=self.clock.now(),
                                                rotate_every=self.cfg.dkim.rotate_every):
                    log.info("dkim: %s", line)
            except Exception:
                log.exception("DKIM rotation check failed")
            await self.clock.sleep(self.cfg.dkim.check_interval)

    async def stop(self) -> None:
        self._dkim_task.cancel()
        self._prune_task.cancel()
        if self.history_pruner is not None:
            await self.history_pruner.stop()
        for fb in self.feedback_listeners:
            await fb.stop()
        if self.api is not None:
            await self.api.stop()
        if self.admin is not None:
            await self.admin.stop()
        for server in self.listeners:
            await server.stop()
        await self.scheduler.stop()
        await self.loop_lag.stop()
        await self.journal.stop()
        await self.monitor.stop()  # the last reputation counts, before the final commit
        if self.shaped is not None:
            await self.shaped.close()
        await self.sender.close()
        if self.cluster is not None:
            # After the listeners, deliveries and connections: the last sessions' quota
            # give-backs, the last transactions' warm-up refunds, the closed connections'
            # leases and the monitor's last pause reach Redis before the client closes.
            await self.cluster.stop()
        await self.event_router.stop()
        if self.history_recorder is not None:
            # After delivery and the journal stopped: the last attempts and events, in
            # the final commit.
            await self.history_recorder.stop()
        self.sent_from.flush()  # the last deliveries' attributions, in the final commit
        if self.parts.tracked_links is not None:
            self.parts.tracked_links.flush()  # the last tracked copies' links, likewise
        await self.store.close()
        self.events.close()


# Young objects collected per pass (gc generation 0's threshold: allocations of tracked
# objects minus their deallocations). A closed client connection leaves ~75 objects in
# reference cycles (its session, TLS object and buffers, transport, handler task and the
# CancelledError that ended it, with its traceback's frames), which only the collector
# frees; nothing else a message does leaves much. So this number sets how many closed
# connections one pass frees at once: at 50,000, ~650 of them, a 45-55 ms pause of the
# event loop every few seconds with a new connection per message (the tail of
# end-of-DATA -> 250; up to 177 ms measured on a loaded machine); at 10,000, ~130, a
# pause of ~10 ms, and no more collector time in all (bench/RESULTS.md, "a new
# connection's CPU in the full relay").
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """After start-up: what was built lives for the whole process, so it is taken out of
    the cyclic collector's view (without that a full collection paused the event loop
    45-60 ms about every 5 s under load); young objects are collected in passes of
    GC_YOUNG_THRESHOLD, the older generations rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


async def serve(cfg: Config, config_path: Path | None = None,
                worker: tuple[int, int] | None = None,
                early: EarlySignals | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain and exit; SIGHUP reloads `config_path`.

    Under systemd (Type=notify) readiness, reloads and the stop are reported through
    $NOTIFY_SOCKET; relay's own status lines go to stdout either way. As a worker of
    relay/supervisor.py (`worker` = (index, count)), readiness goes to the supervisor
    through the descriptor in $RELAY_READY_FD, and the worker drains and exits when the
    supervisor is gone. `early`: signals recorded before the loop ran (relay/signals.py)."""
    early = early if early is not None else EarlySignals()
    loop = asyncio.get_running_loop()
    # Handlers before any port opens: a SIGTERM or SIGHUP that arrives while the
    # listeners start must not take the default action (SIGHUP's ends the process). A
    # stop then drains once started; a reload runs once there is something to reload.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: setattr(early, "hangup", True))
    if early.stop:
        return  # asked to stop before anything started

    def orphaned() -> None:
        log.warning("the supervisor has exited; this worker stops (draining)")
        stop.set()

    watch_supervisor(loop, orphaned)
    app = RelayApp(cfg, worker=worker)
    await app.start()
    tune_gc()
    if app.dev_password is not None:
        print(f"relay: development credential (shown once): user {DEV_USER!r} "
              f"password {app.dev_password!r}", flush=True)
    if app.dev_admin_token is not None:
        print(f"relay: development admin token (shown once): {app.dev_admin_token!r} "
              "(Authorization: Bearer TOKEN; paste it into the dashboard)", flush=True)
    for server, lst in zip(app.listeners, [x for x in cfg.listener if x.role == "submission"],
                           strict=True):
        print(f"relay: listening on {lst.address} (tls={lst.tls}, auth={lst.auth}) "
              f"port {server.port}", flush=True)
    for fb in app.feedback_listeners:
        print(f"relay: feedback listener on {fb.listener.address} port {fb.port}", flush=True)
    if app.dev_api_key is not None:
        key_id, secret = app.dev_api_key
        print(f"relay: development SES API access key (shown once): {key_id!r} secret "
              f"{secret!r} (region {cfg.api.region!r})", flush=True)
    if app.api is not None:
        print(f"relay: SES API on {cfg.api.address} port {app.api.port} "
              f"({'https' if app.api.tls is not None else 'http'})", flush=True)
    if app.admin is not None:
        print(f"relay: admin API and dashboard on {cfg.admin.address} port {app.admin.port}",
              flush=True)
    if app.worker is not None:
        print(f"relay: worker {app.worker[0]} of {app.worker[1]} ready (pid {os.getpid()}, "
              f"recovered {app.recovered})", flush=True)
        ready_fd = os.environ.pop("RELAY_READY_FD", "")
        if ready_fd.isdigit():
            with contextlib.suppress(OSError):
                os.write(int(ready_fd), b"r")
                os.close(int(ready_fd))
    else:
        print(f"relay: ready (state {app.state_dir}, recovered {app.recovered})", flush=True)
    sdnotify.notify("READY=1", f"STATUS=serving, {len(app.listeners)} listener(s)")

    def hangup() -> None:
        app.drain.refresh()  # `relay node drain` / `undrain` (relay/drain.py)
        if config_path is None:
            log.warning("SIGHUP: relay runs on the embedded config; nothing to reload")
            return
        sdnotify.reloading()
        try:
            applied, summary = app.reload(config_path)
        except Exception as e:  # a reload must never take the server down
            log.exception("reload failed")
            applied, summary = False, f"reload failed, keeping the running config: {e}"
        if applied:
            log.info("%s", summary)
        else:
            log.error("reload refused: %s", summary)
        print(f"relay: {'reloaded' if applied else 'reload refused'}: {summary}", flush=True)
        sdnotify.notify("READY=1")

    loop.add_signal_handler(signal.SIGHUP, hangup)
    if early.take_hangup() and not stop.is_set():
        hangup()  # arrived while starting: the config may have changed since it was read
    await stop.wait()
    sdnotify.notify("STOPPING=1")
    print("relay: stopping (draining)", file=sys.stderr, flush=True)
    await app.stop()
