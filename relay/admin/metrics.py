"""Prometheus metrics of one relay process (prometheus-client, its own registry).

Counters and histograms are fed by small hooks: the SMTP reply hook and the
submitter (accepted/rejected), `RecordingSender` (deliveries, bounces,
deferrals by provider and source IP; the mailbox simulator's attempts come the same
way, under provider and source IP "simulator"), the store's `on_commit` callbacks (commit
batch size and commit+fsync latency) and the listeners' admission hook
(sessions). Gauges that describe state (queue depth by state, oldest message
age, open sessions, warm-up cap and usage per IP) are computed at scrape time
by `StateCollector`, from the live objects, never cached. The message history's size
(`HistoryCollector`) is the exception: read from the spool at most every 30 s
(`HistoryUsage`), never on the event loop.
Must not: import aiohttp (the HTTP side is relay.admin.api).
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.clock import Clock
from relay.delivery.attempts import Attempt
from relay.queue.committer import StoreStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Distinct tenant label values per process; later tenants are counted as "other".
MAX_TENANT_LABELS = 200


class Metrics:
    def __init__(self, *,
                 complaint_source: Callable[[Any], tuple[str, str] | None] | None = None,
                 history_usage: HistoryUsage | None = None,
                 history_dropped: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The message history's size ([history] enabled; None otherwise): the gauges, and
        # /api/status's "history" block, read it through this cache.
        self.history_usage = history_usage
        if history_usage is not None:
            r.register(HistoryCollector(history_usage, history_dropped or (lambda: 0)))
        self.accepted = Counter("relay_messages_accepted", "Messages accepted (250 after DATA)",
                                registry=r)
        self.rejected = Counter(
            "relay_smtp_rejections",
            "SMTP replies refusing something (4xx/5xx), by reply code and enhanced status code",
            ["code", "reason"], registry=r)
        labels = ["provider", "source_ip"]
        self.deliveries = Counter("relay_deliveries", "Recipients delivered (remote 2xx)",
                                  labels, registry=r)
        self.bounces = Counter("relay_bounces", "Recipients bounced by the remote (5xx)",
                               labels, registry=r)
        self.deferrals = Counter("relay_deferrals",
                                 "Delivery attempts deferred (4xx, timeouts, connection errors)",
                                 labels, registry=r)
        self.sessions = Counter("relay_smtp_sessions", "SMTP connections, by listener and result",
                                ["listener", "result"], registry=r)
        self.auth_failures = Counter(
            "relay_smtp_auth_failures",
            "AUTH brute-force defence: failed (535), lockout (a failure that locked the client "
            "address), locked (refused while locked, 454), too_many (per-connection cap, 421)",
            ["result"], registry=r)
        self.commit_batch = Histogram(
            "relay_queue_commit_batch_size", "Operations per queue group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.commit_seconds = Histogram(
            "relay_queue_commit_seconds", "Queue write transaction time including fsync",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r)
        self.complaints = Counter(
            "relay_complaints", "Complaints (feedback loop), by the provider and source IP of "
            "the original delivery (\"other\"/\"unknown\" when not known)", labels, registry=r)
        # The unauthenticated edges: accept() failures, implicit-TLS connections closed
        # before their session, feedback reports refused, the unparsed-report store.
        self.accept_failures = Counter(
            "relay_smtp_accept_failures", "accept() failures on the SMTP listeners, by "
            "errno (EMFILE: the process's open-file limit; ENFILE: the system's)",
            ["errno"], registry=r)
        self.tls_gate = Counter(
            "relay_smtp_implicit_tls_closed", "Implicit-TLS connections closed before "
            "their SMTP session: refused (over a connection cap, before any handshake), "
            "timeout (limits.tls_handshake_timeout), failed (a bad handshake)",
            ["listener", "result"], registry=r)
        self.proxy_refused = Counter(
            "relay_smtp_proxy_header_refused", "Connections to a proxy_protocol listener "
            "closed before their SMTP session: untrusted (a peer outside proxy_trusted), "
            "malformed (a bad PROXY header), timeout (limits.proxy_header_timeout), limit "
            "(the listener's limits.max_connections reached, counting connections still "
            "waiting for their header)",
            ["listener", "reason"], registry=r)
        self.transfer_duplicates = Counter(
            "relay_queue_transfer_duplicates", "Messages from `relay queue transfer` whose "
            "X-Relay-Transfer-Id this node had already queued: answered 250, not queued "
            "again", registry=r)
        self.feedback_sessions = Counter(
            "relay_feedback_sessions", "Connections to the feedback listener, by result "
            "(refused: over limits.max_connections or max_connections_per_ip)",
            ["result"], registry=r)
        self.feedback_reports = Counter(
            "relay_feedback_reports", "Feedback reports refused before being interpreted "
            "(refused: over feedback.max_mime_parts or max_mime_depth)",
            ["result"], registry=r)
        self.unparsed_kept = Counter(
            "relay_feedback_unparsed_kept_bytes", "Bytes of unparseable feedback mail kept "
            "under state_dir/feedback/unparsed (each file counts at least 4 KiB)",
            registry=r)
        self.unparsed_dropped = Counter(
            "relay_feedback_unparsed_dropped_bytes", "Bytes of unparseable feedback mail "
            "removed or never kept, by reason: age (feedback.unparsed_max_age), size (the "
            "oldest, over feedback.unparsed_max_size), too_big (one message over it)",
            ["reason"], registry=r)
        self.unparsed_dropped_files = Counter(
            "relay_feedback_unparsed_dropped_files", "Unparseable feedback messages removed "
            "or never kept, by reason (as relay_feedback_unparsed_dropped_bytes)",
            ["reason"], registry=r)
        # The account model: per tenant (at most MAX_TENANT_LABELS names, the rest "other",
        # so a platform with thousands of tenants cannot blow up the series count).
        self.tenant_refusals = Counter(
            "relay_tenant_refusals", "Recipients or messages refused for a tenant's account "
            "state, by tenant and reason (rate, daily_quota, sandbox, paused, tenant)",
            ["tenant", "reason"], registry=r)
        self.tenant_accepted = Counter(
            "relay_tenant_recipients_accepted", "Recipients accepted, by tenant", ["tenant"],
            registry=r)
        self.reputation_changes = Counter(
            "relay_reputation_status_changes", "Reputation status changes of tenants and "
            "configuration sets, by scope kind and new status", ["scope", "status"],
            registry=r)
        self._tenant_labels: set[str] = set()
        # For the dashboard: per provider, outcome -> count (since start).
        self.by_provider: dict[str, Tally[str]] = {}
        # (source IP, provider) of the delivery a complaint event is about, when known
        # (relay/warmup/feedback.py remembers recent attempts).
        self.complaint_source = complaint_source

    # ------------------------------------------------------------------ hooks

    def tenant_label(self, tenant: str) -> str:
        """`tenant` as a label value: the first MAX_TENANT_LABELS names seen, then "other"."""
        if tenant in self._tenant_labels:
            return tenant
        if len(self._tenant_labels) < MAX_TENANT_LABELS:
            self._tenant_labels.add(tenant)
            return tenant
        return "other"

    def observe_tenant_refusal(self, tenant: str, reason: str) -> None:
        self.tenant_refusals.labels(self.tenant_label(tenant), reason).inc()

    def observe_tenant_accepted(self, tenant: str, recipients: int) -> None:
        self.tenant_accepted.labels(self.tenant_label(tenant)).inc(recipients)

    def observe_reputation_change(self, scope: str, old: Any, new: Any) -> None:
        kind = scope.partition(":")[0]
        self.reputation_changes.labels(kind, str(getattr(new, "status", ""))).inc()

    def observe_attempt(self, a: Attempt) -> None:
        counter = {"delivered": self.deliveries, "bounced": self.bounces}.get(a.kind,
                                                                             self.deferrals)
        counter.labels(a.provider, a.source_ip).inc()
        self.by_provider.setdefault(a.provider, Tally())[a.kind or "deferred"] += 1

    def observe_event(self, event: Any) -> None:
        """Complaints arrive as events (feedback loop); count them under the provider of the
        original delivery where it is known, else 'other'."""
        if getattr(event, "eventType", "") == "Complaint":
            found = self.complaint_source(event) if self.complaint_source is not None else None
            source_ip, provider = found if found is not None else ("unknown", "other")
            self.complaints.labels(provider, source_ip).inc()
            self.by_provider.setdefault(provider, Tally())["complained"] += 1

    def observe_reply(self, reply: str) -> None:
        code = reply[:3]
        if code[:1] not in ("4", "5") or not code.isdigit():
            return
        rest = reply[4:].split(" ", 1)[0]
        reason = rest if rest[:1] in ("4", "5") and rest.count(".") == 2 else ""
        self.rejected.labels(code, reason).inc()

    def observe_auth(self, result: str) -> None:
        self.auth_failures.labels(result).inc()

    def observe_commit(self, batch: int, seconds: float) -> None:
        self.commit_batch.observe(batch)
        self.commit_seconds.observe(seconds)

    def observe_store(self, stats: StoreStats) -> None:
        """After a group commit: its batch size and fsync time (a store commit observer)."""
        self.commit_batch.observe(stats.last_batch)
        self.commit_seconds.observe(stats.last_fsync_seconds)

    def observe_session(self, listener: str, refusal: object | None) -> None:
        self.sessions.labels(listener, "accepted" if refusal is None else "refused").inc()

    def observe_accept_failure(self, errno_name: str) -> None:
        self.accept_failures.labels(errno_name).inc()

    def observe_tls_gate(self, listener: str, result: str) -> None:
        self.tls_gate.labels(listener, result).inc()

    def observe_proxy_refused(self, listener: str, reason: str) -> None:
        self.proxy_refused.labels(listener, reason).inc()

    def observe_feedback_session(self, refusal: object | None) -> None:
        self.feedback_sessions.labels("accepted" if refusal is None else "refused").inc()

    def observe_feedback_report(self, result: str) -> None:
        self.feedback_reports.labels(result).inc()

    def observe_unparsed_kept(self, nbytes: int) -> None:
        self.unparsed_kept.inc(nbytes)

    def observe_unparsed_dropped(self, reason: str, nbytes: int) -> None:
        self.unparsed_dropped.labels(reason).inc(nbytes)
        self.unparsed_dropped_files.labels(reason).inc()

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Gauges computed at scrape time from functions that read live state."""

    def __init__(self, *, depth: Callable[[], dict[str, int]],
                 oldest_age: Callable[[], float | None],
                 open_sessions: Callable[[], dict[str, int]],
                 warmup: Callable[[], list[dict[str, Any]]],
                 outbox: Callable[[], dict[str, int]] | None = None,
                 loop: Callable[[], tuple[float, float]] | None = None) -> None:
        self.depth = depth
        self.oldest_age = oldest_age
        self.open_sessions = open_sessions
        self.warmup = warmup
        self.outbox = outbox
        self.loop = loop  # (last probe's lateness, seconds delivery was held) in seconds

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed only at collect time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("relay_queue_depth", "Queued recipients by state",
                                  labels=["state"])
        for state, n in sorted(self.depth().items()):
            depth.add_metric([state], n)
        yield depth
        age = self.oldest_age()
        yield GaugeMetricFamily("relay_queue_oldest_message_age_seconds",
                                "Age of the oldest message in the queue (0 when empty)",
                                value=age or 0.0)
        sessions = GaugeMetricFamily("relay_smtp_sessions_open", "Open SMTP sessions",
                                     labels=["listener"])
        for name, n in sorted(self.open_sessions().items()):
            sessions.add_metric([name], n)
        yield sessions
        cap = GaugeMetricFamily("relay_warmup_cap", "Today's warm-up cap per source IP "
                                "(absent: no plan)", labels=["ip", "pool"])
        sent = GaugeMetricFamily("relay_warmup_sent_today", "Recipients sent today per "
                                 "source IP", labels=["ip", "pool"])
        for row in self.warmup():
            if row.get("cap_today") is not None:
                cap.add_metric([row["ip"], row["pool"]], float(row["cap_today"]))
            sent.add_metric([row["ip"], row["pool"]], float(row.get("sent_today") or 0))
        yield cap
        yield sent
        backlog = GaugeMetricFamily("relay_event_outbox_backlog", "Webhook events waiting in "
                                    "the durable outbox, per event destination",
                                    labels=["destination"])
        for name, n in sorted((self.outbox() if self.outbox is not None else {}).items()):
            backlog.add_metric([name], n)
        yield backlog
        if self.loop is not None:
            lag, held = self.loop()
            yield GaugeMetricFamily(
                "relay_event_loop_lag_seconds", "How late the event loop woke its last "
                "probe (5 ms over: it is saturated)", value=lag)
            yield CounterMetricFamily(
                "relay_delivery_held_seconds", "Time delivery was held to two transactions "
                "in flight while a burst of submissions saturated the event loop "
                "(delivery.accept_first_max_hold)", value=held)


class EventLogCollector(Collector):
    """The event log's write health (relay/events/log.py) and that of the file event
    destinations (relay/events/linefile.py), read at scrape time."""

    def __init__(self, event_log: Any, files: Callable[[], Iterable[Any]] = tuple) -> None:
        self.event_log = event_log
        self.files = files

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        ev = self.event_log
        yield CounterMetricFamily(
            "relay_event_log_write_failures", "Writes to the event log file that failed "
            "(disk full, I/O error); the events are kept and written again",
            value=ev.write_failures)
        yield CounterMetricFamily(
            "relay_event_log_dropped_events", "Events the event log could not keep in "
            "memory while its writes failed (queue events are published again at the "
            "next start)", value=ev.dropped)
        yield GaugeMetricFamily(
            "relay_event_log_unwritten_events", "Events waiting in memory for the event "
            "log file", value=ev.unwritten)
        files = list(self.files())
        yield CounterMetricFamily(
            "relay_event_destination_file_write_failures", "Writes to file event "
            "destinations that failed (disk full, I/O error); the lines are kept in memory, "
            "bounded, and written again", value=sum(f.write_failures for f in files))
        yield CounterMetricFamily(
            "relay_event_destination_file_dropped_events", "Events a file event destination "
            "could not keep in memory while its writes failed",
            value=sum(f.dropped for f in files))


# How often the history's size is read from the spool at most (a scrape or /api/status
# in between gets the last figures).
HISTORY_USAGE_EVERY = 30.0


class HistoryUsage:
    """HistoryStore.usage() ({"messages", "bytes", "oldest"}), read at most every `every`
    seconds of `clock`. `read()` may touch the spool: call it from a thread (the /metrics
    scrape renders in one); `cached()` never does (the last figures, None when stale)."""

    def __init__(self, usage: Callable[[], dict[str, int]], clock: Clock, *,
                 every: float = HISTORY_USAGE_EVERY) -> None:
        self._usage = usage
        self._clock = clock
        self.every = every
        self._lock = threading.Lock()
        self._value: dict[str, int] | None = None
        self._at = 0.0

    def cached(self) -> dict[str, int] | None:
        value = self._value
        if value is None or self._clock.monotonic() - self._at >= self.every:
            return None
        return value

    def read(self) -> dict[str, int]:
        with self._lock:  # two scrapes at once read the spool once
            value = self.cached()
            if value is None:
                value = self._value = dict(self._usage())
                self._at = self._clock.monotonic()
            return value


class HistoryCollector(Collector):
    """relay_history_messages and relay_history_bytes (the spool's history, every
    worker's), and relay_history_dropped_total (this process's recorder)."""

    def __init__(self, usage: HistoryUsage, dropped: Callable[[], int]) -> None:
        self.usage = usage
        self.dropped = dropped

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed only at collect time

    def collect(self) -> Iterator[Metric]:
        figures = self.usage.read()
        yield GaugeMetricFamily(
            "relay_history_messages", "Messages in the message history ([history])",
            value=figures.get("messages", 0))
        yield GaugeMetricFamily(
            "relay_history_bytes", "Disk the message history and sending statistics use "
            "in the spool (LMDB pages of their sub-databases; [history] max_disk caps it)",
            value=figures.get("bytes", 0))
        yield CounterMetricFamily(
            "relay_history_dropped", "History entries this process could not record "
            "because its pending batch was full (delivery never waits for the history)",
            value=self.dropped())
