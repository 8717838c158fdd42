"""Builds one relay process's object graph from a Config: `build(cfg, clock, overrides)`.

Constructor injection only: every part is given what it needs when it is made, and nothing
is set on a part or appended to one of its hooks afterwards, so `Components` can be read
top to bottom as the data flow (docs/architecture.md). Two parts need one built after
them, and get an explicit forward reference (`Late`) rather than a later assignment:
reputation feedback reaches the warm-up shaper, and the delivery gate wakes the scheduler;
the metrics ask reputation feedback which IP sent a complained-about message, and read the
message history's size and the recorder's drops.

`build()` starts nothing and does no network I/O: it opens the spool and the state files
as the parts' constructors do. Starting, in the order that accepts nothing before it can
be stored and delivers nothing before recovery, is `relay.app.RelayApp.start()`'s job (and
`relay.testing.harness`'s, for tests). `Overrides` replaces parts at the edges for tests:
the random source, the resolver, the network client, the simulator, the loop-lag probe and
the delivery gate, the scheduler's poll interval.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Generic, TypeVar

from relay import configsets, simulator
from relay.admin.metrics import HistoryUsage, Metrics
from relay.clock import Clock, SystemClock
from relay.config import Config
from relay.delivery.attempts import RecordingSender
from relay.delivery.client import Sender
from relay.delivery.mtasts_fetch import MtaSts
from relay.delivery.outcome import Sender as SenderLike
from relay.delivery.routing import Router
from relay.delivery.scheduler import LocalDeliveryLike, Scheduler
from relay.delivery.sentfrom import SentFrom
from relay.delivery.shaper import ShapedSender, provider_map
from relay.delivery.yielding import DeliveryGate, LoopLag
from relay.dkim.keys import KeyStore
from relay.dkim.sign import Signer
from relay.dns.resolver import DnsResolver
from relay.events.destinations import EventRouter
from relay.events.journal import EventJournal
from relay.events.log import EventLog
from relay.feedback.processor import FeedbackProcessor
from relay.history.recorder import HistoryRecorder
from relay.history.retention import HistoryPruner
from relay.history.stats import StatsStore
from relay.history.store import HistoryStore
from relay.identity.authorize import SenderPolicy
from relay.identity.gate import MailFromGate
from relay.identity.outbound import Outbound
from relay.identity.store import IdentityStore
from relay.queue.records import PENDING_STATES
from relay.queue.store import QueueStore
from relay.sesapi.keys import ApiKeyStore
from relay.simulator import Simulator
from relay.smtp.authpolicy import AuthPolicy
from relay.smtp.submitter import QueueSubmitter
from relay.suppression.guard import Suppressor
from relay.tenants import quotastore, repstore
from relay.tenants.access import may_use
from relay.tenants.account import AccountGate
from relay.tenants.model import DEFAULT_TENANT
from relay.tenants.monitor import ReputationMonitor
from relay.tenants.quota import QuotaBook
from relay.tenants.reputation import Lines, ReputationBook
from relay.tenants.store import RECHECK_SECONDS, TenantStore
from relay.tracking.engagement import Engagement
from relay.tracking.links import TrackedLinks
from relay.users import UserStore
from relay.verp import Verp
from relay.warmup import lanes
from relay.warmup.feedback import ReputationFeedback

T = TypeVar("T")
_UNSET: Any = object()

# The delivery gate of `Overrides.gate`: made from the loop-lag probe and the hooks to call
# when a hold ends (the scheduler's wake).
GateFactory = Callable[[LoopLag, Sequence[Callable[[], None]]], DeliveryGate]


class Late(Generic[T]):
    """A part that another needs but that is built after it: `build()` sets it once,
    before anything starts; calling the holder returns it."""

    __slots__ = ("_value", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self._value: T = _UNSET

    def set(self, value: T) -> T:
        if self._value is not _UNSET:
            raise RuntimeError(f"{self.what} is built twice")
        self._value = value
        return value

    def __call__(self) -> T:
        if self._value is _UNSET:
            raise RuntimeError(f"{self.what} is used before it is built")
        return self._value


class LiveConfig:
    """The running Config. Parts that follow a reload (SIGHUP) read it through `get` (or,
    in build()'s own closures, `current`); `RelayApp.reload` replaces it."""

    __slots__ = ("current",)

    def __init__(self, cfg: Config) -> None:
        self.current = cfg

    def get(self) -> Config:
        return self.current

    def replace(self, cfg: Config) -> None:
        self.current = cfg


@dataclass(frozen=True)
class Overrides:
    """Parts replaced at the edges (tests); None: the production part."""

    rng: random.Random | None = None
    resolver: DnsResolver | None = None
    sender: Sender | None = None            # the network SMTP client, below the recorder
    simulator: LocalDeliveryLike | None = None
    loop_lag: LoopLag | None = None
    gate: GateFactory | None = None
    poll_interval: float | None = None      # the scheduler's idle poll, in seconds


@dataclass(frozen=True)
class Components:
    """Every part of one relay process, in the order `build()` makes them."""

    config: LiveConfig
    clock: Clock
    rng: random.Random
    worker: tuple[int, int] | None
    state_dir: Path
    metrics: Metrics
    store: QueueStore
    sent_from: SentFrom
    reputation: ReputationFeedback
    event_router: EventRouter
    events: EventLog
    journal: EventJournal
    users: UserStore
    api_keys: ApiKeyStore
    resolver: DnsResolver
    own_addresses: set[tuple[str, int]]
    router: Router
    sender: Sender
    attempts: RecordingSender
    shaped: ShapedSender | None
    identities: IdentityStore
    dkim_keys: KeyStore
    signer: Signer
    verp: Verp
    outbound: Outbound
    suppressor: Suppressor
    feedback: FeedbackProcessor
    simulator: LocalDeliveryLike
    loop_lag: LoopLag
    gate: DeliveryGate
    scheduler: Scheduler
    submitter: QueueSubmitter
    mail_from_gate: MailFromGate
    auth_policy: AuthPolicy
    sender_policy: SenderPolicy
    tenants: TenantStore
    quotas: QuotaBook
    reputation_book: ReputationBook
    monitor: ReputationMonitor
    account: AccountGate
    # The message history and sending statistics ([history] enabled; None otherwise): the
    # stores the admin API and the CLI read, the recorder fed by the event log and every
    # attempt (network and simulator), the pruner (worker 0 runs it).
    history: HistoryStore | None = None
    stats: StatsStore | None = None
    recorder: HistoryRecorder | None = None
    pruner: HistoryPruner | None = None
    # Open and click tracking: each tracked copy's links (for the /t/c/ redirect), and who
    # opened or clicked lately (the warm-up's engaged lane).
    tracked_links: TrackedLinks | None = None
    engagement: Engagement | None = None
    # [cluster] redis_url set: this process as a node (relay.cluster.node.ClusterNode:
    # shared quotas and pauses; worker 0 also writes the heartbeat). None: one node, and
    # redis is never imported.
    cluster: Any = None

    @property
    def secondary(self) -> bool:
        """A worker other than worker 0 in multi-process mode."""
        return self.worker is not None and self.worker[0] != 0

    @property
    def delivery(self) -> SenderLike:
        """The sender chain the scheduler calls: the shaper when pools are configured."""
        return self.shaped if self.shaped is not None else self.attempts


def lease_seconds(cfg: Config) -> float:
    d = cfg.delivery
    # Longer than any single attempt can take, so a live attempt is never leased twice.
    return float(d.connect_timeout + 4 * d.command_timeout + d.data_timeout + 60)


def build(cfg: Config, clock: Clock | None = None, overrides: Overrides | None = None, *,
          worker: tuple[int, int] | None = None,
          live: LiveConfig | None = None) -> Components:
    """The parts of one process for `cfg` (already given its worker's share, see
    relay/workers.py). `worker`: (index, count) in multi-process mode. `live`: the config
    cell a reload replaces (a new one when not given)."""
    over = overrides if overrides is not None else Overrides()
    clock = clock if clock is not None else SystemClock()
    live = live if live is not None else LiveConfig(cfg)
    config = live.get
    rng = over.rng if over.rng is not None else random.Random()
    secondary = worker is not None and worker[0] != 0
    state_dir = cfg.state_path
    state_dir.mkdir(parents=True, exist_ok=True)
    return_domain = cfg.server.return_path_domain or cfg.server.hostname

    late_reputation: Late[ReputationFeedback] = Late("reputation feedback")
    late_shaped: Late[ShapedSender | None] = Late("the warm-up shaper")
    late_scheduler: Late[Scheduler] = Late("the scheduler")
    late_monitor: Late[ReputationMonitor] = Late("the reputation monitor")
    late_history: Late[HistoryStore] = Late("the message history")
    late_recorder: Late[HistoryRecorder] = Late("the history recorder")

    def complaint_source(event: Any) -> tuple[str, str] | None:
        return late_reputation().complaint_source(event)

    keep_history = cfg.history.enabled
    metrics = Metrics(
        complaint_source=complaint_source,
        # The history's size, read from the spool at most every 30 s, off the loop.
        history_usage=HistoryUsage(lambda: late_history().usage(), clock)
        if keep_history else None,
        history_dropped=lambda: late_recorder().dropped)
    store = QueueStore(
        state_dir / "queue", clock, map_size=cfg.server.queue_map_size,
        commit_window=cfg.server.commit_window, commit_batch_max=cfg.server.commit_batch_max,
        lease_seconds=lease_seconds(cfg), shard=worker,
        commit_observers=[metrics.observe_store])
    # The message history: batches of what the event log and the attempts say, written
    # once per [history] flush with the group commit (never in an SMTP reply's path).
    history: HistoryStore | None = None
    stats: StatsStore | None = None
    recorder: HistoryRecorder | None = None
    pruner: HistoryPruner | None = None
    if keep_history:
        history = late_history.set(HistoryStore(store))
        stats = StatsStore(store)
        recorder = late_recorder.set(HistoryRecorder(store, history, clock,
                                                     flush=float(cfg.history.flush)))
        pruner = HistoryPruner(history, stats, clock, retention=float(cfg.history.retention),
                               stats_retention=float(cfg.history.stats_retention),
                               max_bytes=int(cfg.history.max_disk))
    # The recorder hears every event and every attempt (network and simulator alike).
    history_feed = [recorder] if recorder is not None else []
    attempt_history = [recorder.observe_attempt] if recorder is not None else []
    # (queue id, recipient domain) -> (source IP, provider) of attempts, so a late
    # reputation bounce or a complaint reaches the warm-up state of the IP that sent, in
    # whichever worker it arrives, and after a restart.
    sent_from = SentFrom(store)
    # Reputation refusals, late reputation bounces and complaints reach the warm-up gate
    # of the IP that sent (through the shaper, built below).
    reputation = late_reputation.set(ReputationFeedback(
        sent_from, late_shaped, clock.now,
        fixed={simulator.DOMAIN: (simulator.SOURCE, simulator.PROVIDER)}))
    # One outbox for all workers; worker 0 POSTs it, and looks every second because the
    # other workers' events do not wake it.
    event_router = EventRouter(config, store, clock, state_dir, drain=not secondary,
                               poll=1.0 if worker is not None else 0.0)
    events_path = Path(cfg.events.log)

    def count_reputation(event: Any) -> None:
        late_monitor()(event)

    events = EventLog(events_path if events_path.is_absolute() else state_dir / events_path,
                      clock, subscribers=[event_router, metrics.observe_event,
                                          count_reputation, *history_feed])
    # Events are staged with the state changes they report and replayed after a crash.
    journal = EventJournal(store, events, clock)
    users = UserStore(state_dir / "users.json", clock, recheck=0.5)
    # SES API access keys (each sends as one of `users`): the SigV4 verifier's lookup and
    # SMTP AUTH with a key id and its SES SMTP password.
    api_keys = ApiKeyStore(state_dir, clock, recheck=0.5)
    resolver = over.resolver if over.resolver is not None else DnsResolver.from_config(
        cfg.dns, clock)
    # The bound (ip, port) of each listener (RelayApp adds them as they bind): mail routed
    # there loops back (554 5.4.6).
    own_addresses: set[tuple[str, int]] = set()
    router = Router(cfg.delivery, resolver, rng, mta_sts=MtaSts(
        resolver, state_dir, clock,
        timeout=float(cfg.delivery.mta_sts_timeout)) if cfg.delivery.mta_sts else None,
        own_addresses=own_addresses, clock=clock)
    sender = over.sender if over.sender is not None else Sender(
        cfg.delivery, hostname=cfg.server.hostname, clock=clock)
    # Below the shaper: one log line and one metric per attempted transaction.
    attempts = RecordingSender(sender, provider_map(cfg), clock=clock,
                               default_source=cfg.delivery.source_address,
                               observers=[metrics.observe_attempt,
                                          reputation.remember_attempt, *attempt_history])

    # Recipients who opened or clicked within warmup.engaged_window take the engaged lane.
    engagement = Engagement(store, lambda: float(live.current.warmup.engaged_window),
                            clock.now)

    def lane_of(msg: Any) -> int:
        return lanes.priority_of(live.current, msg, engagement.any_engaged)

    def pool_and_lane(msg: Any) -> tuple[str, int]:
        current = live.current
        credential = users.default_pool(msg.auth_user) if msg.auth_user else ""
        return (lanes.pool_of(current, msg, credential), lane_of(msg))

    # Pools and warm-up (delivery.pool): transactions go through the shaper, which picks
    # and binds the source IP, keeps the per-IP caps and holds the excess. The pool and
    # priority lane of each message: its configuration set, then its credential's default
    # pool, then delivery.pool (relay/warmup/lanes.py).
    shaped = late_shaped.set(
        ShapedSender(cfg, attempts, store, clock, share=worker, choose=pool_and_lane,
                     event_log=events)
        if cfg.delivery.pool or cfg.pool else None)
    # Looked at on every message: at most every 0.5 s (an edit by `relay identity` shows
    # within that; SIGHUP at once).
    identities = IdentityStore.in_state_dir(state_dir, clock, recheck=0.5)
    dkim_keys = KeyStore.in_state_dir(state_dir, clock, rsa_bits=cfg.dkim.rsa_bits,
                                      recheck=0.5)
    verp = Verp.from_state_dir(state_dir)
    signer = Signer(dkim_keys, store=store)
    tracked_links = TrackedLinks(store)
    outbound = Outbound(
        signer=signer, verp=verp, resolver=resolver, identities=cfg.identity,
        default_domain=return_domain,
        unsubscribe_base=lambda msg: configsets.unsubscribe_base(
            live.current, msg.configuration_set),
        records=identities.all,
        # Open and click tracking of the message's configuration set, unless its
        # X-SES-TRACKING turned it off; each tracked copy's links kept for the redirect.
        tracking=lambda msg: configsets.tracking_plan(
            live.current, msg.configuration_set, msg.tracking),
        tracked_links=tracked_links, now=clock.now)
    # The account model (relay/tenants/): tenants and their status, looked at on every
    # message (an edit by `relay tenant` in another process shows within RECHECK_SECONDS);
    # the quota counters and reputation counts as the spool holds them.
    cluster: Any = None
    if cfg.cluster.enabled:
        # Imported here, only with [cluster] set: a single node never loads redis.
        from relay.cluster.node import ClusterNode

        cluster = ClusterNode(
            cfg.cluster, clock, state_dir=state_dir, store=store,
            workers=worker[1] if worker is not None else 1, first=not secondary,
            queue_depth=lambda: sum(store.count_by_state().get(s, 0) for s in PENDING_STATES))
        if shaped is not None:  # warm-up caps counted across the nodes
            shaped.attach_shared(cluster.warmup)
        # Provider/site rates and connection leases for all nodes together.
        if shaped is not None:
            shaped.share_sites(cluster.shaping)
        if isinstance(sender, Sender):
            sender.share_sites(cluster.shaping)
    tenants = TenantStore(store, clock, recheck=RECHECK_SECONDS,
                          shared_status=cluster.shared_status if cluster else None)
    quotas = QuotaBook()
    quotastore.load(store, quotas, clock.now())
    reputation_book = ReputationBook(Lines.of(cfg.reputation))
    repstore.load(store, reputation_book, clock.now())

    def is_simulator(address: str) -> bool:
        return address.rpartition("@")[2].lower() == simulator.DOMAIN

    monitor = late_monitor.set(ReputationMonitor(
        store, tenants, reputation_book, events, clock, is_simulator=is_simulator,
        on_change=[metrics.observe_reputation_change,
                   *([cluster.publish_pause] if cluster is not None else [])]))

    def suppression_scope(tenant: str) -> str:
        """The tenant whose own suppression list applies, "" for the account's."""
        t = tenants.get(tenant)
        return tenant if t is not None and t.suppression_scope == "tenant" else ""

    def paused(msg: Any) -> str | None:
        rec = tenants.paused(msg.tenant or DEFAULT_TENANT, msg.configuration_set)
        return None if rec is None else f"sending paused ({rec.reason or rec.status})"

    # Suppression, feedback (bounces/complaints), the mailbox simulator.
    suppressor = Suppressor(store, config, scope_of=suppression_scope,
                            on_added=cluster.suppression.added if cluster else None)
    feedback = FeedbackProcessor(
        store, verp, events, clock, config, state_dir,
        on_reputation=reputation.reputation_bounce, on_complaint=reputation.complaint,
        on_unparsed_kept=metrics.observe_unparsed_kept,
        on_unparsed_dropped=metrics.observe_unparsed_dropped,
        suppression_scope=suppression_scope,
        on_suppressed=cluster.suppression.added if cluster else None)
    local: LocalDeliveryLike = over.simulator if over.simulator is not None else Simulator(
        clock=clock, store=store, feedback=feedback, verp=verp, return_domain=return_domain,
        # never remember_attempt: no reputation
        observers=[metrics.observe_attempt, *attempt_history])
    # Accept first: delivery gives this process's loop to a burst of submissions; when a
    # hold ends, the scheduler promotes again.
    loop_lag = over.loop_lag if over.loop_lag is not None else LoopLag()

    def wake_scheduler() -> None:
        late_scheduler().wake()

    gate = (over.gate(loop_lag, [wake_scheduler]) if over.gate is not None
            else DeliveryGate(loop_lag, max_hold=cfg.delivery.accept_first_max_hold,
                              on_open=[wake_scheduler]))
    poll_interval = over.poll_interval if over.poll_interval is not None else (
        # Another worker's submissions do not wake this one: poll more often.
        0.2 if worker is not None else 1.0)
    scheduler = late_scheduler.set(Scheduler(
        store, router, shaped if shaped is not None else attempts, events, clock,
        cfg.delivery, hostname=cfg.server.hostname, rng=rng, poll_interval=poll_interval,
        outbound=outbound, suppression=suppressor, simulator=local,
        after_settle=[suppressor.after_settle], journal=journal,
        configuration_set=lambda name: live.current.configuration_set_named(name),
        lane_of=lane_of, gate=gate,
        paused=paused, paused_recheck=float(cfg.tenants.paused_recheck)))

    def verified(tenant: str, identity: str) -> bool:
        """Is `identity` a verified identity that `tenant` may use (its own or shared)?"""
        rec = identities.get(identity)
        return rec is not None and rec.verified and may_use(tenant, rec.tenant)

    account = AccountGate(
        tenants, quotas, store, credential=users.get, defaults=lambda: live.current.tenants,
        verified=verified, is_simulator=is_simulator, now=clock.now,
        on_refusal=[metrics.observe_tenant_refusal],
        on_accepted=[metrics.observe_tenant_accepted], worker=worker,
        shared=cluster.quota if cluster else None)

    def resources(msg: Any) -> list[tuple[str, str, str]]:
        """(kind, name, owner) of the identity, configuration set and pool `msg` uses."""
        current = live.current
        out: list[tuple[str, str, str]] = []
        address = parseaddr(msg.headers.get("From", ""))[1].lower()
        for identity in (address, address.rpartition("@")[2]):
            if identity and identities.get(identity) is not None:
                out.append(("identity", identity, identities.owner(identity)))
                break
        cs = current.configuration_set_named(msg.configuration_set) \
            if msg.configuration_set else None
        if cs is not None:
            out.append(("configuration set", cs.name, cs.tenant))
        pool_name = lanes.pool_of(current, msg, users.default_pool(msg.auth_user)
                                  if msg.auth_user else "")
        pool = next((p for p in current.pool if p.name == pool_name), None)
        if pool is not None:
            out.append(("pool", pool.name, pool.tenant))
        return out

    submitter = QueueSubmitter(store, events, scheduler, config, users, journal=journal,
                               on_accept=[metrics.accepted.inc, gate.accepted],
                               account=account, resources=resources,
                               on_duplicate_transfer=[metrics.transfer_duplicates.inc])
    # on_mx_failure = "reject": refused at the end of DATA when MAIL FROM has no MX.
    mail_from_gate = MailFromGate(submitter, outbound, reject=submitter.reject)
    # One lockout tracker for every listener: a lockout on 587 holds on 465 too.
    auth_policy = AuthPolicy(cfg.limits.auth_failure_delay, cfg.limits.auth_max_failures,
                             cfg.limits.auth_lockout)
    # "off" still holds a credential to its explicit allow list (relay user add --allow).
    sender_policy = SenderPolicy(
        identities, users, require_verified=cfg.server.sender_authorization == "verified")
    return Components(
        config=live, clock=clock, rng=rng, worker=worker, state_dir=state_dir,
        metrics=metrics, store=store, sent_from=sent_from, reputation=reputation,
        event_router=event_router, events=events, journal=journal, users=users,
        api_keys=api_keys,
        resolver=resolver, own_addresses=own_addresses, router=router, sender=sender,
        attempts=attempts, shaped=shaped, identities=identities, dkim_keys=dkim_keys,
        signer=signer, verp=verp, outbound=outbound, suppressor=suppressor,
        feedback=feedback, simulator=local, loop_lag=loop_lag, gate=gate,
        scheduler=scheduler, submitter=submitter, mail_from_gate=mail_from_gate,
        auth_policy=auth_policy, sender_policy=sender_policy, tenants=tenants,
        quotas=quotas, reputation_book=reputation_book, monitor=monitor,
        account=account, history=history, stats=stats, recorder=recorder, pruner=pruner,
        tracked_links=tracked_links, engagement=engagement, cluster=cluster)

