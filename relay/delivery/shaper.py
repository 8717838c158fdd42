"""The warm-up and shaping shell around the SMTP client: pools, source IPs, caps.

Owns: the I/O side of relay.warmup. `ShapedSender` has the same `send()` as
relay.delivery.client.Sender, so the scheduler (and the DKIM/VERP step before
it) calls it unchanged. For each transaction it:
1. classifies the destination's MX hosts into a provider and site;
2. asks the pure WarmupGate which source IPs of the pool may take how many
   recipients now (overflow to another pool, or hold for the next window), and
   the site throttle how many per second/hour;
3. sends each granted part through the real Sender bound to that source IP
   with that IP's EHLO name, under the site's connection limit;
4. settles the gate (refund what was not taken, backoff, reputation), persists
   the touched IpStates in the queue's "warmup" sub-database (relay/warmup/store.py)
   through the store's group committer, and returns one outcome per recipient.
Recipients held back get an Outcome with `hold_until` (relay.delivery.outcome.held):
the scheduler releases them without counting an attempt, due at `hold_until` (never
past max delivery time), and emits a DeliveryDelay event.

The pool and priority lane come from the message being delivered (the
`current_message` context variable the scheduler sets) through `choose`
(relay/app.py: configuration set, then credential, then delivery.pool; see
relay/warmup/lanes.py); without `choose`, every message uses `pool`. Site limits
reach the client as `site`, `max_connections` (open connections to the site
across all source IPs) and `messages_per_connection` (overrides
delivery.max_messages_per_connection for the site's pooled connections).
With [cluster] (`share_sites`, relay/cluster/shaping.py) a site's messages per second
and per hour are counted in Redis for all nodes together, and the client's connections
to a provider's site hold leases there. The gate decides first (locally), then ONE call
per transaction confirms its grants: the site's rates and the warming IPs' caps in the
same script (`_take_cluster`; the site counts exactly what the caps granted, so nothing
is given back), or the site's alone for a warm pool.
Backoffs and freezes the gate reports go to `event_log` as WarmupBackoff /
WarmupFreeze events.

Operator changes (`relay warmup freeze|resume|set`) are written by the CLI
with a higher op_seq; this process merges them (counters.merge_operator) when
it persists and every `sync_interval` seconds. With server.workers = N it also
reads the other workers' records of each IP then (`_sync_peers`): their freezes
and backoff pauses hold here too, and the reputation rates are over all of them.

With [cluster] (`attach_shared`, relay/cluster/warmup.py) the gate is a pre-filter that
keeps to the whole cap: each transaction's grants to warming IPs are confirmed in Redis
by that call (`_take_shared`), the shortfall given back to the gate and held (a second
call only when an IP's cap in Redis was short, another node having sent from it since,
and the gate has another IP for the rest); recipients
not taken are refunded there; the gate adopts the cluster's counts from each answer, and
every node's operator changes and restrictions by pub/sub (`adopt_state`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from relay.clock import Clock
from relay.config import Config
from relay.delivery.attempts import current_message
from relay.delivery.outcome import Outcome, Sender, held, outcomes_of
from relay.events.model import warmup_event
from relay.warmup import counters, gate
from relay.warmup.counters import IpState
from relay.warmup.providers import ProviderMap, ProviderRule, Site, SiteLimits
from relay.warmup.shaping import SiteGrant, SiteThrottle
from relay.warmup.store import load_states, peer_states, persist_op, stored_records

log = logging.getLogger("relay.warmup")

_enc = msgspec.msgpack.Encoder()


class SiteRates(Protocol):
    """A site's messages per second and per hour for all nodes together
    (relay.cluster.shaping.SharedShaping)."""

    async def take(self, site: str, limits: SiteLimits, want: int) -> SiteGrant: ...


def provider_map(cfg: Config) -> ProviderMap:
    rules = [ProviderRule(p.name, tuple(p.mx), SiteLimits(
        p.max_connections, p.messages_per_connection, p.messages_per_second,
        p.messages_per_hour)) for p in cfg.provider]
    return ProviderMap(rules, default_limits=SiteLimits(
        max_connections=cfg.delivery.max_connections_per_destination))


class ShapedSender:
    def __init__(self, cfg: Config, sender: Sender, store: Any, clock: Clock, *,
                 pool: str | None = None, sync_interval: float = 5.0,
                 share: tuple[int, int] | None = None,
                 choose: Callable[[Any], tuple[str, int]] | None = None,
                 event_log: Any = None) -> None:
        self.sender = sender
        self.store = store
        self.clock = clock
        self.pool = pool if pool is not None else cfg.delivery.pool
        self.gate = gate.from_config(cfg, load_states(store, share), share)
        self.providers = provider_map(cfg)
        self.throttle = SiteThrottle()
        self.sync_interval = sync_interval
        self._synced_at = clock.now()
        self._conns: dict[str, asyncio.Semaphore] = {}
        self.rates: SiteRates | None = None   # [cluster]: see share_sites
        self.notices: list[str] = []
        # message -> (pool, lane); None: every message from `pool`, bulk lane.
        self.choose = choose
        self.event_log: Any = event_log  # relay.events.log.EventLog for WarmupFreeze/Backoff
        self._flushes: set[asyncio.Task[None]] = set()
        # [cluster]: relay.cluster.warmup.SharedWarmup (not imported here: a single node
        # never loads redis); None: this node counts its warming IPs alone.
        self.shared: Any = None
        # (IP, provider) -> units granted by the gate, not yet answered by Redis
        self._in_flight: dict[tuple[str, str], int] = {}
        # IPs whose restrictions could not be published (Redis away): sent again once a
        # call succeeds
        self._unpublished: set[str] = set()

    def attach_shared(self, shared: Any) -> None:
        """[cluster]: count the warming IPs' sends and plan progress in Redis, and follow
        every node's restrictions and operator changes (relay/cluster/warmup.py)."""
        self.shared = shared
        self.gate.whole_caps = True
        shared.watch([ip.address for p in self.gate.pools.values() if p.plan is not None
                      for ip in p.ips], self.adopt_state)

    def publish(self) -> None:
        """Write the gate's backoff/freeze notices to the event log ([cluster]: and the
        IPs' restrictions to Redis, for every node)."""
        notes, self.gate.events = self.gate.events, []
        if notes and self.event_log is not None:
            self.event_log.emit([warmup_event(n.kind, n.ip, n.provider, n.reason, n.until,
                                              n.action, n.at) for n in notes])
        if notes and self.shared is not None:
            for ip in dict.fromkeys(n.ip for n in notes):
                self.shared.spawn(self._restrict(ip))

    async def _restrict(self, ip: str) -> None:
        now = self.clock.now()
        today = self.gate.days.day_of(now)
        frozen, reason, held = counters.restrictions(self.gate.state(ip), today, now)
        try:
            state = await self.shared.restrict(ip, today, frozen, reason, held)
        except self.shared.Unavailable:
            log.warning("warm-up: %s held back on this node only until redis answers", ip)
            self._unpublished.add(ip)
            return
        self._unpublished.discard(ip)
        self.adopt_state(state)

    def adopt_state(self, state: dict[str, Any]) -> None:
        """An IP's state as the cluster has it (a change made on any node): its freeze,
        plan progress, counts and backoff pauses."""
        ip = state["ip"]
        if not isinstance(ip, str) or not self.gate.knows(ip):
            return
        counters.adopt_state(self.gate.state(ip), state,
                             lambda provider: self._unsent(ip, provider))
        self.gate.dirty.add(ip)
        self.gate.invalidate()
        self.flush_soon()  # `relay warmup status` on this node shows it too

    def _unsent(self, ip: str, provider: str) -> int:
        """This node's counts of `ip` toward `provider` that Redis does not hold yet:
        grants awaiting its answer, less refunds queued for the next call."""
        return self._in_flight.get((ip, provider), 0) - int(self.shared.pending(ip, provider))

    async def _take_shared(self, pool: str, provider: str, lane: int,
                           decision: gate.Decision, now: float, site: Site | None = None
                           ) -> tuple[list[tuple[gate.Grant, bool | None]], float, str,
                                      SiteGrant | None]:
        """[cluster]: the gate's grants as Redis confirms them, in ONE script call for all
        of the transaction's parts and, with `site` (a provider site with rate limits),
        the site's messages per second and per hour too: the site's grant is what the
        parts were granted, so nothing goes back to it. What Redis did not grant is given
        back to the gate, which then knows the IP's cluster-wide count; when an IP's cap
        (not the site) was short, the gate is asked once more for that shortfall (another
        IP of the pool, the overflow) and Redis once more (a second call only then: another
        node sent from the IP since this one last heard), then the rest is held.
        -> ((grant, shared: False from the local share, None not counted in Redis: a warm
        IP), retry_at, reason, the site's grant (None without `site`))."""
        today, hour = self.gate.days.day_of(now), self.gate.days.hour_of(now)
        out: list[tuple[gate.Grant, bool | None]] = []
        retry_at, reason = decision.retry_at, decision.reason
        grants = decision.grants
        allowed: SiteGrant | None = None
        site_granted = 0
        for attempt in range(2):
            planned: list[tuple[gate.Grant, tuple[Any, ...]]] = []
            for g in grants:
                plan = self.gate.pools[g.pool].plan
                if plan is None and site is None:
                    out.append((g, None))
                elif plan is None:   # a warm IP: only the site's rates count it
                    planned.append((g, (g.ip, g.provider, g.count, (), 0)))
                else:
                    cap = self.gate.cap(self.gate.pools[g.pool], g.ip, g.provider, now) or 0
                    pc = counters.counter(self.gate.state(g.ip), g.provider)
                    seen = max(0, counters.sent_today(pc, today) - g.count)
                    advanced = counters.plan_day(pc, self.gate.state(g.ip), today) - 1
                    planned.append((g, (g.ip, g.provider, g.count, plan.caps, cap, seen,
                                        advanced)))
            if not planned:
                break
            for g, _ in planned:
                key = (g.ip, g.provider)
                self._in_flight[key] = self._in_flight.get(key, 0) + g.count
            try:
                asks = [a for _, a in planned]
                paced = self.gate.pacing != "none"
                if site is None:
                    answers = await self.shared.take(asks, today, hour, paced=paced,
                                                     burst=self.gate.burst)
                else:
                    answers, allowed = await self.shared.take_site(
                        asks, today, hour, paced=paced, burst=self.gate.burst,
                        shaping=self.rates, site=site.key, limits=site.limits)
                    site_granted += allowed.granted
            finally:
                for g, _ in planned:
                    key = (g.ip, g.provider)
                    left = self._in_flight.get(key, 0) - g.count
                    if left > 0:
                        self._in_flight[key] = left
                    else:
                        self._in_flight.pop(key, None)
            if self._unpublished and any(answer.shared for answer in answers):
                for ip in sorted(self._unpublished):
                    self.shared.spawn(self._restrict(ip))
                self._unpublished.clear()
            short = 0
            for (g, _), answer in zip(planned, answers, strict=True):
                if answer.granted < g.count:
                    self.gate.give_back(g, g.count - answer.granted, now)
                    # the IP's cap's shortfall (what the site's rates cut is not)
                    short += g.count - max(answer.granted, answer.allowed)
                if answer.counter is not None:
                    c = answer.counter
                    counters.adopt_counter(
                        counters.counter(self.gate.state(g.ip), g.provider),
                        advanced=c.advanced, day=c.day, sent=c.sent, hour=c.hour,
                        hour_sent=c.hour_sent, freeze_day=c.freeze_day,
                        paused_until=c.paused_until,
                        in_flight=self._unsent(g.ip, g.provider))
                    self.gate.dirty.add(g.ip)
                if answer.granted:
                    shared = None if self.gate.pools[g.pool].plan is None else answer.shared
                    out.append((dataclasses.replace(g, count=answer.granted), shared))
                if answer.allowed < g.count and answer.granted < g.count:
                    n, at = self.gate.available(self.gate.pools[g.pool], g.ip, g.provider, now)
                    # Redis had less than this node's view: at the IP's next window, or
                    # (a count that moved meanwhile) in a minute.
                    retry_at = min(retry_at, at if n == 0 else now + 60.0)
            if allowed is not None and allowed.limited:
                # the site's rates held the rest back: the site decides when it goes
                retry_at = min(retry_at, allowed.next_at)
                break
            if not short or attempt:
                break
            again = self.gate.acquire(pool, provider, short, now, lane)
            grants = again.grants
            if again.deferred:
                retry_at = min(retry_at, again.retry_at)
                reason = reason or again.reason
        if allowed is not None and allowed.limited and not reason:
            reason = (f"shaping: site {allowed.site} is at its rate limit until "
                      f"{gate._iso(retry_at)}")
        if not reason and math.isfinite(retry_at):
            reason = (f"warm-up: pool \"{pool}\" has no capacity left toward {provider} "
                      f"across the cluster until {gate._iso(retry_at)}")
        if allowed is not None:
            allowed = dataclasses.replace(allowed, granted=site_granted)
        return out, retry_at, reason, allowed

    async def send(self, destination: str, targets: Sequence[Any], sender: str,
                   recipients: Sequence[str], data: bytes, **kwargs: Any) -> list[Outcome]:
        pool, lane = self.pool, gate.BULK
        msg = current_message.get()
        if self.choose is not None and msg is not None:
            pool, lane = self.choose(msg)
        site = self.providers.site([getattr(t, "host_name", "") or t.address for t in targets])
        if site.limits.messages_per_connection:
            kwargs["messages_per_connection"] = site.limits.messages_per_connection
        if site.limits.max_connections:
            kwargs["site"] = site.key
            kwargs["max_connections"] = site.limits.max_connections
        if not pool:
            async with self._semaphore(site.key, site.limits):
                return outcomes_of(await self.sender.send(destination, targets, sender,
                                                        recipients, data, **kwargs))
        now = self.clock.now()
        if now - self._synced_at >= self.sync_interval:
            self.sync()
        cluster_site = self._cluster_rates(site)
        # [cluster] and a site with rates: the gate first (local), then ONE call for the
        # site's rates and the warming IPs' caps together (_take_cluster); else the
        # node's own throttle first.
        allowed = (SiteGrant(site.key, len(recipients), now) if cluster_site
                   else self._site_allowed(site, now, len(recipients)))
        decision = self.gate.acquire(pool, site.provider, allowed.granted, now, lane)
        retry_at, reason = decision.retry_at, decision.reason
        taken: list[tuple[gate.Grant, bool | None]] = [(g, None) for g in decision.grants]
        if decision.grants and (cluster_site or self.shared is not None):
            taken, retry_at, reason, answered = await self._take_cluster(
                pool, site, lane, decision, now, cluster_site)
            allowed = answered or allowed
        if not cluster_site:
            self.throttle.take(site.key, site.limits, now, sum(g.count for g, _ in taken))
        out: list[Outcome] = []
        start = 0
        parts: list[tuple[gate.Grant, bool | None, list[str]]] = []
        for g, shared in taken:
            parts.append((g, shared, list(recipients[start:start + g.count])))
            start += g.count
        results = await asyncio.gather(*(
            self._send_part(destination, targets, sender, rcpts, data, g, site.key,
                            site.limits, kwargs, shared=shared, granted_at=now)
            for g, shared, rcpts in parts))
        for r in results:
            out.extend(r)
        rest = len(recipients) - start
        if rest:
            at = retry_at
            if allowed.limited or (not cluster_site and allowed.granted < len(recipients)):
                at = min(at, self._site_next_at(site, allowed, now))
            if not math.isfinite(at):
                at = now + 300.0
            reason = reason or (
                f"shaping: site {site.key} is at its rate limit until {gate._iso(at)}")
            out.extend([held(reason, at)] * rest)
        if self.gate.dirty:
            await self.flush()
        return out

    async def _send_part(self, destination: str, targets: Sequence[Any], sender: str,
                         rcpts: list[str], data: bytes, grant: gate.Grant, site: str,
                         limits: SiteLimits, options: dict[str, Any] | None = None, *,
                         shared: bool | None = None, granted_at: float | None = None
                         ) -> list[Outcome]:
        """Send one granted part and settle the gate. `shared` ([cluster]): whether Redis
        counted the grant (False: the local share), so what was not taken goes back there
        too; None: not counted in Redis."""
        async with self._semaphore(site, limits):
            result = await self.sender.send(destination, targets, sender, rcpts, data,
                                            **{**(options or {}), "source_address": grant.ip,
                                               "ehlo": grant.ehlo or None})
        outs = outcomes_of(result)
        notices = self.gate.settle(grant, [(o.kind, o.response) for o in outs],
                                   self.clock.now())
        not_taken = sum(1 for o in outs if o.kind == "deferred")
        if self.shared is not None and shared is not None and not_taken:
            at = granted_at if granted_at is not None else self.clock.now()
            self.shared.refund(grant.ip, grant.provider, not_taken, self.gate.days.day_of(at),
                               self.gate.days.hour_of(at), shared)
        for n in notices:
            log.warning("%s", n)
        self.notices.extend(notices)
        self.publish()
        return outs

    def share_sites(self, rates: SiteRates) -> None:
        """[cluster]: site rates counted for all nodes together by `rates`."""
        self.rates = rates

    def _site_allowed(self, site: Site, now: float, want: int) -> SiteGrant:
        """How many of `want` the node's own throttle allows now (a site without rates, or
        no [cluster]: no call)."""
        return SiteGrant(site.key, self.throttle.allowed(site.key, site.limits, now, want), now)

    def _cluster_rates(self, site: Site) -> bool:
        """Whether `site`'s rates are counted for the cluster ([cluster], a rate set)."""
        limits = site.limits
        return self.rates is not None and (limits.messages_per_second > 0
                                           or limits.messages_per_hour > 0)

    async def _take_cluster(self, pool: str, site: Site, lane: int, decision: gate.Decision,
                            now: float, cluster_site: bool
                            ) -> tuple[list[tuple[gate.Grant, bool | None]], float, str,
                                       SiteGrant | None]:
        """[cluster]: the gate's grants confirmed in Redis, one call for the transaction:
        the warming IPs' caps and (`cluster_site`) the site's rates together
        (_take_shared), or the site's rates alone when this node shares no warm-up."""
        if self.shared is not None:
            return await self._take_shared(pool, site.provider, lane, decision, now,
                                           site if cluster_site else None)
        assert self.rates is not None
        want = sum(g.count for g in decision.grants)
        allowed = await self.rates.take(site.key, site.limits, want)
        budget = allowed.granted
        out: list[tuple[gate.Grant, bool | None]] = []
        for g in decision.grants:   # in the gate's order, up to what the site allowed
            n = min(g.count, budget)
            budget -= n
            if n < g.count:
                self.gate.give_back(g, g.count - n, now)
            if n:
                out.append((dataclasses.replace(g, count=n), None))
        retry_at = min(decision.retry_at, allowed.next_at if allowed.limited else math.inf)
        reason = decision.reason
        if allowed.limited and not decision.reason:
            reason = f"shaping: site {site.key} is at its rate limit until {gate._iso(retry_at)}"
        return out, retry_at, reason, allowed

    def _site_next_at(self, site: Site, allowed: SiteGrant, now: float) -> float:
        """When the site allows more (the cluster's answer, or the node's throttle)."""
        if self._cluster_rates(site):
            return allowed.next_at
        return self.throttle.next_at(site.key, site.limits, now)

    def _semaphore(self, site: str, limits: SiteLimits) -> asyncio.Semaphore:
        """Transactions under way to `site`, across all source IPs."""
        sem = self._conns.get(site)
        if sem is None:
            sem = self._conns[site] = asyncio.Semaphore(max(1, limits.max_connections or 1000))
        return sem

    async def flush(self) -> None:
        """Persist the IpStates changed since the last flush (one group commit)."""
        dirty, self.gate.dirty = self.gate.dirty, set()
        snapshot = {ip: _enc.encode(self.gate.state(ip)) for ip in dirty}
        newer = await self.store.write(persist_op(self.store, snapshot, self.gate.share))
        for ip, stored in newer.items():
            counters.merge_operator(self.gate.state(ip), stored)
            self.gate.dirty.add(ip)
            self.gate.invalidate()

    def flush_soon(self) -> None:
        """Persist in the background, now rather than after the next send (feedback that
        changed the gate: relay/warmup/feedback.py)."""
        task = asyncio.get_running_loop().create_task(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    def sync(self) -> None:
        """Adopt operator changes (CLI) made since the last look; with server.workers = N,
        also what the other workers hold the IPs back for."""
        self._synced_at = self.clock.now()
        secondary = self.gate.share is not None and self.gate.share[0] != 0
        records = stored_records(self.store)  # one read for the operator's and the peers'
        for ip, stored in load_states(self.store, records=records).items():
            mine = self.gate.states.get(ip)
            if mine is None:
                # Worker i counts its own sends: it takes the plan, not worker 0's counts.
                self.gate.states[ip] = counters.plan_only(stored) if secondary else stored
            elif stored.op_seq > mine.op_seq:
                counters.merge_operator(mine, stored)
                self.gate.dirty.add(ip)
                self.gate.invalidate()
        if self.gate.share is not None:
            self._sync_peers(self.gate.share[0], records)

    def _sync_peers(self, index: int, records: list[tuple[str, int, IpState]]) -> None:
        """Every worker sends from every IP, so a freeze or backoff one worker's traffic
        earned holds for all of them (it reaches the others within `sync_interval`), and
        the reputation rates count all their sends, bounces and complaints (the feedback
        listener, in worker 0, sees every complaint; each worker only its own sends)."""
        self.gate.peers = peer_states(records, index)
        today = self.gate.days.day_of(self.clock.now())
        for ip, others in self.gate.peers.items():
            if not self.gate.knows(ip):
                continue  # an IP no longer configured
            mine = self.gate.state(ip)
            # Every record is applied (a list, not a generator: any() would stop early).
            if any([counters.adopt_restrictions(mine, peer, today) for peer in others]):
                log.warning("warm-up: %s held back as another worker holds it (%s)", ip,
                            mine.frozen_reason or "backoff")
                self.gate.dirty.add(ip)
                self.gate.invalidate()

    async def close(self) -> None:
        if self.gate.dirty:
            await self.flush()
