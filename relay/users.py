"""SMTP credentials: `<state_dir>/users.json`, scrypt hashes only.

Owns the file format and every read/write of it. Passwords are never stored, logged or
returned: each record keeps scrypt's parameters, a random salt and the derived key.
Writes are atomic (temp file in the same directory, fsync, rename, directory fsync) with
mode 0600, under an advisory lock so two CLI invocations cannot lose an edit.
`verify()` does the same scrypt work for an unknown user as for a known one and compares
in constant time; it reloads the file when it changed (the CLI edits it while the
server runs). Must not: import asyncio or sockets (callers run verify() in a thread).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from relay.clock import Clock, SystemClock
from relay.jsonfile import JsonFile

log = logging.getLogger(__name__)

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
KEY_LEN = 32
SALT_LEN = 16
_MAXMEM = 128 * 1024 * 1024
MAX_PASSWORD_BYTES = 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9._@+=-]{1,255}$")
# The credential (and admin token) server.dev_credential creates in an empty state dir.
DEV_USER = "dev"


class UserError(Exception):
    """A user-fixable problem (unknown user, duplicate, bad name); one line of text."""


class UserRecord(msgspec.Struct, frozen=True):
    scheme: str
    n: int
    r: int
    p: int
    salt: str  # base64
    hash: str  # base64
    created_at: float = 0.0
    updated_at: float = 0.0
    # Sending authorization: identities / address patterns this credential may send as
    # ("example.com", "ops@other.org", "*@news.example.com"); empty = any verified identity.
    allow: list[str] = []
    # The [[configuration_set]] of this credential's mail when the message names none
    # (X-SES-CONFIGURATION-SET); "" = no default.
    configuration_set: str = ""
    # The [[pool]] this credential's mail leaves from when its configuration set names
    # none; "" = delivery.pool.
    pool: str = ""
    # The tenant this credential belongs to: its mail's tenant when the message names
    # none (X-SES-TENANT). Files from before tenants read as "default".
    tenant: str = "default"
    # Further tenants a platform credential may name per message with X-SES-TENANT.
    tenants: list[str] = []
    # Per-credential quota override (None: the tenant's): recipients in a rolling 24 h
    # window and recipients per second.
    max_24h_send: int | None = None
    max_send_rate: float | None = None

    @property
    def allowed_tenants(self) -> list[str]:
        """Every tenant this credential may send for, its own first."""
        return list(dict.fromkeys([self.tenant or "default", *self.tenants]))


class _UsersFile(msgspec.Struct):
    version: int = 1
    users: dict[str, UserRecord] = {}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=_MAXMEM)


def hash_password(password: str | bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P, now: float = 0.0) -> UserRecord:
    pw = password.encode("utf-8") if isinstance(password, str) else password
    salt = secrets.token_bytes(SALT_LEN)
    key = _derive(pw, salt, n, r, p, KEY_LEN)
    return UserRecord("scrypt", n, r, p, _b64(salt), _b64(key), now, now)


def _record_problem(record: UserRecord) -> str:
    """What makes a stored record unusable by verify(), or ""."""
    if record.scheme != "scrypt":
        return f"unknown password scheme {record.scheme!r} (expected 'scrypt')"
    if record.n < 2 or record.n & (record.n - 1) or record.r < 1 or record.p < 1:
        return (f"scrypt parameters n={record.n} r={record.r} p={record.p}: expected n a "
                "power of 2 above 1, r and p at least 1")
    if 128 * record.n * record.r > _MAXMEM:
        return f"scrypt parameters n={record.n} r={record.r} need more than 128 MiB"
    for field in ("salt", "hash"):
        try:
            raw = base64.b64decode(getattr(record, field), validate=True)
        except ValueError:
            return f"{field} is not base64"
        if not raw:
            return f"{field} is empty"
    return ""


def _users_file(path: Path, clock: Clock | None = None,
                recheck: float = 0.0) -> JsonFile[_UsersFile]:
    return JsonFile(path, _UsersFile, what="users", error=UserError, clock=clock,
                    recheck=recheck)


def _read_file(path: Path) -> dict[str, UserRecord]:
    return _users_file(path).read().users


def check_file(path: Path) -> int:
    """`users.json` as `relay serve` needs it at start: valid JSON of the right shape,
    every record one verify() can use. Returns the number of users; raises UserError
    naming the file (and the user) otherwise. A running server keeps its last good copy
    when a later edit is bad; at start there is none, and running on an empty set would
    answer every login 535."""
    try:
        users = _read_file(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    for name, record in users.items():
        problem = _record_problem(record)
        if problem:
            raise UserError(f"{path}: user {name!r}: {problem}")
    return len(users)


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise UserError(f"invalid user name {name!r}: use 1-255 characters from "
                        "letters, digits and . _ @ + = -")


def check_password(password: str) -> None:
    if not password:
        raise UserError("the password is empty")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise UserError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")


# A password an operator sets (`relay user add|passwd`, POST /api/users) has at least this
# many characters. An SMTP credential is a single-factor secret that anyone who can reach
# a submission port can guess at (the AUTH lockout is per client address, so many
# addresses guess in parallel), and it is typed into a config once, not remembered:
# OWASP ASVS (V2.1.1) asks 12 for passwords a user sets; generated ones are 24.
# Existing credentials keep working whatever their length (only new ones are checked).
MIN_NEW_PASSWORD_LENGTH = 12


def check_new_password(password: str) -> None:
    """`check_password`, and the minimum length for a password being set now."""
    check_password(password)
    if len(password) < MIN_NEW_PASSWORD_LENGTH:
        raise UserError(f"the password is too short: {len(password)} characters, at least "
                        f"{MIN_NEW_PASSWORD_LENGTH} are required")


def generate_password() -> str:
    """A random password (24 URL-safe characters, 144 bits), as the dev credential is."""
    return secrets.token_urlsafe(18)


class UserStore:
    def __init__(self, path: str | Path, clock: Clock | None = None,
                 recheck: float = 0.0) -> None:
        self.path = Path(path)
        self._clock: Clock = clock or SystemClock()
        # `recheck`: how long (monotonic seconds) a look at the file stays fresh for get()
        # and the per-message defaults: a stat() per message released the GIL to a signing
        # or commit thread (3 % of the loop's samples). verify() (once per login), names()
        # and refresh() (SIGHUP) always look. 0: look every time (the CLI).
        self._file = _users_file(self.path, self._clock, recheck)
        self._lock = threading.Lock()
        # Work for unknown users: the same scrypt cost against a salt nobody has.
        self._dummy = hash_password(secrets.token_bytes(16))
        # Verified-credential cache (like Dovecot's auth_cache): name -> (the record that
        # verified, HMAC of the password under a per-process key). Only successes are
        # cached, so a wrong password always pays scrypt; a changed record (passwd,
        # reload) misses. Saves ~85 ms of scrypt per connection of a repeat client.
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[UserRecord, bytes]] = {}
        # (name, password HMAC) -> lock: clients that log in at the same moment with the
        # same credential (a pool of connections opening together) wait for the first
        # one's scrypt and then hit the cache instead of each paying ~85 ms of it.
        # Different passwords never wait on each other.
        self._flights: dict[tuple[str, bytes], threading.Lock] = {}
        self._maybe_reload()

    # --- reading ---------------------------------------------------------------------

    @property
    def recheck(self) -> float:
        return self._file.recheck

    @recheck.setter
    def recheck(self, seconds: float) -> None:
        self._file.recheck = seconds

    @property
    def _users(self) -> dict[str, UserRecord]:
        """The records as last read whole (a bad edit keeps the previous ones)."""
        return self._file.value.users

    def _read(self) -> dict[str, UserRecord]:
        return self._file.read().users

    def _maybe_reload(self, force: bool = True) -> dict[str, UserRecord]:
        """The records as in the file now, or the last good ones when it is not valid."""
        try:
            return self._file.current(force=force).users
        except UserError as e:
            log.error("keeping the previous users: %s", e)
            return self._file.value.users

    def read_all(self) -> dict[str, UserRecord]:
        """Every record as on disk now; raises UserError if the file is not valid."""
        return self._read()

    def names(self) -> list[str]:
        self._maybe_reload()
        return sorted(self._users)

    def get(self, name: str) -> UserRecord | None:
        return self._maybe_reload(force=False).get(name)

    def refresh(self) -> None:
        """Look at the file now (SIGHUP)."""
        self._maybe_reload()

    def verify(self, name: str, password: str | bytes) -> bool:
        """Constant-time check; an unknown user costs the same scrypt work as a known one."""
        self._maybe_reload()
        pw, tag = self._credential(password)
        if self._cached_now(name, tag):
            return True
        record = self._users.get(name)
        known = record is not None and record.scheme == "scrypt"
        with self._lock:
            if len(self._flights) > 1024:
                self._flights.clear()  # only single-flight is lost, never correctness
            flight = self._flights.setdefault((name, tag), threading.Lock())
        with flight:
            if known and self._cached(name, record, tag):
                return True
            return self._verify_slow(name, record, known, pw, tag)

    def verify_cached(self, name: str, password: str | bytes) -> bool:
        """True when this credential verified before against the record on disk now (the
        file is looked at): cheap enough for the event loop, so a repeat client's login
        skips the thread hop. False says only "not cached": call verify()."""
        self._maybe_reload()
        return self._cached_now(name, self._credential(password)[1])

    def _credential(self, password: str | bytes) -> tuple[bytes, bytes]:
        """(the password's bytes, its HMAC under the per-process cache key)."""
        pw = password.encode("utf-8", "surrogateescape") if isinstance(password, str) \
            else password
        return pw, hmac.new(self._cache_key, pw, hashlib.sha256).digest()

    def _cached_now(self, name: str, tag: bytes) -> bool:
        record = self._users.get(name)
        return record is not None and record.scheme == "scrypt" \
            and self._cached(name, record, tag)

    def _cached(self, name: str, record: UserRecord | None, tag: bytes) -> bool:
        hit = self._verified.get(name)
        return hit is not None and hit[0] is record and hmac.compare_digest(hit[1], tag)

    def _verify_slow(self, name: str, record: UserRecord | None, known: bool, pw: bytes,
                     tag: bytes) -> bool:
        rec = record if record is not None and known else self._dummy
        try:
            salt = base64.b64decode(rec.salt)
            expected = base64.b64decode(rec.hash)
            got = _derive(pw, salt, rec.n, rec.r, rec.p, len(expected))
        except (ValueError, MemoryError):
            log.error("user %r has an unusable password record", name)
            return False
        ok = hmac.compare_digest(got, expected) and known
        if ok and record is not None:
            self._verified[name] = (record, tag)
        return ok

    # --- writing (CLI) ---------------------------------------------------------------

    @contextmanager
    def _editing(self) -> Iterator[dict[str, UserRecord]]:
        with self._file.locked():
            users = dict(self._read())
            yield users
            self._file.write(_UsersFile(users=dict(sorted(users.items()))))
        self._maybe_reload()

    def add(self, name: str, password: str, allow: list[str] | None = None,
            configuration_set: str = "", pool: str = "", tenant: str = "default",
            tenants: list[str] | None = None) -> None:
        """Add a credential. `tenant`, `tenants`: names the caller checked exist."""
        check_name(name)
        check_password(password)
        record = hash_password(password, now=self._clock.now())
        record = msgspec.structs.replace(record, tenant=tenant or "default",
                                         tenants=[t for t in dict.fromkeys(tenants or [])
                                                  if t != (tenant or "default")])
        if allow:
            record = msgspec.structs.replace(record, allow=list(allow))
        if configuration_set:
            record = msgspec.structs.replace(record, configuration_set=configuration_set)
        if pool:
            record = msgspec.structs.replace(record, pool=pool)
        with self._editing() as users:
            if name in users:
                raise UserError(f"user {name!r} already exists (use `relay user passwd`)")
            users[name] = record

    def set_password(self, name: str, password: str) -> None:
        check_password(password)
        with self._editing() as users:
            old = users.get(name)
            if old is None:
                raise UserError(f"no user {name!r}")
            new = hash_password(password, now=self._clock.now())
            # Everything but the password stays (allow, defaults, tenant, quota...).
            users[name] = msgspec.structs.replace(
                old, scheme=new.scheme, n=new.n, r=new.r, p=new.p, salt=new.salt,
                hash=new.hash, updated_at=new.updated_at)

    def set_allow(self, name: str, allow: list[str]) -> None:
        """Replace the identities/patterns `name` may send as (empty: any verified one)."""
        with self._editing() as users:
            old = users.get(name)
            if old is None:
                raise UserError(f"no user {name!r}")
            users[name] = msgspec.structs.replace(old, allow=list(allow),
                                                  updated_at=self._clock.now())

    def set_configuration_set(self, name: str, configuration_set: str) -> None:
        """The default configuration set of `name`'s mail ("" = none)."""
        with self._editing() as users:
            old = users.get(name)
            if old is None:
                raise UserError(f"no user {name!r}")
            users[name] = msgspec.structs.replace(old, configuration_set=configuration_set,
                                                  updated_at=self._clock.now())

    def set_pool(self, name: str, pool: str) -> None:
        """The default pool of `name`'s mail ("" = delivery.pool)."""
        with self._editing() as users:
            old = users.get(name)
            if old is None:
                raise UserError(f"no user {name!r}")
            users[name] = msgspec.structs.replace(old, pool=pool,
                                                  updated_at=self._clock.now())

    def set_tenant(self, name: str, tenant: str, tenants: list[str] | None = None) -> None:
        """Move `name` to `tenant`; `tenants`: the further tenants it may name (None:
        keep them)."""
        with self._editing() as users:
            old = users.get(name)
            if old is None:
                raise UserError(f"no user {name!r}")
            others = old.tenants if tenants is None else tenants
            users[name] = msgspec.structs.replace(
                old, tenant=tenant, tenants=[t for t in dict.fromkeys(others) if t != tenant],
                updated_at=self._clock.now())

    def set_quota(self, name: str, max_24h_send: int | None,
                  max_send_rate: float | None) -> UserRecord:
        """The per-credential quota override (None: the tenant's)."""
        with self._editing() as users:
            old = users.get(name)
            if old is None:
                raise UserError(f"no user {name!r}")
            users[name] = new = msgspec.structs.replace(
                old, max_24h_send=max_24h_send, max_send_rate=max_send_rate,
                updated_at=self._clock.now())
        return new

    def tenant_map(self) -> dict[str, list[str]]:
        """Credential name -> the tenants it may use, as on disk now (for removing a
        tenant: relay.tenants.store refuses while credentials belong to it)."""
        return {n: r.allowed_tenants for n, r in self._read().items()}

    def default_pool(self, name: str) -> str:
        record = self.get(name) if name else None
        return record.pool if record is not None else ""

    def default_configuration_set(self, name: str) -> str:
        record = self.get(name) if name else None
        return record.configuration_set if record is not None else ""

    def remove(self, name: str) -> None:
        with self._editing() as users:
            if users.pop(name, None) is None:
                raise UserError(f"no user {name!r}")
