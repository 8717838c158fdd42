"""PURE reputation status per scope (a tenant or a configuration set): SES's Healthy,
UnderReview and Paused, from the bounce and complaint rates.

Representative volume
---------------------
SES does not judge a sender over a fixed period: it looks at a "representative volume",
an amount of recent mail that fairly shows how the sender sends, different for a large
and a small sender (SES's bounce FAQ). relay's reading of it: the rates are taken over
the last `window` of time (default 7 days), and when that holds fewer than `min_volume`
sends, over a longer span going back hour by hour until it does, but never more than
`max_window` (default 30 days). So a large sender is judged on its last week, and a
small one on enough of its mail to mean something rather than on a handful of messages.
With fewer than `min_volume` sends even then, the figures are reported and nothing
changes. A span never reaches back before the scope's `last_fresh_start` (SES's
LastFreshStart: the operator's resume), so the figures that caused a pause cannot pause
it again at once.

Counts are kept per hour (so at most max_window / 1 h buckets per scope: 720 at 30
days): sends (recipients accepted, simulator mail never counted: as in SES the simulator
never moves reputation), hard bounces and complaints, each counted at the hour it
happened. The rates are bounces / sends and complaints / sends over the span.

Statuses (the lines are [reputation] settings, SES's published figures by default):
Healthy → UnderReview at a bounce rate of 5 % or a complaint rate of 0.1 %; → Paused at
10 % or 0.5 % (from either). UnderReview goes back to Healthy by itself once both rates
are below the review lines. Paused is left only by an operator's resume (`resume()`),
which starts a fresh window. An operator may also pause (`pause()`); the figures never
change a Paused status. `evaluate()` returns the new StatusRecord when the status
changes, else None; the caller stores it and publishes the change. Evaluate after each
bounce and complaint and now and then (recovery, counts aging out); it costs one pass
over the scope's hourly buckets. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from relay.tenants.model import ReputationStatus, StatusRecord

HOUR = 3600
AUTOMATIC_BY = "relay"  # StatusRecord.changed_by of a change made by the figures


class ReputationSettings(Protocol):
    """The [reputation] section of relay.config (read by attribute)."""

    @property
    def bounce_review(self) -> float: ...
    @property
    def bounce_pause(self) -> float: ...
    @property
    def complaint_review(self) -> float: ...
    @property
    def complaint_pause(self) -> float: ...
    @property
    def min_volume(self) -> int: ...
    @property
    def window(self) -> float: ...
    @property
    def max_window(self) -> float: ...


@dataclass(frozen=True)
class Lines:
    bounce_review: float = 0.05
    bounce_pause: float = 0.10
    complaint_review: float = 0.001
    complaint_pause: float = 0.005
    min_volume: int = 1000
    window: float = 7 * 86400.0
    max_window: float = 30 * 86400.0

    @classmethod
    def of(cls, settings: ReputationSettings) -> Lines:
        return cls(settings.bounce_review, settings.bounce_pause, settings.complaint_review,
                   settings.complaint_pause, settings.min_volume, float(settings.window),
                   float(settings.max_window))


@dataclass(frozen=True)
class Figures:
    """A scope's counts over its span (see the module docstring) and their rates."""

    sends: int = 0
    bounces: int = 0
    complaints: int = 0
    since: float = 0.0  # start of the span (epoch seconds)

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.sends if self.sends else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sends if self.sends else 0.0


def percent(rate: float) -> str:
    """0.104 -> "10.4 %", 0.001 -> "0.1 %"."""
    return f"{rate * 100:.3g} %"


def decide(status: StatusRecord, fig: Figures, lines: Lines, now: float) -> StatusRecord | None:
    """The status the figures call for, when it is another one than `status` (pure)."""
    if status.status == "Paused" or fig.sends < lines.min_volume:
        return None
    br, cr = fig.bounce_rate, fig.complaint_rate
    over = f"over {fig.sends:,} sends"
    crossed: list[str] = []
    new: ReputationStatus
    if br >= lines.bounce_pause or cr >= lines.complaint_pause:
        new = "Paused"
        if br >= lines.bounce_pause:
            crossed.append(f"bounce rate {percent(br)} {over} is at or above the pause "
                           f"line {percent(lines.bounce_pause)}")
        if cr >= lines.complaint_pause:
            crossed.append(f"complaint rate {percent(cr)} {over} is at or above the pause "
                           f"line {percent(lines.complaint_pause)}")
    elif br >= lines.bounce_review or cr >= lines.complaint_review:
        new = "UnderReview"
        if br >= lines.bounce_review:
            crossed.append(f"bounce rate {percent(br)} {over} is at or above the review "
                           f"line {percent(lines.bounce_review)}")
        if cr >= lines.complaint_review:
            crossed.append(f"complaint rate {percent(cr)} {over} is at or above the review "
                           f"line {percent(lines.complaint_review)}")
    else:
        new = "Healthy"
        crossed.append(f"bounce rate {percent(br)} and complaint rate {percent(cr)} {over} "
                       f"are below the review lines {percent(lines.bounce_review)} and "
                       f"{percent(lines.complaint_review)}")
    if new == status.status:
        return None
    return StatusRecord(status=new, reason="; ".join(crossed), automatic=True, changed_at=now,
                        changed_by=AUTOMATIC_BY, last_fresh_start=status.last_fresh_start,
                        bounce_rate=br, complaint_rate=cr, volume=fig.sends)


class ReputationBook:
    """Hourly counts of every scope in one process, and the status decisions."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        # scope -> [hour, sends, bounces, complaints] buckets, oldest first
        self._scopes: dict[str, deque[list[int]]] = {}

    def record(self, scope: str, now: float, *, sends: int = 0, bounces: int = 0,
               complaints: int = 0) -> tuple[str, int, int, int, int]:
        """Count what happened at `now`; return it as (scope, hour, sends, bounces,
        complaints), the entry repstore.record_op() writes. Never simulator mail."""
        hour = math.floor(now / HOUR)
        self.add_at(scope, hour, sends, bounces, complaints)
        self._trim(scope, now)
        return (scope, hour, sends, bounces, complaints)

    def add_at(self, scope: str, hour: int, sends: int, bounces: int,
               complaints: int) -> None:
        b = self._scopes.setdefault(scope, deque())
        if b and b[-1][0] == hour:
            bucket = b[-1]
        elif not b or b[-1][0] < hour:
            bucket = [hour, 0, 0, 0]
            b.append(bucket)
        else:  # an older hour (a load, a clock step back): into its place
            i = len(b)
            while i > 0 and b[i - 1][0] > hour:
                i -= 1
            if i > 0 and b[i - 1][0] == hour:
                bucket = b[i - 1]
            else:
                bucket = [hour, 0, 0, 0]
                b.insert(i, bucket)
        bucket[1] += sends
        bucket[2] += bounces
        bucket[3] += complaints

    def _trim(self, scope: str, now: float) -> None:
        """Drop the hours past max_window (bounded memory)."""
        b = self._scopes.get(scope)
        oldest = math.floor((now - self.lines.max_window) / HOUR)
        while b and b[0][0] < oldest:
            b.popleft()

    def figures(self, scope: str, now: float, fresh_start: float = 0.0) -> Figures:
        """The counts over the scope's span at `now` (module docstring), never before
        `fresh_start`: an hour counts when it ends after fresh_start (the operator's resume
        also cleared the counts, see reset())."""
        lines = self.lines
        b = self._scopes.get(scope)
        window_start = now - lines.window
        floor_start = max(now - lines.max_window, fresh_start)
        sends = bounces = complaints = 0
        since = max(window_start, fresh_start)
        for hour, s, bo, c in reversed(b or ()):
            start, end = hour * HOUR, (hour + 1) * HOUR
            if end <= floor_start:
                break
            if end <= window_start and sends >= lines.min_volume:
                break
            if start > now:
                continue  # counted at a later time than `now` (clock stepped back)
            sends, bounces, complaints = sends + s, bounces + bo, complaints + c
            since = min(since, max(start, floor_start))
        return Figures(sends, bounces, complaints, since)

    def evaluate(self, scope: str, status: StatusRecord, now: float) -> StatusRecord | None:
        """The scope's new StatusRecord when its figures change its status, else None."""
        self._trim(scope, now)
        fig = self.figures(scope, now, status.last_fresh_start)
        return decide(status, fig, self.lines, now)

    def note(self, scope: str, status: StatusRecord, now: float, *, sends: int = 0,
             bounces: int = 0, complaints: int = 0) -> StatusRecord | None:
        """record() then evaluate()."""
        self.record(scope, now, sends=sends, bounces=bounces, complaints=complaints)
        return self.evaluate(scope, status, now)

    def reset(self, scope: str) -> None:
        """Forget a scope's counts (the operator's resume; repstore.reset_op() on disk)."""
        self._scopes.pop(scope, None)

    def resume(self, scope: str, status: StatusRecord, by: str, now: float) -> StatusRecord:
        """The operator's resume: Healthy, a fresh start at `now`, the counts cleared."""
        self.reset(scope)
        return StatusRecord(status="Healthy", reason=f"resumed by {by}", automatic=False,
                            changed_at=now, changed_by=by, last_fresh_start=now,
                            bounce_rate=status.bounce_rate,
                            complaint_rate=status.complaint_rate, volume=status.volume)

    def pause(self, scope: str, status: StatusRecord, by: str, now: float,
              reason: str = "") -> StatusRecord:
        """The operator's pause, with the figures of the moment."""
        fig = self.figures(scope, now, status.last_fresh_start)
        return StatusRecord(status="Paused", reason=reason or f"paused by {by}",
                            automatic=False, changed_at=now, changed_by=by,
                            last_fresh_start=status.last_fresh_start,
                            bounce_rate=fig.bounce_rate, complaint_rate=fig.complaint_rate,
                            volume=fig.sends)

    def load(self, entries: Iterable[tuple[str, int, int, int, int]], now: float) -> None:
        """Add stored (scope, hour, sends, bounces, complaints) counts (at start)."""
        for scope, hour, s, b, c in entries:
            self.add_at(scope, hour, s, b, c)
        for scope in list(self._scopes):
            self._trim(scope, now)

    def replace(self, scope: str, entries: Iterable[tuple[str, int, int, int, int]],
                now: float) -> None:
        """A scope's counts as stored (by all processes on the spool), in place of this
        process's own: before evaluating in multi-process mode."""
        self.reset(scope)
        self.load(((s, h, se, b, c) for s, h, se, b, c in entries if s == scope), now)

    def buckets(self, scope: str) -> int:
        return len(self._scopes.get(scope, ()))

    def scopes(self) -> list[str]:
        return list(self._scopes)
