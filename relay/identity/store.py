"""Identities added with `relay identity add`: `<state_dir>/identities.json` (0600).

Owns the file format and every read/write of it. Verification state is written by
`relay identity verify` (and the server's periodic check); the server reloads the file
when it changes, like users.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from relay.clock import Clock, SystemClock
from relay.identity.model import IdentityError, check_identity_name
from relay.jsonfile import JsonFile


class IdentityRecord(msgspec.Struct, frozen=True):
    name: str
    created_at: float = 0.0
    verified: bool = False
    verified_at: float = 0.0
    checked_at: float = 0.0
    # The tenant that owns it ("" = shared: every tenant may send as it).
    tenant: str = ""
    # Custom MAIL FROM set through the SES API (PutEmailIdentityMailFromAttributes):
    # "" = none, the [[identity]] config's applies. Wins over the config's when set.
    mail_from: str = ""
    on_mx_failure: Literal["use_default", "reject"] = "use_default"


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
        self._file = JsonFile(self.path, _File, what="identities", error=IdentityError,
                              clock=self.clock, recheck=recheck)
        # (the file content they come from, its records, name → verified): one tuple, so
        # a reader never pairs the records of one version with the map of another.
        self._view: tuple[_File | None, dict[str, IdentityRecord], dict[str, bool]] = (
            None, {}, {})
        self._maybe_reload(force=True)

    @property
    def recheck(self) -> float:
        return self._file.recheck

    @recheck.setter
    def recheck(self, seconds: float) -> None:
        self._file.recheck = seconds

    @classmethod
    def in_state_dir(cls, state_dir: Path, clock: Clock | None = None,
                     recheck: float = 0.0) -> IdentityStore:
        return cls(state_dir / "identities.json", clock, recheck)

    def _read(self) -> dict[str, IdentityRecord]:
        return self._file.read().identities

    def _maybe_reload(self, force: bool = False) -> tuple[dict[str, IdentityRecord],
                                                          dict[str, bool]]:
        """(records, name → verified) as in the file now (see JsonFile.current)."""
        content = self._file.current(force=force)
        view = self._view
        if view[0] is not content:
            records = content.identities
            view = self._view = (content, records,
                                 {n: r.verified for n, r in records.items()})
        return view[1], view[2]

    def refresh(self) -> None:
        """Look at the file now (SIGHUP)."""
        self._maybe_reload(force=True)

    def all(self) -> dict[str, IdentityRecord]:
        return dict(self._maybe_reload()[0])

    def get(self, name: str) -> IdentityRecord | None:
        return self._maybe_reload()[0].get(name)

    def verified_map(self) -> dict[str, bool]:
        """Name → verified; shared, not to be modified by the caller."""
        return self._maybe_reload()[1]

    def _write(self, records: dict[str, IdentityRecord]) -> None:
        self._file.write(_File(identities=dict(sorted(records.items()))))

    def add(self, name: str, tenant: str = "") -> IdentityRecord:
        """Add an identity; `tenant`: its owner ("" = shared), a name the caller
        checked exists."""
        n = check_identity_name(name)
        with self._file.locked():
            records = self._read()
            if n in records:
                raise IdentityError(f"identity {n!r} already exists")
            records[n] = rec = IdentityRecord(n, created_at=self.clock.now(), tenant=tenant)
            self._write(records)
        self._maybe_reload(force=True)
        return rec

    def set_tenant(self, name: str, tenant: str) -> IdentityRecord:
        """Give identity `name` to `tenant` ("" = shared)."""
        n = check_identity_name(name)
        with self._file.locked():
            records = self._read()
            old = records.get(n)
            if old is None:
                raise IdentityError(f"no identity {n!r}")
            records[n] = rec = msgspec.structs.replace(old, tenant=tenant)
            self._write(records)
        self._maybe_reload(force=True)
        return rec

    def set_mail_from(self, name: str, mail_from: str,
                      on_mx_failure: Literal["use_default", "reject"] = "use_default"
                      ) -> IdentityRecord:
        """Give identity `name` a custom MAIL FROM domain ("" clears it); the caller
        checked it is a subdomain of the identity's domain."""
        n = check_identity_name(name)
        with self._file.locked():
            records = self._read()
            old = records.get(n)
            if old is None:
                raise IdentityError(f"no identity {n!r}")
            records[n] = rec = msgspec.structs.replace(
                old, mail_from=mail_from.lower(),
                on_mx_failure=on_mx_failure if mail_from else "use_default")
            self._write(records)
        self._maybe_reload(force=True)
        return rec

    def owner(self, name: str) -> str:
        """The tenant owning identity `name` ("" = shared, or not stored)."""
        rec = self._maybe_reload()[0].get(name)
        return rec.tenant if rec is not None else ""

    def remove(self, name: str) -> None:
        n = check_identity_name(name)
        with self._file.locked():
            records = self._read()
            if records.pop(n, None) is None:
                raise IdentityError(f"no identity {n!r}")
            self._write(records)
        self._maybe_reload(force=True)

    def set_verified(self, name: str, verified: bool) -> IdentityRecord:
        """Record a verification result (adds the identity if only declared in config)."""
        n = check_identity_name(name)
        now = self.clock.now()
        with self._file.locked():
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
