"""Identities added with `relay identity add`: `<state_dir>/identities.json` (0600).

Owns the file format and every read/write of it. Verification state is written by
`relay identity verify` (and the server's periodic check); the server reloads the file
when it changes, like users.json.
"""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec

from relay.clock import Clock, SystemClock
from relay.identity.files import locked, stamp, write_atomic
from relay.identity.model import IdentityError, check_identity_name


class IdentityRecord(msgspec.Struct, frozen=True):
    name: str
    created_at: float = 0.0
    verified: bool = False
    verified_at: float = 0.0
    checked_at: float = 0.0


class _File(msgspec.Struct):
    version: int = 1
    identities: dict[str, IdentityRecord] = {}


class IdentityStore:
    """`recheck` (seconds, on the clock's monotonic time): how long a look at the file
    stays fresh. The server asks on every message; a stat() there releases the GIL and
    can wait behind a signing or commit thread for the whole switch interval, so it
    looks at most every `recheck` (an edit by `relay identity` in another process shows
    within that; this process's own edits show at once). 0: look every time (CLI)."""

    def __init__(self, path: str | Path, clock: Clock | None = None,
                 recheck: float = 0.0) -> None:
        self.path = Path(path)
        self.clock: Clock = clock or SystemClock()
        self.recheck = recheck
        self._lock = threading.Lock()
        self._records: dict[str, IdentityRecord] = {}
        self._verified: dict[str, bool] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at: float | None = None
        self._maybe_reload(force=True)

    @classmethod
    def in_state_dir(cls, state_dir: Path, clock: Clock | None = None,
                     recheck: float = 0.0) -> IdentityStore:
        return cls(state_dir / "identities.json", clock, recheck)

    def _read(self) -> dict[str, IdentityRecord]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return msgspec.json.decode(data, type=_File).identities
        except msgspec.DecodeError as e:
            raise IdentityError(f"{self.path} is not a valid identities file: {e}") from None

    def _maybe_reload(self, force: bool = False) -> None:
        now = self.clock.monotonic()
        if (not force and self._checked_at is not None
                and 0 <= now - self._checked_at < self.recheck):
            return
        with self._lock:
            self._checked_at = now
            st = stamp(self.path)
            if st == self._stamp:
                return
            self._records = self._read()
            self._verified = {n: r.verified for n, r in self._records.items()}
            self._stamp = st

    def refresh(self) -> None:
        """Look at the file now (SIGHUP)."""
        self._maybe_reload(force=True)

    def all(self) -> dict[str, IdentityRecord]:
        self._maybe_reload()
        return dict(self._records)

    def get(self, name: str) -> IdentityRecord | None:
        self._maybe_reload()
        return self._records.get(name)

    def verified_map(self) -> dict[str, bool]:
        """Name → verified; shared, not to be modified by the caller."""
        self._maybe_reload()
        return self._verified

    def _write(self, records: dict[str, IdentityRecord]) -> None:
        data = msgspec.json.format(
            msgspec.json.encode(_File(identities=dict(sorted(records.items())))), indent=2)
        write_atomic(self.path, data + b"\n")

    def add(self, name: str) -> IdentityRecord:
        n = check_identity_name(name)
        with locked(self.path):
            records = self._read()
            if n in records:
                raise IdentityError(f"identity {n!r} already exists")
            records[n] = rec = IdentityRecord(n, created_at=self.clock.now())
            self._write(records)
        self._maybe_reload(force=True)
        return rec

    def remove(self, name: str) -> None:
        n = check_identity_name(name)
        with locked(self.path):
            records = self._read()
            if records.pop(n, None) is None:
                raise IdentityError(f"no identity {n!r}")
            self._write(records)
        self._maybe_reload(force=True)

    def set_verified(self, name: str, verified: bool) -> IdentityRecord:
        """Record a verification result (adds the identity if only declared in config)."""
        n = check_identity_name(name)
        now = self.clock.now()
        with locked(self.path):
            records = self._read()
            old = records.get(n) or IdentityRecord(n, created_at=now)
            rec = msgspec.structs.replace(
                old, verified=verified, checked_at=now,
                verified_at=(old.verified_at if old.verified and verified
                             else now if verified else 0.0))
            records[n] = rec
            self._write(records)
        self._maybe_reload(force=True)
        return rec
