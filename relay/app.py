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
import contextlib
import gc
import logging
import os
import random
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from relay import configsets, logfmt, sdnotify, simulator
from relay.admin.api import AdminContext
from relay.admin.metrics import EventLogCollector, Metrics, StateCollector
from relay.admin.server import AdminServer
from relay.admin.tokens import TokenStore
from relay.clock import Clock, SystemClock
from relay.config import Config, ConfigError, load
from relay.delivery.attempts import RecordingSender
from relay.delivery.client import Sender
from relay.delivery.mtasts_fetch import MtaSts
from relay.delivery.routing import Router
from relay.delivery.scheduler import Scheduler
from relay.delivery.sentfrom import SentFrom
from relay.delivery.shaper import ShapedSender, provider_map
from relay.delivery.yielding import DeliveryGate, LoopLag
from relay.dkim.keys import KeyStore
from relay.dkim.sign import Signer
from relay.dns.resolver import DnsResolver
from relay.events.destinations import EventRouter
from relay.events.headers import header_fields, without_fields
from relay.events.journal import EventJournal
from relay.events.log import EventLog
from relay.events.model import Event, reject_event, send_event
from relay.feedback.listener import FeedbackServer, owned_domains
from relay.feedback.processor import FeedbackProcessor
from relay.identity.authorize import SenderPolicy
from relay.identity.check import rotation_tick
from relay.identity.gate import MailFromGate
from relay.identity.outbound import Outbound
from relay.identity.store import IdentityStore
from relay.queue.records import MessageRecord
from relay.queue.store import NewMessage, QueueStore, new_message_id
from relay.signals import EarlySignals
from relay.simulator import Simulator
from relay.smtp import AuthPolicy, SubmissionServer
from relay.smtp import replies as R
from relay.smtp.session import MessageRefused
from relay.supervisor import watch_supervisor, worker_share
from relay.suppression.guard import Suppressor
from relay.tlsutil import ensure_self_signed, server_context
from relay.users import UserStore
from relay.verp import Verp
from relay.warmup import lanes

log = logging.getLogger("relay")

DEV_USER = "dev"


class QueueSubmitter:
    """What the SMTP server calls: durable submit, then a Send event and a scheduler nudge."""

    def __init__(self, store: QueueStore, events: EventLog, scheduler: Scheduler,
                 config: Callable[[], Config] | None = None,
                 users: UserStore | None = None) -> None:
        self.store = store
        self.events = events
        self.scheduler = scheduler
        self.config = config
        self.users = users  # a credential's default configuration set
        self.on_accept: list[Callable[[], None]] = []
        # When set, the Send event is committed with the message (relay/events/journal.py).
        self.journal: EventJournal | None = None

    def _choose_set(self, msg: NewMessage) -> str:
        """Set msg.configuration_set from the header, else the credential's default;
        return the header's name when it names no configured set ("" otherwise)."""
        if self.config is None:
            return ""
        requested = configsets.requested_set(msg.body, msg.header_fields)
        default = ""
        if not requested and self.users is not None and msg.auth_user:
            default = self.users.default_configuration_set(msg.auth_user)
        msg.configuration_set = configsets.resolve(self.config(), requested, default)
        if default and not msg.configuration_set:
            log.warning("user %r has default configuration set %r, which is not configured; "
                        "sent without one", msg.auth_user, default)
        return requested if requested and not msg.configuration_set else ""

    def reject(self, msg: NewMessage, reason: str) -> None:
        """A Reject event (SES `reject.reason`) for a message refused for policy after DATA."""
        if self.config is not None and not msg.configuration_set:
            self._choose_set(msg)
        now = self.store.clock.now()
        fields, truncated = header_fields(msg.body, known=msg.header_fields)
        record = MessageRecord(
            id=new_message_id(now), sender=msg.sender, recipients=list(msg.recipients),
            received_at=now, size=len(msg.body), client_ip=msg.client_ip, helo=msg.helo,
            auth_user=msg.auth_user, headers=dict(msg.headers), tags=dict(msg.tags),
            configuration_set=msg.configuration_set, header_fields=fields,
            headers_truncated=truncated)
        self.events.emit([reject_event(record, reason)])

    async def submit(self, msg: NewMessage,
                     on_durable: Callable[[str], None] | None = None) -> str:
        # Configuration set (X-SES-CONFIGURATION-SET) and tag headers never leave relay.
        unknown = self._choose_set(msg)
        if unknown:
            # As SES: a set that does not exist refuses the message (554), with a Reject.
            self.reject(msg, f"Configuration set {unknown} does not exist")
            raise MessageRefused(R.CONFIGURATION_SET_UNKNOWN.with_text(
                R.CONFIGURATION_SET_UNKNOWN.text.format(name=unknown)))
        stripped = configsets.strip_headers(msg.body, msg.header_fields)
        if stripped is not msg.body:
            msg.header_fields = without_fields(msg.header_fields, configsets.STRIPPED)
        msg.body = stripped
        journal = self.journal
        if journal is None:
            record = await self.store.submit_record(msg, on_durable=on_durable)
            self.events.emit([send_event(record)])
        else:
            staged: list[bytes] = []
            sent: list[Event] = []

            def stage(txn: object, rec: MessageRecord) -> None:
                sent.append(send_event(rec))
                staged.extend(journal.stage(txn, sent))

            record = await self.store.submit_record(msg, also=stage, on_durable=on_durable)
            journal.published(sent, staged)
        for cb in self.on_accept:
            cb()
        self.scheduler.wake()
        return record.id


def _bound(sockets: Iterable[socket.socket]) -> set[tuple[str, int]]:
    """The (ip, port) each listening socket is bound to."""
    return {(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in sockets}


class RelayApp:
    def __init__(self, cfg: Config, clock: Clock | None = None,
                 rng: random.Random | None = None,
                 worker: tuple[int, int] | None = None) -> None:
        self.cfg = cfg
        # Multi-process mode (relay/supervisor.py): (index, count). Worker i owns the
        # destinations of shard i (delivery, recovery); worker 0 also runs the admin API
        # and the feedback listener.
        self.worker = worker if worker is not None and worker[1] > 1 else None
        # A worker enforces its share of per-destination limits (relay/supervisor.py).
        cfg = self.cfg = worker_share(cfg, self.worker)
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.state_dir = cfg.state_path
        self.listeners: list[SubmissionServer] = []
        self.recovered = 0
        self.dev_password: str | None = None
        self.dev_admin_token: str | None = None
        self.metrics = Metrics()
        self.admin: AdminServer | None = None
        self.tls: ssl.SSLContext | None = None
        self.feedback_listeners: list[FeedbackServer] = []
        self._gate_flushes: set[asyncio.Task[None]] = set()
        # The bound (ip, port) of each listener: mail routed there loops back (554 5.4.6).
        self.own_addresses: set[tuple[str, int]] = set()
        # (queue id, recipient domain) -> (source IP, provider) of attempts, so a late
        # reputation bounce or a complaint reaches the warm-up state of the IP that sent,
        # in whichever worker it arrives, and after a restart (set in start()).
        self.sent_from = SentFrom(None)

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
        self.store.shard = self.worker
        self.recovered = self.store.write_now(self.store.recover_op(self.clock.now(),
                                                                    shard=self.worker))
        if self.recovered:
            log.warning("recovered %d recipients that were in flight at the last stop",
                        self.recovered)
        await self.store.start()
        self.sent_from = SentFrom(self.store)
        stats = self.store.stats
        self.store.on_commit.append(
            lambda: self.metrics.observe_commit(stats.last_batch, stats.last_fsync_seconds))
        events_path = Path(cfg.events.log)
        self.events = EventLog(events_path if events_path.is_absolute()
                               else self.state_dir / events_path, self.clock)
        self.users = UserStore(self.state_dir / "users.json", self.clock, recheck=0.5)
        if cfg.server.dev_credential and not self.users.names() and not self._secondary:
            self.dev_password = secrets.token_urlsafe(18)
            self.users.add(DEV_USER, self.dev_password)
        self.resolver = DnsResolver.from_config(cfg.dns, self.clock)
        self.router = Router(cfg.delivery, self.resolver, self.rng, mta_sts=MtaSts(
            self.resolver, self.state_dir, self.clock,
            timeout=float(cfg.delivery.mta_sts_timeout)) if cfg.delivery.mta_sts else None,
            own_addresses=self.own_addresses, clock=self.clock)
        self.sender = Sender(cfg.delivery, hostname=cfg.server.hostname, clock=self.clock)
        # Below the shaper: one log line and one metric per attempted transaction.
        self.attempts = RecordingSender(self.sender, provider_map(cfg),
                                        default_source=cfg.delivery.source_address,
                                        observers=[self.metrics.observe_attempt,
                                                   self._remember_attempt])
        # Pools and warm-up (delivery.pool): transactions go through the shaper, which picks
        # and binds the source IP, keeps the per-IP caps and holds the excess. The pool and
        # priority lane of each message: its configuration set, then its credential's
        # default pool, then delivery.pool (relay/warmup/lanes.py).
        self.shaped = (ShapedSender(cfg, self.attempts, self.store, self.clock,
                                    share=self.worker)
                       if cfg.delivery.pool or cfg.pool else None)
        if self.shaped is not None:
            self.shaped.choose = self._pool_and_lane
            self.shaped.event_log = self.events
        # Looked at on every message: at most every 0.5 s (an edit by `relay identity`
        # shows within that; SIGHUP at once).
        self.identities = IdentityStore.in_state_dir(self.state_dir, self.clock, recheck=0.5)
        self.dkim_keys = KeyStore.in_state_dir(self.state_dir, self.clock,
                                               rsa_bits=cfg.dkim.rsa_bits, recheck=0.5)
        verp = Verp.from_state_dir(self.state_dir)
        outbound = Outbound(
            signer=Signer(self.dkim_keys, store=self.store), verp=verp,
            resolver=self.resolver, identities=cfg.identity,
            default_domain=cfg.server.return_path_domain or cfg.server.hostname,
            unsubscribe_base=lambda msg: configsets.unsubscribe_base(
                self.cfg, msg.configuration_set))
        self.verp = verp
        self.scheduler = Scheduler(self.store, self.router, self.shaped or self.attempts,
                                   self.events, self.clock,
                                   cfg.delivery, hostname=cfg.server.hostname, rng=self.rng,
                                   outbound=outbound)
        if self.worker is not None:
            # Another worker's submissions do not wake this one: poll more often.
            self.scheduler.poll_interval = min(self.scheduler.poll_interval, 0.2)
        # Suppression, feedback (bounces/complaints), the mailbox simulator, event routing.
        self.suppressor = Suppressor(self.store, lambda: self.cfg)
        self.scheduler.suppression = self.suppressor
        self.scheduler.after_settle.append(self.suppressor.after_settle)
        self.scheduler.configuration_set = lambda name: self.cfg.configuration_set_named(name)
        self.scheduler.lane_of = lambda msg: lanes.priority_of(self.cfg, msg)
        self.feedback = FeedbackProcessor(
            self.store, verp, self.events, self.clock, lambda: self.cfg, self.state_dir,
            on_reputation=self._reputation_bounce, on_complaint=self._complaint)
        self.scheduler.simulator = Simulator(
            clock=self.clock, store=self.store, feedback=self.feedback, verp=verp,
            return_domain=cfg.server.return_path_domain or cfg.server.hostname,
            observers=[self.metrics.observe_attempt])  # never _remember_attempt: no reputation
        # One outbox for all workers; worker 0 POSTs it, and looks every second because
        # the other workers' events do not wake it.
        self.event_router = EventRouter(lambda: self.cfg, self.store, self.clock,
                                        self.state_dir, drain=not self._secondary,
                                        poll=1.0 if self.worker is not None else 0.0)
        self.events.subscribers.append(self.event_router)
        await self.event_router.start()
        # Events are staged with the state changes they report and replayed after a crash.
        self.journal = EventJournal(self.store, self.events, self.clock)
        if not self._secondary:
            self.journal.replay()  # one worker publishes what the last run left staged
        self.journal.start()
        self.scheduler.journal = self.journal
        self._prune_task = asyncio.create_task(self._prune_loop(), name="feedback-prune")
        self._dkim_task = asyncio.create_task(self._dkim_loop(), name="dkim-rotation")
        # Accept first: delivery gives this process's loop to a burst of submissions.
        self.loop_lag = LoopLag()
        self.scheduler.gate = DeliveryGate(self.loop_lag,
                                           max_hold=cfg.delivery.accept_first_max_hold)
        self.scheduler.gate.on_open.append(self.scheduler.wake)
        self.loop_lag.start()
        self.scheduler.start()
        submitter = QueueSubmitter(self.store, self.events, self.scheduler, lambda: self.cfg,
                                   self.users)
        submitter.journal = self.journal
        submitter.on_accept.append(self.metrics.accepted.inc)
        submitter.on_accept.append(self.scheduler.gate.accepted)
        # on_mx_failure = "reject": refused at the end of DATA when MAIL FROM has no MX.
        gate = MailFromGate(submitter, outbound, reject=submitter.reject)
        self.metrics.complaint_source = self._complaint_source
        self.events.subscribers.append(self.metrics.observe_event)
        tls = self.tls = self._tls_context()
        # One lockout tracker for every listener: a lockout on 587 holds on 465 too.
        auth_policy = AuthPolicy(cfg.limits.auth_failure_delay, cfg.limits.auth_max_failures,
                                 cfg.limits.auth_lockout)
        # "off" still holds a credential to its explicit allow list (relay user add --allow).
        sender_check = SenderPolicy(
            self.identities, self.users,
            require_verified=cfg.server.sender_authorization == "verified")
        for lst in cfg.listener:
            if lst.role == "feedback":
                if self._secondary:
                    # One feedback listener, in worker 0; mail routed to it still loops.
                    self.own_addresses.add((str(lst.address.host), lst.address.port))
                    continue
                fb = FeedbackServer(lst, cfg.server.hostname, self.feedback,
                                    lambda: owned_domains(self.cfg), tls,
                                    limits=cfg.limits, feedback=cfg.feedback)
                self._observe_feedback(fb, str(lst.address))
                await fb.start()
                self.own_addresses.update(_bound(fb.sockets))
                self.feedback_listeners.append(fb)
                continue
            if lst.role != "submission":
                continue
            server = SubmissionServer(lst, cfg.limits, cfg.server.hostname, gate,
                                      self.users, self.clock, tls, auth_policy=auth_policy,
                                      sender_check=sender_check)
            self._observe(server, str(lst.address))
            server.context.on_reject = submitter.reject
            server.reuse_port = self.worker is not None
            await server.start()
            self.own_addresses.update(_bound(server.sockets))
            self.listeners.append(server)
        if cfg.admin.enabled and not self._secondary:
            await self._start_admin()

    @property
    def _secondary(self) -> bool:
        """A worker other than worker 0 in multi-process mode."""
        return self.worker is not None and self.worker[0] != 0

    def _observe(self, server: SubmissionServer, name: str) -> None:
        """Session and reply metrics through the listener context's hooks."""
        ctx = server.context
        admit = ctx.admit

        def counted(ip: str) -> object:
            refusal = admit(ip)
            self.metrics.observe_session(name, refusal)
            return refusal

        ctx.admit = counted  # type: ignore[assignment]
        ctx.on_reply = self.metrics.observe_reply
        ctx.on_auth = self.metrics.observe_auth
        server.on_accept_failure = self.metrics.observe_accept_failure
        server.on_handshake = lambda result: self.metrics.observe_tls_gate(name, result)

    def _observe_feedback(self, server: FeedbackServer, name: str) -> None:
        """The feedback listener's metrics: sessions, refused reports, the unparsed store."""
        server.on_session = self.metrics.observe_feedback_session
        server.on_report = self.metrics.observe_feedback_report
        server.on_accept_failure = self.metrics.observe_accept_failure
        server.on_handshake = lambda result: self.metrics.observe_tls_gate(name, result)
        self.feedback.unparsed.on_kept = self.metrics.observe_unparsed_kept
        self.feedback.unparsed.on_dropped = self.metrics.observe_unparsed_dropped

    def _pool_and_lane(self, msg: Any) -> tuple[str, int]:
        credential = self.users.default_pool(msg.auth_user) if msg.auth_user else ""
        return (lanes.pool_of(self.cfg, msg, credential), lanes.priority_of(self.cfg, msg))

    # ------------------------------------------------------------------ reputation feedback

    def _remember_attempt(self, attempt: Any) -> None:
        # Feedback follows only a delivery the remote accepted; a refusal is handled below.
        self.sent_from.remember(attempt.queue_id, attempt.recipient_domain,
                                attempt.source_ip, attempt.provider,
                                durable=attempt.kind == "delivered")
        if attempt.kind == "bounced":
            from relay.suppression.policy import FailureClass, classify_failure
            if classify_failure(attempt.response) is FailureClass.REPUTATION:
                self._to_gate(attempt.source_ip, attempt.provider, attempt.response)

    def _to_gate(self, ip: str, provider: str, response: str) -> None:
        """A reputation/policy refusal: the warm-up backoff of the IP that got it."""
        if self.shaped is None or not ip:
            log.warning("reputation refusal (%s): %s", ip or "default source", response)
            return
        from relay.warmup.reputation import note_refusal
        for notice in note_refusal(self.shaped.gate, ip, provider, response,
                                   self.clock.now()):
            log.warning("%s", notice)
        self.shaped.publish()
        # Persist now (a late DSN is not followed by a send that would): `relay warmup
        # status` and a restart see the backoff.
        task = asyncio.get_running_loop().create_task(self.shaped.flush())
        self._gate_flushes.add(task)
        task.add_done_callback(self._gate_flushes.discard)

    def _reputation_bounce(self, msg: Any, address: str, diagnostic: str) -> None:
        found = self.sent_from.lookup(msg.id, address.rpartition("@")[2])
        if found is None:
            log.warning("reputation bounce for %s (message %s), sending IP unknown: %s",
                        address, msg.id, diagnostic)
            return
        self._to_gate(found[0], found[1], diagnostic)

    def _complaint_source(self, event: Any) -> tuple[str, str] | None:
        """(source IP, provider) of the delivery a Complaint event is about, if recent."""
        for r in getattr(event.complaint, "complainedRecipients", None) or []:
            if r.emailAddress.rpartition("@")[2].lower() == simulator.DOMAIN:
                return simulator.SOURCE, simulator.PROVIDER
            found = self.sent_from.lookup(event.mail.messageId,
                                          r.emailAddress.rpartition("@")[2])
            if found is not None:
                return found
        return None

    def _complaint(self, msg: Any, address: str) -> None:
        found = self.sent_from.lookup(msg.id, address.rpartition("@")[2])
        if found is not None and self.shaped is not None:
            notice = self.shaped.gate.note_complaint(found[0], self.clock.now())
            if notice:
                log.warning("%s", notice)
            self.shaped.publish()

    async def _prune_loop(self) -> None:
        """Forget sent-message records older than suppression.feedback_window."""
        while True:
            try:
                before = self.clock.now() - self.cfg.suppression.feedback_window
                await self.store.write(self.store.prune_sent_op(before))
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
            config=lambda: self.cfg, store=self.store, users=self.users,
            tokens=tokens, events=self.events,
            metrics=self.metrics, clock=self.clock, wake_scheduler=self.scheduler.wake,
            identities=self.identities, dkim_keys=self.dkim_keys, warmup_gate=gate,
            listeners=self.listener_status, verp=self.verp)
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
            needs_restart.append(name)
        if old.admin.address != new.admin.address or old.admin.enabled != new.admin.enabled:
            needs_restart.append("admin")
        self.cfg = new
        logfmt.set_level(new.server.log_level)
        # Credentials, identities and DKIM state are files the stores re-read when they
        # change; drop the DKIM key cache so a replaced key file is read again too.
        for cache in ("_cache", "_private"):
            getattr(self.dkim_keys, cache, {}).clear()
        self.users.read_all()
        self.users.refresh()
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
        for fb in self.feedback_listeners:
            await fb.stop()
        if self.admin is not None:
            await self.admin.stop()
        for server in self.listeners:
            await server.stop()
        await self.scheduler.stop()
        await self.loop_lag.stop()
        await self.journal.stop()
        if self.shaped is not None:
            await self.shaped.close()
        await self.sender.close()
        await self.event_router.stop()
        self.sent_from.flush()  # the last deliveries' attributions, in the final commit
        await self.store.close()
        self.events.close()


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
    # Everything built at start-up lives for the whole process: take it out of the cyclic
    # collector's view, and collect young objects in bigger, rarer passes. Without this a
    # full collection paused the event loop 45-60 ms about every 5 s under load (measured
    # with gc.callbacks; bench/RESULTS.md, issue 7); with it, at most ~8 ms.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
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
