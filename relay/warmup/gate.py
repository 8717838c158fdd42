"""The warm-up gate: which source IP of which pool may send how many now, to a provider.

Theory of operation
-------------------
Rule 1: `acquire(pool, provider, want, now)` reserves capacity *synchronously*
(no await between the decision and the count), so concurrent workers never
overshoot a cap. It fills from the pool's IPs, the one with the most room
first (warm IPs, which have no cap, in turn), then follows the pool's overflow
to another pool, or stops at "defer" and says when the next window opens.
Rule 2: `settle(grant, outcomes, now)` gives back what the provider never took
(4xx, connection failures), applies backoff rules to the replies, and keeps
the rolling bounce/complaint rates that freeze a plan.
Rule 3: state is `IpState` per IP (relay.warmup.counters); the gate marks the
IPs it changed in `dirty` for the shell to persist, and queues a `WarmupNotice`
in `events` for every backoff and freeze (the shell writes them to the event
log). Pure: `now` comes from the caller; nothing here awaits, sleeps or touches disk.
Rule 4: priority lanes (relay.warmup.lanes). When a higher lane is held back for
lack of capacity, it leaves a *claim* on (pool, provider) until its next window
(plus CLAIM_GRACE); a lower lane may then only take what exceeds the claims, so a
scarce cap goes to transactional and engaged mail first, whichever worker asks
first. A claim shrinks as its lane is granted and lapses on its own: an
over-stated claim can hold bulk back for at most CLAIM_GRACE after the window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relay.warmup import backoff, counters, pacing
from relay.warmup.counters import DayClock, IpState
from relay.warmup.plans import Plan, resolve
from relay.workers import split

UNLIMITED = 1 << 62
CLAIM_GRACE = 600.0
BULK = 2   # relay.warmup.lanes.BULK: the lowest lane, the default


@dataclass(frozen=True)
class WarmupNotice:
    kind: str              # "WarmupFreeze" | "WarmupBackoff"
    ip: str
    provider: str          # "" = every provider
    reason: str
    until: float | None    # None = until resumed by hand
    action: str
    at: float


@dataclass(frozen=True)
class IpSpec:
    address: str
    ehlo: str


@dataclass(frozen=True)
class PoolSpec:
    name: str
    ips: tuple[IpSpec, ...]
    plan: Plan | None = None
    start_day: int | None = None      # calendar day of plan day 1
    overflow: str = "defer"


@dataclass(frozen=True)
class Grant:
    ip: str
    ehlo: str
    pool: str
    provider: str
    count: int


@dataclass(frozen=True)
class Decision:
    grants: tuple[Grant, ...]
    deferred: int
    retry_at: float       # when to try the deferred part again (inf: nothing deferred)
    reason: str = ""


@dataclass(frozen=True)
class Reputation:
    bounce_rate_limit: float = 0.05
    complaint_rate_limit: float = 0.001
    window_hours: int = 24
    min_messages: int = 200


@dataclass
class WarmupGate:
    pools: Mapping[str, PoolSpec]
    days: DayClock = field(default_factory=DayClock)
    pacing: str = "hourly"
    burst: float = 2.0
    rules: Sequence[backoff.Rule] = backoff.BUILTIN_RULES
    reputation: Reputation = field(default_factory=Reputation)
    states: dict[str, IpState] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    _rr: dict[str, int] = field(default_factory=dict)
    # (pool, provider) -> until when every IP of the pool is known to be out of capacity,
    # so a backlog does not rescan the pool's IPs for every decision.
    _full: dict[tuple[str, str], float] = field(default_factory=dict)
    # (pool, provider) -> lane -> [recipients held back, claim lapses at]
    _claims: dict[tuple[str, str], dict[int, list[float]]] = field(default_factory=dict)
    events: list[WarmupNotice] = field(default_factory=list)
    # Multi-process mode (relay/workers.py): (worker, workers). Every worker may send
    # from every IP, so each keeps to its share of each cap; the shares add up to the cap.
    share: tuple[int, int] | None = None
    # IP -> the other workers' records of it, as last persisted (the shell's sync): the
    # reputation rates are the IP's over every worker's sends, bounces and complaints.
    peers: dict[str, list[IpState]] = field(default_factory=dict)
    # [cluster]: Redis counts every node's and worker's sends of an IP, so the gate, a
    # pre-filter then, keeps to the whole cap, not the worker's split of it.
    whole_caps: bool = False

    def __post_init__(self) -> None:
        self._pool_of = {ip.address: p for p in self.pools.values() for ip in p.ips}

    # ------------------------------------------------------------------ decisions

    def state(self, ip: str) -> IpState:
        st = self.states.get(ip)
        if st is None:
            st = self.states[ip] = IpState()
        return st

    def cap(self, pool: PoolSpec, ip: str, provider: str, now: float) -> int | None:
        """Today's cap for `ip` toward `provider` (None = no cap: a warm pool)."""
        if pool.plan is None:
            return None
        today = self.days.day_of(now)
        if pool.start_day is not None and today < pool.start_day:
            return 0
        st = self.state(ip)
        cap = pool.plan.cap(counters.plan_day(counters.counter(st, provider), st, today))
        if cap is None or self.whole_caps:
            return cap
        return split(cap, self.share)

    def available(self, pool: PoolSpec, ip: str, provider: str,
                  now: float) -> tuple[int, float]:
        """(how many may go now, when more may go if none)."""
        st = self.state(ip)
        pc = counters.counter(st, provider)
        if pc.paused_until > now:
            return 0, pc.paused_until
        cap = self.cap(pool, ip, provider, now)
        if cap is None:
            return UNLIMITED, now
        today = self.days.day_of(now)
        if pool.start_day is not None and today < pool.start_day:
            return 0, self.days.start_of(pool.start_day)
        sent = counters.sent_today(pc, today)
        n = pacing.allowed(cap, sent, counters.hour_sent(pc, self.days.hour_of(now)),
                           mode=self.pacing, burst=self.burst)
        if n:
            return n, now
        return 0, pacing.next_window(cap, sent, now, self.days.start_of(today + 1),
                                     mode=self.pacing, boundary=self.days.boundary)

    def _reserved(self, key: tuple[str, str], priority: int, now: float) -> tuple[int, float]:
        """(recipients higher lanes claim on `key`, when the earliest such claim lapses)."""
        claims = self._claims.get(key)
        if not claims:
            return 0, math.inf
        held, lapse = 0, math.inf
        for lane, (count, until) in list(claims.items()):
            if until <= now or count <= 0:
                del claims[lane]
            elif lane < priority:
                held += int(count)
                lapse = min(lapse, until)
        return held, lapse

    def _claim(self, key: tuple[str, str], priority: int, granted: int, held: int,
               until: float) -> None:
        claims = self._claims.get(key)
        c = claims.get(priority) if claims else None
        if c is not None:
            c[0] = max(0.0, c[0] - granted)
        if held and priority < BULK and math.isfinite(until):
            if c is None:
                c = self._claims.setdefault(key, {}).setdefault(priority, [0.0, 0.0])
            c[0] += held
            c[1] = max(c[1], until + CLAIM_GRACE)

    def acquire(self, pool_name: str, provider: str, want: int, now: float,
                priority: int = BULK) -> Decision:
        grants: list[Grant] = []
        remaining = want
        retry_at = math.inf
        seen: set[str] = set()
        name = pool_name
        while remaining > 0 and name in self.pools and name not in seen:
            seen.add(name)
            pool = self.pools[name]
            full_until = self._full.get((name, provider), -math.inf)
            if full_until > now:
                retry_at = min(retry_at, full_until)
                name = pool.overflow
                continue
            # Higher lanes held back earlier keep their share of what is left (Rule 4).
            budget = UNLIMITED
            reserved, lapse = self._reserved((name, provider), priority, now)
            if reserved:
                total = sum(min(self.available(pool, ip.address, provider, now)[0],
                                UNLIMITED) for ip in pool.ips)
                budget = total - reserved
                if budget <= 0:
                    retry_at = min(retry_at, lapse)
                    name = pool.overflow
                    continue
            # First fit, starting one IP further each time: the pool's IPs take turns.
            start = self._rr.get(name, 0)
            size = len(pool.ips)
            pool_retry = math.inf
            asked = remaining
            remaining = min(remaining, budget)
            for k in range(size):
                if remaining <= 0:
                    break
                ip = pool.ips[(start + k) % size]
                n, at = self.available(pool, ip.address, provider, now)
                if n == 0:
                    pool_retry = min(pool_retry, at)
                    continue
                take = min(n, remaining)
                self._record(ip.address, provider, take, now)
                grants.append(Grant(ip.address, ip.ehlo, pool.name, provider, take))
                remaining -= take
                self._rr[name] = start + k + 1
                if remaining > 0:   # this IP is out of room now: when does it have more?
                    pool_retry = min(pool_retry,
                                     self.available(pool, ip.address, provider, now)[1])
            if remaining > 0:   # every IP of the pool was asked and none has room left
                self._full[(name, provider)] = pool_retry
                retry_at = min(retry_at, pool_retry)
            if budget < asked:   # the rest is reserved for higher lanes
                retry_at = min(retry_at, lapse)
            remaining += asked - min(asked, budget)
            name = pool.overflow
        if pool_name in self.pools and (remaining or self._claims):
            self._claim((pool_name, provider), priority,
                        sum(g.count for g in grants if g.pool == pool_name), remaining,
                        retry_at)
        reason = ""
        if remaining:
            reason = (f"warm-up: pool \"{pool_name}\" has no capacity left toward "
                      f"{provider} until {_iso(retry_at)}")
        return Decision(tuple(grants), remaining, retry_at if remaining else math.inf,
                        reason)

    def give_back(self, grant: Grant, n: int, now: float) -> None:
        """`n` of `grant` were not granted after all ([cluster]: Redis had less left):
        uncount them, so the gate's counts are what was sent."""
        st = self.state(grant.ip)
        counters.refund(counters.counter(st, grant.provider), n, self.days.day_of(now),
                        self.days.hour_of(now))
        self.dirty.add(grant.ip)

    def _record(self, ip: str, provider: str, n: int, now: float) -> None:
        st = self.state(ip)
        counters.record(counters.counter(st, provider), st, n, self.days.day_of(now),
                        self.days.hour_of(now))
        self.dirty.add(ip)

    # ------------------------------------------------------------------ results

    def settle(self, grant: Grant, outcomes: Iterable[tuple[str, str]],
               now: float, extra_rules: Sequence[backoff.Rule] = ()) -> list[str]:
        """Apply a transaction's outcomes ((kind, response) per recipient); return notices.
        `extra_rules` are tried after the configured backoff rules (a reputation refusal
        reported later: relay/warmup/reputation.py)."""
        rules = (*self.rules, *extra_rules) if extra_rules else self.rules
        st = self.state(grant.ip)
        pc = counters.counter(st, grant.provider)
        today, hour = self.days.day_of(now), self.days.hour_of(now)
        notices: list[str] = []
        not_taken = bounced = 0
        fired: backoff.Rule | None = None
        for kind, response in outcomes:
            if kind == "deferred":
                not_taken += 1
            elif kind == "bounced":
                bounced += 1
            if fired is None and kind != "delivered":
                fired = backoff.match(rules, grant.provider, response)
                if fired is not None:
                    if fired.pauses:
                        pc.paused_until = max(pc.paused_until, now + fired.duration)
                        pc.pause_reason = response.strip()[:200]
                    if fired.freezes:
                        counters.roll(pc, st, today)
                        pc.freeze_day = today
                    notices.append(
                        f"backoff: {grant.ip} toward {grant.provider}: {fired.action} "
                        f"for {int(fired.duration)}s after \"{response.strip()[:120]}\"")
                    self.events.append(WarmupNotice(
                        "WarmupBackoff", grant.ip, grant.provider, response.strip()[:200],
                        (now + fired.duration if fired.pauses
                         else self.days.start_of(today + 1)), fired.action, now))
        if not_taken:
            counters.refund(pc, not_taken, today, hour)
            self._full.pop((grant.pool, grant.provider), None)
        taken = grant.count - not_taken
        counters.note_results(st, hour, sent=taken, bounced=bounced,
                              window_hours=self.reputation.window_hours)
        notice = self._check_reputation(grant.ip, st, now)
        if notice:
            notices.append(notice)
        self.dirty.add(grant.ip)
        return notices

    def note_complaint(self, ip: str, now: float) -> str | None:
        st = self.state(ip)
        counters.note_results(st, self.days.hour_of(now), complained=1,
                              window_hours=self.reputation.window_hours)
        self.dirty.add(ip)
        return self._check_reputation(ip, st, now)

    def _check_reputation(self, ip: str, st: IpState, now: float) -> str | None:
        if st.frozen:
            return None
        rep = self.reputation
        sent, br, cr = counters.rates(st, self.days.hour_of(now), rep.window_hours,
                                      self.peers.get(ip, ()))
        if sent < rep.min_messages:
            return None
        if br > rep.bounce_rate_limit or cr > rep.complaint_rate_limit:
            what = (f"bounce rate {br:.1%}" if br > rep.bounce_rate_limit
                    else f"complaint rate {cr:.2%}")
            reason = f"{what} over {rep.window_hours}h on {sent} messages"
            counters.freeze(st, self.days.day_of(now), reason)
            self.events.append(WarmupNotice("WarmupFreeze", ip, "", reason, None, "freeze",
                                            now))
            return f"warm-up frozen for {ip}: {reason}"
        return None

    def knows(self, ip: str) -> bool:
        """Whether `ip` is in one of the configured pools."""
        return ip in self._pool_of

    # ------------------------------------------------------------------ operator

    def invalidate(self) -> None:
        """Forget what is known about exhausted pools (after an outside change of state)."""
        self._full.clear()

    def _operator(self, ip: str) -> IpState:
        if ip not in self._pool_of:
            raise KeyError(ip)
        self.invalidate()
        st = self.state(ip)
        st.op_seq += 1
        self.dirty.add(ip)
        return st

    def freeze(self, ip: str, now: float) -> None:
        counters.freeze(self._operator(ip), self.days.day_of(now))

    def resume(self, ip: str, now: float) -> None:
        counters.resume(self._operator(ip), self.days.day_of(now))

    def set_day(self, ip: str, day: int, now: float) -> None:
        if day < 1:
            raise ValueError("the plan day is 1 or more")
        counters.set_day(self._operator(ip), day, self.days.day_of(now))

    # ------------------------------------------------------------------ status

    def status(self, now: float) -> list[dict[str, Any]]:
        today = self.days.day_of(now)
        out: list[dict[str, Any]] = []
        for pool in self.pools.values():
            for ip in pool.ips:
                st = self.state(ip.address)
                provs: dict[str, Any] = {}
                for name, pc in sorted(st.providers.items()):
                    day = counters.plan_day(pc, st, today)
                    provs[name] = {
                        "day": day,
                        "cap": pool.plan.cap(day) if pool.plan else None,
                        "sent_today": counters.sent_today(pc, today),
                        "frozen_today": pc.freeze_day == today,
                        "paused_until": _iso(pc.paused_until) if pc.paused_until > now
                        else None,
                        "pause_reason": pc.pause_reason if pc.paused_until > now else "",
                    }
                day = max((p["day"] for p in provs.values()), default=st.base_advanced + 1)
                started = pool.start_day is None or today >= pool.start_day
                step = pool.plan.next_step(day) if pool.plan else None
                out.append({
                    "ip": ip.address, "ehlo": ip.ehlo, "pool": pool.name,
                    "plan": pool.plan.name if pool.plan else None,
                    "started": started,
                    "day": day if pool.plan else None,
                    "cap_today": (pool.plan.cap(day) if started else 0) if pool.plan else None,
                    "sent_today": sum(p["sent_today"] for p in provs.values()),
                    "providers": provs,
                    "frozen": st.frozen, "frozen_reason": st.frozen_reason,
                    "next_step": None if step is None else {
                        "day": step[0], "cap": step[1],
                        "earliest": _iso(self.days.start_of(today + step[0] - day)
                                         if started else self.days.start_of(
                                             (pool.start_day or today) + step[0] - 1))[:10],
                    },
                })
        return out


def _iso(ts: float) -> str:
    if not math.isfinite(ts):
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_config(cfg: Any, states: dict[str, IpState] | None = None,
                share: tuple[int, int] | None = None) -> WarmupGate:
    """A gate for a relay.config.Config (pools, plans, [warmup], [[backoff]])."""
    days = DayClock(cfg.warmup.boundary_seconds)
    custom = {p.name: p.caps for p in cfg.warmup_plan}
    pools: dict[str, PoolSpec] = {}
    for p in cfg.pool:
        ips = tuple(IpSpec(ip.address, ip.ehlo or p.ehlo.get(ip.address, "")) for ip in p.ips)
        pools[p.name] = PoolSpec(
            p.name, ips, resolve(p.warmup_plan, custom),
            days.day_of_date(p.warmup_start) if p.warmup_start else None, p.overflow)
    rules = tuple(backoff.rule(r.pattern, r.action, r.duration, r.provider)
                  for r in cfg.backoff) + backoff.BUILTIN_RULES
    rep = Reputation(cfg.warmup.bounce_rate_limit, cfg.warmup.complaint_rate_limit,
                     max(1, int(cfg.warmup.reputation_window // 3600)),
                     cfg.warmup.reputation_min_messages)
    return WarmupGate(pools, days, cfg.warmup.pacing, cfg.warmup.burst_factor, rules, rep,
                      dict(states or {}), share=share)
