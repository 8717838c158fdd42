"""Per-IP warm-up counters: sent per calendar day per provider, plan progress, freezes.

Theory of operation
-------------------
Rule 1: counters are keyed by (source IP, provider). A provider's plan day is
1 + the number of *counted* sending days: a calendar day counts when the IP
sent to that provider that day, the day was not frozen by backoff, and the IP
was not frozen by the operator or its reputation. So a pause never skips the
ramp, and each provider ramps on its own.
Rule 2: a counter rolls over lazily: the first touch on a new calendar day
(`roll`) decides whether the previous day counted, then resets the day count.
Rule 3: everything is plain msgspec data so the shell can persist an `IpState`
as-is; nothing here reads a clock (callers pass `now`) or does I/O.

The calendar day starts at `DayClock.boundary` seconds after 00:00 UTC.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

DAY = 86400.0
HOUR = 3600.0


class DayClock:
    """Calendar days relay counts in: day n starts at boundary + n * DAY (epoch seconds)."""

    def __init__(self, boundary: float = 0.0) -> None:
        self.boundary = boundary

    def day_of(self, now: float) -> int:
        return math.floor((now - self.boundary) / DAY)

    def hour_of(self, now: float) -> int:
        return math.floor((now - self.boundary) / HOUR)

    def start_of(self, day: int) -> float:
        return self.boundary + day * DAY

    def day_of_date(self, date: str) -> int:
        """The calendar day that begins on `date` ("YYYY-MM-DD")."""
        epoch = dt.datetime.combine(dt.date.fromisoformat(date), dt.time(),
                                    tzinfo=dt.UTC).timestamp()
        return self.day_of(epoch + self.boundary)


class ProviderCounter(msgspec.Struct):
    advanced: int = 0        # counted sending days so far (plan day = advanced + 1)
    day: int = -1            # the calendar day `sent` belongs to
    sent: int = 0
    hour: int = -1           # the clock hour `hour_sent` belongs to
    hour_sent: int = 0
    freeze_day: int = -1     # a calendar day whose progress backoff froze
    paused_until: float = 0.0
    pause_reason: str = ""


class Bucket(msgspec.Struct, array_like=True):
    hour: int
    sent: int = 0
    bounced: int = 0
    complained: int = 0


class IpState(msgspec.Struct):
    frozen: bool = False
    frozen_reason: str = ""
    base_advanced: int = 0   # progress given to providers not seen yet (set --day)
    op_seq: int = 0          # bumped by every operator change (CLI), see merge_operator
    providers: dict[str, ProviderCounter] = {}
    reputation: list[Bucket] = []


def counter(ip: IpState, provider: str) -> ProviderCounter:
    pc = ip.providers.get(provider)
    if pc is None:
        pc = ip.providers[provider] = ProviderCounter(advanced=ip.base_advanced)
    return pc


def _counts(pc: ProviderCounter, ip: IpState) -> bool:
    """Whether the counter's recorded day advances the plan."""
    return pc.day >= 0 and pc.sent > 0 and pc.freeze_day != pc.day and not ip.frozen


def roll(pc: ProviderCounter, ip: IpState, today: int) -> None:
    if pc.day == today:
        return
    if pc.day < today and _counts(pc, ip):
        pc.advanced += 1
    pc.day, pc.sent = today, 0


def plan_day(pc: ProviderCounter, ip: IpState, today: int) -> int:
    pending = 1 if pc.day < today and _counts(pc, ip) else 0
    return pc.advanced + pending + 1


def sent_today(pc: ProviderCounter, today: int) -> int:
    return pc.sent if pc.day == today else 0


def hour_sent(pc: ProviderCounter, hour: int) -> int:
    return pc.hour_sent if pc.hour == hour else 0


def record(pc: ProviderCounter, ip: IpState, n: int, today: int, hour: int) -> None:
    roll(pc, ip, today)
    pc.sent += n
    if pc.hour != hour:
        pc.hour, pc.hour_sent = hour, 0
    pc.hour_sent += n


def refund(pc: ProviderCounter, n: int, today: int, hour: int) -> None:
    """Give back sends that never reached the provider (connection failed, 4xx)."""
    if pc.day == today:
        pc.sent = max(0, pc.sent - n)
    if pc.hour == hour:
        pc.hour_sent = max(0, pc.hour_sent - n)


# ---------------------------------------------------------------------- operator actions


def freeze(ip: IpState, today: int, reason: str = "frozen by the operator") -> None:
    for pc in ip.providers.values():
        roll(pc, ip, today)  # earlier days still count
    ip.frozen, ip.frozen_reason = True, reason


def resume(ip: IpState, today: int) -> None:
    for pc in ip.providers.values():
        roll(pc, ip, today)  # days sent while frozen do not count
    ip.frozen, ip.frozen_reason = False, ""


def set_day(ip: IpState, day: int, today: int) -> None:
    """Make `day` the plan day for every provider today."""
    ip.base_advanced = day - 1
    for pc in ip.providers.values():
        roll(pc, ip, today)
        pc.advanced = day - 1


def merge_operator(mine: IpState, stored: IpState) -> IpState:
    """`mine` (in memory, counting) with the operator's changes from `stored` (the CLI).

    The operator owns frozen/base_advanced/advanced when the stored op_seq is newer;
    the counting process owns the day's counts.
    """
    if stored.op_seq <= mine.op_seq:
        return mine
    mine.frozen, mine.frozen_reason = stored.frozen, stored.frozen_reason
    mine.base_advanced, mine.op_seq = stored.base_advanced, stored.op_seq
    for name, spc in stored.providers.items():
        pc = counter(mine, name)
        pc.advanced = spc.advanced
        if pc.day == spc.day:
            pc.freeze_day = spc.freeze_day
        if spc.paused_until < pc.paused_until:  # the operator may lift a pause
            pc.paused_until = spc.paused_until
    return mine


# ---------------------------------------------------------------------- workers

# With server.workers = N every worker may send from every IP and counts its own share
# (relay/supervisor.py), so each keeps its own IpState: worker 0 (and a single process)
# under the IP itself, which is also where the operator's changes go (the CLI), worker
# i under "IP#i". One shared record let the last writer's counts stand for all workers.


def worker_key(ip: str, worker: tuple[int, int] | None) -> str:
    """PURE: where `worker` keeps its IpState of `ip`."""
    return ip if worker is None or worker[0] == 0 else f"{ip}#{worker[0]}"


def parse_key(key: str) -> tuple[str, int]:
    """PURE: (IP, worker index) of a stored key (0 for the IP's own key)."""
    ip, _, index = key.partition("#")
    return ip, int(index) if index.isdigit() else 0


def plan_only(st: IpState) -> IpState:
    """PURE: `st` without its counts: the plan's progress, freezes, pauses and the
    operator's sequence, for a worker that starts counting an IP on its own."""
    return IpState(
        frozen=st.frozen, frozen_reason=st.frozen_reason, base_advanced=st.base_advanced,
        op_seq=st.op_seq,
        providers={name: msgspec.structs.replace(pc, sent=0, hour_sent=0)
                   for name, pc in st.providers.items()})


def adopt_restrictions(mine: IpState, peer: IpState, today: int) -> bool:
    """PURE but for `mine`: take on what another worker's record of the same IP holds
    back that `mine` does not: a reputation freeze, a backoff pause toward a provider, a
    backoff freeze of today. The most restrictive stands, since all workers send from
    the IP. A peer that has not seen the operator's latest change (a lower op_seq) is
    ignored: after `relay warmup resume` its stale freeze must not come back. Whether
    `mine` changed."""
    if peer.op_seq < mine.op_seq:
        return False
    changed = False
    if peer.frozen and not mine.frozen:
        freeze(mine, today, peer.frozen_reason or "frozen by another worker")
        changed = True
    for name, ppc in peer.providers.items():
        pc = counter(mine, name)
        if ppc.paused_until > pc.paused_until:
            pc.paused_until, pc.pause_reason = ppc.paused_until, ppc.pause_reason
            changed = True
        if ppc.freeze_day == today and pc.freeze_day != today:
            roll(pc, mine, today)
            pc.freeze_day = today
            changed = True
    return changed


def adopt_counter(pc: ProviderCounter, *, advanced: int, day: int, sent: int, hour: int,
                  hour_sent: int, freeze_day: int, paused_until: float,
                  pause_reason: str | None = None, in_flight: int = 0) -> None:
    """PURE but for `pc`: take on a counter as the cluster has it ([cluster]: Redis counts
    every node's sends of the IP). `in_flight`: this node's units granted locally and not
    yet answered by Redis, which the cluster's count does not hold yet. The later pause
    stands (every node sends from the IP). `in_flight` may be negative: units given back
    (a 4xx) that Redis has not been told of yet."""
    pc.advanced, pc.day, pc.sent = advanced, day, max(0, sent + in_flight)
    pc.hour, pc.hour_sent = hour, max(0, hour_sent + in_flight)
    pc.freeze_day = freeze_day
    if paused_until > pc.paused_until:
        pc.paused_until = paused_until
        if pause_reason is not None:
            pc.pause_reason = pause_reason


def adopt_shared(ip: IpState, *, frozen: bool, reason: str, base: int) -> None:
    """PURE but for `ip`: the IP's freeze and base progress as the cluster has them (an
    operator's resume on any node lifts a freeze on every node)."""
    ip.frozen, ip.frozen_reason, ip.base_advanced = frozen, reason, base


def adopt_state(ip: IpState, state: Mapping[str, Any],
                in_flight: Callable[[str], int] = lambda provider: 0) -> None:
    """PURE but for `ip`: an IP's whole state as the cluster has it (relay/cluster/
    warmup.py's JSON: frozen, reason, base, providers: {name: {adv, day, sent, hour, hs,
    fz, pu, pr}}); `in_flight(provider)` as for adopt_counter. KeyError, TypeError or
    ValueError when it is malformed."""
    providers = dict(state["providers"] or {})
    if state.get("known", True):  # an IP no node ever froze, resumed or set: no opinion
        adopt_shared(ip, frozen=bool(state["frozen"]), reason=str(state["reason"]),
                     base=int(state["base"]))
        for name, pc in ip.providers.items():  # not counted in Redis yet: from the base
            if name not in providers:
                pc.advanced = ip.base_advanced
    for name, p in providers.items():
        adopt_counter(counter(ip, str(name)), advanced=int(p["adv"]), day=int(p["day"]),
                      sent=int(p["sent"]), hour=int(p["hour"]), hour_sent=int(p["hs"]),
                      freeze_day=int(p["fz"]), paused_until=float(p["pu"]),
                      pause_reason=str(p["pr"]), in_flight=in_flight(str(name)))


def restrictions(ip: IpState, today: int, now: float
                 ) -> tuple[bool, str, list[tuple[str, float, str, bool]]]:
    """PURE: what holds `ip` back now, for the other nodes: (frozen, why, per provider
    (name, paused until, why, frozen today)) for the providers with a pause or a frozen day."""
    held = [(name, pc.paused_until, pc.pause_reason, pc.freeze_day == today)
            for name, pc in ip.providers.items()
            if pc.paused_until > now or pc.freeze_day == today]
    return ip.frozen, ip.frozen_reason, held


def add_counts(total: IpState, other: IpState) -> None:
    """Add `other`'s counts (another worker's) into `total`, for a status of the IP as a
    whole: sends of the same day and hour add up; a later day or hour replaces; frozen if
    either is; the later pause and the further plan progress stand."""
    total.frozen = total.frozen or other.frozen
    total.frozen_reason = total.frozen_reason or other.frozen_reason
    for name, opc in other.providers.items():
        pc = counter(total, name)
        if opc.day == pc.day:
            pc.sent += opc.sent
        elif opc.day > pc.day:
            pc.day, pc.sent = opc.day, opc.sent
        if opc.hour == pc.hour:
            pc.hour_sent += opc.hour_sent
        elif opc.hour > pc.hour:
            pc.hour, pc.hour_sent = opc.hour, opc.hour_sent
        pc.advanced = max(pc.advanced, opc.advanced)
        pc.freeze_day = max(pc.freeze_day, opc.freeze_day)
        if opc.paused_until > pc.paused_until:
            pc.paused_until, pc.pause_reason = opc.paused_until, opc.pause_reason
    by_hour = {b.hour: b for b in total.reputation}
    for b in other.reputation:
        mine = by_hour.get(b.hour)
        if mine is None:
            by_hour[b.hour] = Bucket(b.hour, b.sent, b.bounced, b.complained)
        else:
            mine.sent += b.sent
            mine.bounced += b.bounced
            mine.complained += b.complained
    total.reputation = [by_hour[h] for h in sorted(by_hour)]


# ---------------------------------------------------------------------- reputation


def note_results(ip: IpState, hour: int, *, sent: int = 0, bounced: int = 0,
                 complained: int = 0, window_hours: int = 24) -> None:
    if not ip.reputation or ip.reputation[-1].hour != hour:
        ip.reputation.append(Bucket(hour))
    b = ip.reputation[-1]
    b.sent += sent
    b.bounced += bounced
    b.complained += complained
    while ip.reputation and ip.reputation[0].hour <= hour - window_hours:
        ip.reputation.pop(0)


def rates(ip: IpState, hour: int, window_hours: int,
          peers: Sequence[IpState] = ()) -> tuple[int, float, float]:
    """(sent, bounce rate, complaint rate) over the window ending at `hour`, of `ip` and
    of `peers` (the same IP's records of the other workers: each counts its own sends and
    bounces, and the complaints reach worker 0 only)."""
    live = [b for st in (ip, *peers) for b in st.reputation if b.hour > hour - window_hours]
    sent = sum(b.sent for b in live)
    if not sent:
        return 0, 0.0, 0.0
    return (sent, sum(b.bounced for b in live) / sent,
            sum(b.complained for b in live) / sent)
