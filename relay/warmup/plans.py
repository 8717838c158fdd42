"""Warm-up plans: day-indexed daily caps per IP (and per mailbox provider).

Owns the built-in plans and the lookup of a plan by name. A plan is a table:
`caps[d - 1]` is the cap on plan day d; past the last day the last cap holds
(the IP is warm). Must not know about calendars or counters (relay.warmup.counters).

Built-ins:
- `ses-standard`: 45 days, a geometric ramp from 200 to 50,000 per day, like the
  standard SES dedicated-IP warm-up.
- `double-every-other-day`: 5,000 on days 1-2, doubling every second day:
  10,000 on day 3 ... 2,560,000 on day 19.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    caps: tuple[int, ...]

    def cap(self, day: int) -> int:
        """The cap on plan day `day` (1-based); the last cap past the end."""
        return self.caps[min(max(day, 1), len(self.caps)) - 1]

    @property
    def full_day(self) -> int:
        """The first day at full volume."""
        full = self.caps[-1]
        return next(i + 1 for i, c in enumerate(self.caps) if c >= full)

    @property
    def full_cap(self) -> int:
        return self.caps[-1]

    def next_step(self, day: int) -> tuple[int, int] | None:
        """(day, cap) of the next increase after `day`, or None when warm."""
        now = self.cap(day)
        for d in range(max(day, 1) + 1, len(self.caps) + 1):
            if self.caps[d - 1] > now:
                return d, self.caps[d - 1]
        return None


def _round2(value: float) -> int:
    """Round to two significant figures (caps an operator can read)."""
    digits = len(str(int(value)))
    return int(round(value, -(digits - 2))) if digits > 2 else round(value)


def _ses_standard() -> tuple[int, ...]:
    days, first, full = 45, 200, 50_000
    ratio = (full / first) ** (1 / (days - 1))
    caps = [_round2(first * ratio**d) for d in range(days)]
    caps[-1] = full
    for i in range(1, days):  # never decrease after rounding
        caps[i] = max(caps[i], caps[i - 1])
    return tuple(caps)


SES_STANDARD = Plan("ses-standard", _ses_standard())
DOUBLE_EVERY_OTHER_DAY = Plan(
    "double-every-other-day", tuple(5_000 * 2 ** ((d - 1) // 2) for d in range(1, 20)))

BUILTIN_PLANS: dict[str, Plan] = {p.name: p for p in (SES_STANDARD, DOUBLE_EVERY_OTHER_DAY)}


def resolve(name: str, custom: Mapping[str, Sequence[int]] | None = None) -> Plan | None:
    """The plan called `name` (custom tables first); None for "" (already warm)."""
    if not name:
        return None
    if custom and name in custom:
        return Plan(name, tuple(custom[name]))
    try:
        return BUILTIN_PLANS[name]
    except KeyError:
        raise KeyError(f"unknown warm-up plan {name!r}") from None
