"""Warm-up planner: how many IPs a target volume needs, and the ramp day by day.

`plan_for(daily_target, peak_hourly, plan, burst)` sizes a migration like the
10M/day example of the SES migration guide: enough IPs that, once warm, their
daily caps cover the daily target and their hourly budgets (cap * burst / 24)
cover the peak hour. Caps hold per provider, so an IP sending to several
providers can carry more; the planner counts one provider (the conservative
case: most of a list is usually at one or two providers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from relay.warmup.pacing import hourly_budget
from relay.warmup.plans import Plan


@dataclass(frozen=True)
class DayRow:
    day: int
    cap_per_ip: int
    total: int


@dataclass(frozen=True)
class Sizing:
    plan: str
    daily_target: int
    peak_hourly: int
    ips: int
    ips_for_daily: int
    ips_for_peak: int
    full_volume_day: int      # first day the IPs together reach daily_target
    schedule: tuple[DayRow, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "plan": self.plan, "daily_target": self.daily_target,
            "peak_hourly": self.peak_hourly, "ips": self.ips,
            "ips_for_daily": self.ips_for_daily, "ips_for_peak": self.ips_for_peak,
            "full_volume_day": self.full_volume_day,
            "schedule": [{"day": r.day, "cap_per_ip": r.cap_per_ip, "total": r.total}
                         for r in self.schedule],
        }


def plan_for(daily_target: int, peak_hourly: int, plan: Plan, *, burst: float = 2.0,
             paced: bool = True) -> Sizing:
    if daily_target < 1 or peak_hourly < 0:
        raise ValueError("daily target must be at least 1 and peak hourly not negative")
    full = plan.full_cap
    for_daily = math.ceil(daily_target / full)
    per_hour = hourly_budget(full, burst) if paced else full
    for_peak = math.ceil(peak_hourly / per_hour) if peak_hourly else 0
    ips = max(for_daily, for_peak, 1)
    rows = tuple(DayRow(d, plan.cap(d), plan.cap(d) * ips) for d in range(1, len(plan.caps) + 1))
    full_day = next((r.day for r in rows if r.total >= daily_target), len(plan.caps))
    return Sizing(plan.name, daily_target, peak_hourly, ips, for_daily, for_peak, full_day,
                  rows)
