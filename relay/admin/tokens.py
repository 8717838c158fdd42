"""Admin API bearer tokens: `<state_dir>/admin_tokens.json` (0600), stored hashed.

A token is 32 random bytes (url-safe base64, prefixed "rly_"), shown once by
`relay admin token add NAME`. Only its SHA-256 is stored: the token has full
entropy, so a slow hash would add nothing (unlike SMTP passwords, which users
choose; relay.users uses scrypt). The running server re-reads the file when it
changes, so a token added or removed by the CLI takes effect at once.
Must not: log or return a token or its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path

import msgspec

from relay.clock import Clock, SystemClock
from relay.jsonfile import JsonFile

TOKEN_PREFIX = "rly_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TokenError(ValueError):
    """A token operation the user can fix (duplicate or unknown name, bad name)."""


class TokenRecord(msgspec.Struct, frozen=True):
    name: str
    sha256: str
    created_at: float = 0.0


class _File(msgspec.Struct):
    version: int = 1
    tokens: list[TokenRecord] = []


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise TokenError(f"token name {name!r}: expected 1-64 letters, digits, '.', '_' or '-'")
    return name


class TokenStore:
    FILE = "admin_tokens.json"

    def __init__(self, path: str | Path, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.clock: Clock = clock or SystemClock()
        # Looked at on every request (no `recheck`): a removed token stops at once.
        self._file = JsonFile(self.path, _File, what="tokens", error=TokenError,
                              clock=self.clock)
        self._maybe_reload()

    @classmethod
    def in_state_dir(cls, state_dir: Path, clock: Clock | None = None) -> TokenStore:
        return cls(state_dir / cls.FILE, clock)

    def _read(self) -> list[TokenRecord]:
        return self._file.read().tokens

    def _maybe_reload(self) -> list[TokenRecord]:
        """The records as in the file now (see JsonFile.current)."""
        return self._file.current().tokens

    def _write(self, records: list[TokenRecord]) -> None:
        self._file.write(_File(tokens=records))

    def list(self) -> list[TokenRecord]:
        return list(self._maybe_reload())

    def add(self, name: str) -> str:
        """Create a token; return it (the only time it exists in clear)."""
        check_token_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._file.locked():
            records = self._read()
            if any(r.name == name for r in records):
                raise TokenError(f"a token named {name!r} already exists")
            records.append(TokenRecord(name, _digest(token), self.clock.now()))
            self._write(records)
        self._maybe_reload()
        return token

    def remove(self, name: str) -> None:
        with self._file.locked():
            records = self._read()
            kept = [r for r in records if r.name != name]
            if len(kept) == len(records):
                raise TokenError(f"no token named {name!r}")
            self._write(kept)
        self._maybe_reload()

    def verify(self, token: str) -> str | None:
        """The name of the token, or None. Compares every digest in constant time."""
        try:
            records = self._maybe_reload()
        except TokenError:
            return None  # a broken file denies everyone rather than crashing the server
        digest = _digest(token)
        found: str | None = None
        for r in records:
            if hmac.compare_digest(r.sha256, digest):
                found = r.name
        return found
