"""Sections of the account model: [tenants] (default sending quotas and the sandbox's
limits) and [reputation] (the bounce and complaint lines of the status machine).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from relay.config.types import Duration, PositiveInt, RateLine, duration_text


class Tenants(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Sending quotas (SES's Max24HourSend and MaxSendRate) of a tenant that sets none of
    its own, and the sandbox's limits (relay/tenants/quota.py)."""

    # Recipients per rolling 24 hours, and per second (a token bucket one second deep).
    # 0: unlimited. A tenant's own quota, then a credential's override, replace these.
    max_24h_send: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_send_rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # A tenant in the sandbox sends at most this many (its own lower limits hold).
    sandbox_max_24h_send: PositiveInt = 200
    sandbox_max_send_rate: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # Queued mail of a paused tenant or configuration set is held, not bounced, and looked
    # at again this often until the resume (or its max delivery time).
    paused_recheck: Duration = Duration(60)


class Reputation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Reputation status per tenant and configuration set (relay/tenants/reputation.py):
    UnderReview at the review lines, Paused at the pause lines, over a representative
    volume (the last `window`, widened up to `max_window` to hold `min_volume` sends)."""

    bounce_review: RateLine = 0.05
    bounce_pause: RateLine = 0.10
    complaint_review: RateLine = 0.001
    complaint_pause: RateLine = 0.005
    min_volume: PositiveInt = 1000
    window: Duration = Duration(7 * 86400)
    max_window: Duration = Duration(30 * 86400)

    def __post_init__(self) -> None:
        problems = []
        for kind in ("bounce", "complaint"):
            review = getattr(self, f"{kind}_review")
            pause = getattr(self, f"{kind}_pause")
            if review >= pause:
                problems.append(f"{kind}_review = {review}: expected below {kind}_pause "
                                f"({pause}), the review line comes before the pause line")
        if self.window < 3600:
            problems.append(f"window = {duration_text(self.window)}: expected at least "
                            "1 hour, like \"7d\" (counts are kept per hour)")
        elif self.max_window < self.window:
            problems.append(f"max_window = {duration_text(self.max_window)}: expected at "
                            f"least window ({duration_text(self.window)})")
        if problems:
            raise ValueError("; ".join(problems))
