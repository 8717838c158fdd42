"""PURE token bucket: SES's MaxSendRate (recipients per second).

The bucket fills at `rate` tokens a second up to `capacity = max(1, rate)`: one second
deep, so a sender may send a second's worth of recipients at once after a pause but never
more than `rate` a second on average over any longer span (SES lets a burst of about one
second through, not more). At least one token, so a fractional rate such as 0.5/s can
send at all: one recipient, then one every two seconds. It starts full.

Time comes in as `now` (seconds; any clock that does not jump, the same one for every
call); a step back in time adds nothing and takes nothing.
"""

from __future__ import annotations

# Epoch seconds near 1.8e9 are only exact to about 2.4e-7 s, so a refill that should make
# exactly one token can make 0.9999997 of one: a token is whole within this much.
_WHOLE = 1.0 - 1e-6


class TokenBucket:
    __slots__ = ("_last", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, now: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate {rate!r}: expected recipients per second above 0")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def ready(self, now: float) -> bool:
        """Whether take(now) would succeed (takes nothing)."""
        self._refill(now)
        return self._tokens >= _WHOLE

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._tokens >= _WHOLE:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def take_many(self, now: float, n: int) -> bool:
        """Take `n` tokens at once if there is at least one: the bucket may go into debt,
        so the next recipients wait until the rate has paid for all `n` (a whole
        message's recipients known only at DATA; the average rate still holds)."""
        self._refill(now)
        if self._tokens >= _WHOLE:
            self._tokens -= n
            return True
        return False

    def give_back(self) -> None:
        """Return one token taken by take() (the other limit refused the recipient)."""
        self._tokens = min(self.capacity, self._tokens + 1.0)

    def set_rate(self, rate: float) -> None:
        """A new rate (the operator changed it): keep the tokens, within the new depth."""
        if rate <= 0:
            raise ValueError(f"rate {rate!r}: expected recipients per second above 0")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = min(self._tokens, self.capacity)

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens
