"""What the admin API reads and acts on: AdminContext, and the readers several handlers share.

AdminContext is built by RelayApp (or a test) from live objects; make_app puts it on the
aiohttp application under CTX, and every handler gets it back with _ctx(request).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from relay.admin.api.livefeed import LiveFeed
from relay.admin.metrics import Metrics
from relay.admin.tokens import TokenStore
from relay.clock import Clock
from relay.config import Config
from relay.events.log import EventLog
from relay.history.stats import StatsStore
from relay.history.store import HistoryStore
from relay.queue.records import PENDING_STATES
from relay.queue.store import QueueStore
from relay.tenants.store import TenantStore, sent_last_24_hours
from relay.tracking.engagement import Engagement
from relay.tracking.links import TrackedLinks
from relay.users import UserStore
from relay.warmup import gate as gate_mod
from relay.warmup.store import total_states

HISTORY_POINTS = 360


@dataclass
class AdminContext:
    """What the API reads and acts on; built by RelayApp (or a test) from live objects."""

    config: Callable[[], Config]
    store: QueueStore
    users: UserStore
    tokens: TokenStore
    events: EventLog
    metrics: Metrics
    clock: Clock
    wake_scheduler: Callable[[], None] = lambda: None
    identities: Any = None                      # relay.identity.store.IdentityStore
    dkim_keys: Any = None                       # relay.dkim.keys.KeyStore
    warmup_gate: Any = None                     # relay.warmup.gate.WarmupGate
    listeners: Callable[[], list[dict[str, Any]]] = list
    verp: Any = None                            # relay.verp.Verp: List-Unsubscribe tokens
    # The process's tenant store (its cache is the SMTP hot path's); None: the API makes
    # its own on `store`.
    tenants: TenantStore | None = None
    # SentLast24Hours of a tenant (the quota book's reader; 0 until it is wired).
    sent_last_24_hours: Callable[[QueueStore, str], int] = sent_last_24_hours
    started_at: float = 0.0                     # clock.now() at start (0: set in __post_init__)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    # The message history and sending statistics (relay/history/); None: the API makes
    # its own on `store` (they keep no state but the LMDB sub-databases).
    message_history: HistoryStore | None = None
    stats: StatsStore | None = None
    # This node of a cluster (relay.cluster.node.ClusterNode); None: no [cluster].
    cluster: Any = None
    # The event stream's follower of the event log (made at the first stream).
    live: LiveFeed | None = None
    # Open and click tracking (relay/admin/api/tracking.py): the links of tracked copies
    # and the engagement store (None: the routes make theirs on `store`).
    tracked_links: TrackedLinks | None = None
    engagement: Engagement | None = None
    # `relay node drain` in effect (relay/drain.py): GET /health answers 503.
    draining: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        if not self.started_at:
            self.started_at = self.clock.now()

    # -------------------------------------------------------------- shared readers

    def depth(self) -> dict[str, int]:
        counts = self.store.count_by_state()
        return {s: counts.get(s, 0) for s in PENDING_STATES}

    def oldest_age(self) -> float | None:
        gen = self.store.messages()
        try:
            first = next(gen, None)
        finally:
            close = getattr(gen, "close", None)  # a generator: end its read transaction now
            if close is not None:
                close()
        if first is None:
            return None
        return max(0.0, self.clock.now() - first[0].received_at)

    def warmup_status(self) -> list[dict[str, Any]]:
        gate = self.warmup_gate
        if gate is None:
            return []
        if gate.share is not None:
            # server.workers = N: this process counts its share only; show each IP whole
            # (every worker's counts, the full caps), as `relay warmup status` does.
            gate = gate_mod.from_config(self.config(), total_states(self.store))
        now = self.clock.now()
        rows: list[dict[str, Any]] = gate.status(now)
        for row in rows:
            pool = gate.pools.get(row["pool"])
            plan = getattr(pool, "plan", None)
            if plan is not None:
                day = int(row.get("day") or 1)
                days = max(len(plan.caps), day + 3)
                row["plan_caps"] = [plan.cap(d) for d in range(1, days + 1)]
            else:
                row["plan_caps"] = []
        return rows

    def tenant_store(self) -> TenantStore:
        if self.tenants is None:
            self.tenants = TenantStore(self.store, self.clock)
        return self.tenants

    def history_store(self) -> HistoryStore:
        if self.message_history is None:
            self.message_history = HistoryStore(self.store)
        return self.message_history

    def stats_store(self) -> StatsStore:
        if self.stats is None:
            self.stats = StatsStore(self.store)
        return self.stats

    def live_feed(self) -> LiveFeed:
        if self.live is None:
            self.live = LiveFeed(self.events.path, self.clock)
        return self.live

    def sample(self) -> dict[str, Any]:
        point: dict[str, Any] = {"t": self.clock.now(), **self.depth()}
        return point


def _ctx(request: web.Request) -> AdminContext:
    ctx: AdminContext = request.app[CTX]
    return ctx


CTX: web.AppKey[AdminContext] = web.AppKey("relay_admin", AdminContext)
