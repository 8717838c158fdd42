"""PURE brute-force defence for SMTP AUTH: per-IP lockout, per-user slow-down.

Every failure counts against the client IP and against the user name tried (lower-cased,
whether or not the user exists, so nothing reveals which names exist). Each failure is
answered after a growing delay (base, 2×base, 4×base, … capped), grown by whichever of
the two counts is higher. Only the CLIENT ADDRESS is ever locked: after `max_failures`
failures from one IP within the `lockout` window, that IP is locked for `lockout`
seconds and AUTH answers 454 4.7.0 without checking credentials (RFC 4954 §6;
against brute force).
A user name is never locked: failures for it from other addresses only slow down the
failing replies, so a stranger who knows a user name cannot lock the real user out of
its own address (a credential keeps working while others fail for it).
No I/O, no asyncio, no clock reads: callers pass `now` (Clock.monotonic()).
Memory is bounded: stale entries are pruned and at most `max_entries` keys are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.backoff import doubling


@dataclass
class _Entry:
    failure_count: int = 0
    last_failure_at: float = 0.0
    locked_until: float = 0.0


class AuthPolicy:
    def __init__(self, base_delay: float, max_failures: int, lockout: float,
                 max_delay: float = 30.0, max_entries: int = 100_000) -> None:
        self.base_delay = max(0.0, base_delay)
        self.max_failures = max_failures
        self.lockout = max(0.0, lockout)
        self.max_delay = max_delay
        self.max_entries = max_entries
        self._entries: dict[str, _Entry] = {}

    @staticmethod
    def _ip_key(ip: str) -> str:
        return f"ip:{ip}"

    @staticmethod
    def _keys(ip: str, user: str | None) -> list[str]:
        keys = [f"ip:{ip}"]
        if user is not None:
            keys.append(f"user:{user.lower()}")
        return keys

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stale_lock = entry.locked_until and entry.locked_until <= now
        stale_count = not entry.locked_until and now - entry.last_failure_at >= self.lockout
        if stale_lock or stale_count:
            del self._entries[key]
            return None
        return entry

    def is_locked(self, ip: str, now: float) -> bool:
        """True while the client address is locked out (user names are never locked)."""
        entry = self._live(self._ip_key(ip), now)
        return entry is not None and entry.locked_until > now

    def record_failure(self, ip: str, user: str | None, now: float) -> float:
        """Count one failure; return the delay (seconds) to wait before answering 535."""
        worst = 0
        for key in self._keys(ip, user):
            entry = self._live(key, now)
            if entry is None:
                self._prune(now)
                entry = self._entries[key] = _Entry()
            entry.failure_count += 1
            entry.last_failure_at = now
            if key.startswith("ip:") and 0 < self.max_failures <= entry.failure_count:
                entry.locked_until = now + self.lockout
            worst = max(worst, entry.failure_count)
        return doubling(worst, self.base_delay, self.max_delay) if worst else 0.0

    def record_success(self, ip: str, user: str | None, now: float) -> None:
        """A correct password clears the user's and the IP's failure count (not a lock)."""
        for key in self._keys(ip, user):
            entry = self._live(key, now)
            if entry is not None and entry.locked_until <= now:
                del self._entries[key]

    def _prune(self, now: float) -> None:
        if len(self._entries) < self.max_entries:
            return
        for key in list(self._entries):
            self._live(key, now)
        while len(self._entries) >= self.max_entries:
            # Drop the oldest key (dicts keep insertion order).
            del self._entries[next(iter(self._entries))]

    def __len__(self) -> int:
        return len(self._entries)
