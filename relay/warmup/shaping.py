"""Per-site throttles: messages per second (token bucket) and per clock hour.

Pure: the caller passes `now`. Keyed by site (relay.warmup.providers.Site.key),
so every domain hosted at one provider shares one throttle. Concurrency and
messages per connection are enforced by the shell (relay/delivery/shaper.py).

With [cluster], the same limits are counted in Redis for all nodes together
(relay/cluster/shaping.py); the records both sides exchange are here: a `SiteGrant`
(what one transaction may send to a site now) and a `ConnectionLease` (one open
connection's place under a site's max_connections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from relay.warmup.providers import SiteLimits

HOUR = 3600.0


@dataclass(frozen=True)
class SiteGrant:
    """How many of a transaction's recipients may go to `site` now (`granted`), and when
    the next one may if not all (`next_at`, epoch seconds). `shared`: counted in Redis
    (a grant larger than what was sent is given back there); `hour`: the clock hour it
    was counted in."""

    site: str
    granted: int
    next_at: float
    hour: int = 0
    shared: bool = False
    limited: bool = False   # the site's rates held some of the asked back (until next_at)


@dataclass(eq=False)
class ConnectionLease:
    """One open connection's place under `site`'s max_connections across the cluster.
    `shared`: held in Redis (False: taken from this node's local share while Redis was
    unreachable, registered there at the next renewal); `lost`: Redis no longer holds it
    for this node (expired and taken by another): its connection closes after the
    transaction under way."""

    site: str
    lease_id: str
    max_connections: int
    shared: bool = True
    lost: bool = False


@dataclass
class _SiteState:
    tokens: float
    at: float
    hour: int = -1
    hour_sent: int = 0


class SiteThrottle:
    def __init__(self) -> None:
        self._sites: dict[str, _SiteState] = {}

    def _state(self, key: str, limits: SiteLimits, now: float) -> _SiteState:
        st = self._sites.get(key)
        burst = max(1.0, limits.messages_per_second)
        if st is None:
            st = self._sites[key] = _SiteState(tokens=burst, at=now)
        elif limits.messages_per_second > 0:
            st.tokens = min(burst, st.tokens + (now - st.at) * limits.messages_per_second)
            st.at = now
        hour = math.floor(now / HOUR)
        if st.hour != hour:
            st.hour, st.hour_sent = hour, 0
        return st

    def allowed(self, key: str, limits: SiteLimits, now: float, want: int) -> int:
        st = self._state(key, limits, now)
        n = want
        if limits.messages_per_second > 0:
            n = min(n, int(st.tokens))
        if limits.messages_per_hour > 0:
            n = min(n, limits.messages_per_hour - st.hour_sent)
        return max(0, n)

    def take(self, key: str, limits: SiteLimits, now: float, n: int) -> None:
        st = self._state(key, limits, now)
        if limits.messages_per_second > 0:
            st.tokens -= n
        st.hour_sent += n

    def next_at(self, key: str, limits: SiteLimits, now: float) -> float:
        st = self._state(key, limits, now)
        at = now
        if limits.messages_per_hour > 0 and st.hour_sent >= limits.messages_per_hour:
            at = (st.hour + 1) * HOUR
        if limits.messages_per_second > 0 and st.tokens < 1:
            at = max(at, now + (1 - st.tokens) / limits.messages_per_second)
        return at
