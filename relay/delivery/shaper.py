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
and per hour are counted in Redis for all nodes together, one call per transaction
(`_site_allowed`), and the client's connections to a provider's site hold leases there.
Backoffs and freezes the gate reports go to `event_log` as WarmupBackoff /
WarmupFreeze events.

Operator changes (`relay warmup freeze|resume|set`) are written by the CLI
with a higher op_seq; this process merges them (counters.merge_operator) when
it persists and every `sync_interval` seconds. With server.workers = N it also
reads the other workers' records of each IP then (`_sync_peers`): their freezes
and backoff pauses hold here too, and the reputation rates are over all of them.
"""

from __future__ import annotations

import asyncio
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

    async def give_back(self, grant: SiteGrant, n: int, limits: SiteLimits) -> None: ...


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

    def publish(self) -> None:
        """Write the gate's backoff/freeze notices to the event log."""
        notes, self.gate.events = self.gate.events, []
        if notes and self.event_log is not None:
            self.event_log.emit([warmup_event(n.kind, n.ip, n.provider, n.reason, n.until,
                                              n.action, n.at) for n in notes])

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
        allowed = await self._site_allowed(site, now, len(recipients))
        want = allowed.granted
        decision = self.gate.acquire(pool, site.provider, want, now, lane)
        granted = sum(g.count for g in decision.grants)
        await self._site_taken(site, allowed, granted, now)
        out: list[Outcome] = []
        start = 0
        parts: list[tuple[gate.Grant, list[str]]] = []
        for g in decision.grants:
            parts.append((g, list(recipients[start:start + g.count])))
            start += g.count
        results = await asyncio.gather(*(
            self._send_part(destination, targets, sender, rcpts, data, g, site.key,
                            site.limits, kwargs) for g, rcpts in parts))
        for r in results:
            out.extend(r)
        rest = len(recipients) - start
        if rest:
            at = decision.retry_at
            if want < len(recipients):
                at = min(at, self._site_next_at(site, allowed, now))
            if not math.isfinite(at):
                at = now + 300.0
            reason = decision.reason or (
                f"shaping: site {site.key} is at its rate limit until {gate._iso(at)}")
            out.extend([held(reason, at)] * rest)
        if self.gate.dirty:
            await self.flush()
        return out

    async def _send_part(self, destination: str, targets: Sequence[Any], sender: str,
                         rcpts: list[str], data: bytes, grant: gate.Grant, site: str,
                         limits: SiteLimits, options: dict[str, Any] | None = None
                         ) -> list[Outcome]:
        async with self._semaphore(site, limits):
            result = await self.sender.send(destination, targets, sender, rcpts, data,
                                            **{**(options or {}), "source_address": grant.ip,
                                               "ehlo": grant.ehlo or None})
        outs = outcomes_of(result)
        notices = self.gate.settle(grant, [(o.kind, o.response) for o in outs],
                                   self.clock.now())
        for n in notices:
            log.warning("%s", n)
        self.notices.extend(notices)
        self.publish()
        return outs

    def share_sites(self, rates: SiteRates) -> None:
        """[cluster]: site rates counted for all nodes together by `rates`."""
        self.rates = rates

    async def _site_allowed(self, site: Site, now: float, want: int) -> SiteGrant:
        """How many of `want` the site's messages per second and per hour allow now: the
        node's own throttle, or with [cluster] the cluster's (one Redis call, counted at
        once; a site without rate limits costs none)."""
        if self._cluster_rates(site):
            assert self.rates is not None
            return await self.rates.take(site.key, site.limits, want)
        return SiteGrant(site.key, self.throttle.allowed(site.key, site.limits, now, want), now)

    def _cluster_rates(self, site: Site) -> bool:
        """Whether `site`'s rates are counted for the cluster ([cluster], a rate set)."""
        limits = site.limits
        return self.rates is not None and (limits.messages_per_second > 0
                                           or limits.messages_per_hour > 0)

    async def _site_taken(self, site: Site, allowed: SiteGrant, granted: int,
                          now: float) -> None:
        """`granted` of `allowed` go out: counted by the node's throttle, or (cluster) the
        units the warm-up gate did not use given back."""
        if not self._cluster_rates(site):
            self.throttle.take(site.key, site.limits, now, granted)
        elif self.rates is not None and granted < allowed.granted:
            await self.rates.give_back(allowed, allowed.granted - granted, site.limits)

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
