"""Access keys of the SES API: `<state_dir>/api_keys.json`, secrets encrypted at rest.

An access key (an id like AWS's "AKIA" + 16 upper-case letters and digits, and a
40-character secret) belongs to one SMTP credential of relay/users.py and sends as it:
same tenant, sending authorization and quotas. SigV4 needs the secret itself on the
server (a hash cannot check an HMAC), so each secret is stored encrypted with AES-GCM
under the 32 random bytes of `<state_dir>/api_keys.key` (mode 0600, made when the first
key is created); the key id and the credential name are the associated data, so a
record's ciphertext is worthless under another id or credential. The records file is a
relay.jsonfile.JsonFile (atomic 0600 writes, an advisory lock for the CLI's edits, a
running server sees them within `recheck` seconds).

`secret_for(key_id)` is the verifier's lookup (relay.sesapi.sigv4.verify); decrypted
secrets are cached until their record changes. `smtp_login()` checks an SMTP AUTH with a
key id and its SES SMTP password. Must not: log, print or return a secret other than once
from create(); import asyncio or sockets (the CLI and threads use it).
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import secrets
import stat
import string
import threading
from contextlib import suppress
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.clock import Clock, SystemClock
from relay.jsonfile import JsonFile
from relay.sesapi.sigv4 import smtp_password

KEY_ID_PREFIX = "AKIA"
KEY_ID_RE = re.compile(r"^AKIA[A-Z0-9]{16}$")
_ID_ALPHABET = string.ascii_uppercase + string.digits
_NONCE_LEN = 12
_MASTER_LEN = 32
SECRET_LEN = 40


class ApiKeyError(Exception):
    """A key operation the user can fix (unknown key, unreadable key file); one line."""


class KeyRecord(msgspec.Struct, frozen=True):
    user: str  # the SMTP credential (relay/users.py) the key sends as
    secret: str  # base64 of nonce + AES-GCM ciphertext and tag
    created_at: float = 0.0


class KeyInfo(msgspec.Struct, frozen=True):
    key_id: str
    user: str
    created_at: float


class _KeysFile(msgspec.Struct):
    version: int = 1
    keys: dict[str, KeyRecord] = {}


def new_key_id() -> str:
    return KEY_ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def new_secret() -> str:
    """40 characters of base64 (30 random bytes), as AWS's secret access keys look."""
    return base64.b64encode(secrets.token_bytes(30)).decode("ascii")


def _aad(key_id: str, user: str) -> bytes:
    return f"relay-api-key\0{key_id}\0{user}".encode()


class ApiKeyStore:
    FILE = "api_keys.json"
    KEY_FILE = "api_keys.key"

    def __init__(self, state_dir: str | Path, clock: Clock | None = None,
                 recheck: float = 0.0) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / self.FILE
        self.key_path = self.state_dir / self.KEY_FILE
        self.clock: Clock = clock or SystemClock()
        # `recheck`: how long a look at the file stays fresh for lookups (0.5 s in the
        # server: a stat per request would release the GIL to other threads); 0 = the CLI.
        self._file = JsonFile(self.path, _KeysFile, what="API keys", error=ApiKeyError,
                              clock=self.clock, recheck=recheck)
        self._aead: AESGCM | None = None
        self._lock = threading.Lock()
        # key id -> (the record it was decrypted from, the secret): a changed record misses.
        self._secrets: dict[str, tuple[KeyRecord, str]] = {}

    # --- the master key ------------------------------------------------------------

    def _cipher(self, create: bool) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self._master(create))
        return self._aead

    def _master(self, create: bool) -> bytes:
        try:
            fd = os.open(self.key_path, os.O_RDONLY)
        except FileNotFoundError:
            if not create:
                raise ApiKeyError(f"{self.key_path} is missing: the API keys in {self.path} "
                                "cannot be decrypted without it") from None
            return self._make_master()
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(_MASTER_LEN + 1)
        if stat.S_IMODE(mode) & 0o077:
            raise ApiKeyError(f"{self.key_path} is readable by others (mode "
                            f"{stat.S_IMODE(mode):04o}); it must be 0600")
        if len(data) != _MASTER_LEN:
            raise ApiKeyError(f"{self.key_path} is not a key file ({len(data)} bytes, "
                            f"expected {_MASTER_LEN})")
        return data

    def _make_master(self) -> bytes:
        """32 random bytes in a new 0600 file; another process that made it first wins
        (the file appears whole or not at all: written aside, then linked)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(_MASTER_LEN)
        tmp = self.key_path.with_name(f".{self.KEY_FILE}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.key_path)
            except FileExistsError:
                return self._master(create=False)
        finally:
            with suppress(OSError):
                os.unlink(tmp)
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return key

    def _encrypt(self, key_id: str, user: str, secret: str) -> str:
        nonce = secrets.token_bytes(_NONCE_LEN)
        sealed = self._cipher(create=True).encrypt(nonce, secret.encode("ascii"),
                                                   _aad(key_id, user))
        return base64.b64encode(nonce + sealed).decode("ascii")

    def _decrypt(self, key_id: str, record: KeyRecord) -> str:
        try:
            raw = base64.b64decode(record.secret, validate=True)
            plain = self._cipher(create=False).decrypt(raw[:_NONCE_LEN], raw[_NONCE_LEN:],
                                                       _aad(key_id, record.user))
        except (ValueError, InvalidTag):
            raise ApiKeyError(f"{self.path}: key {key_id} cannot be decrypted with "
                            f"{self.key_path}") from None
        return plain.decode("ascii")

    # --- the CLI ---------------------------------------------------------------------

    def create(self, user: str) -> tuple[str, str]:
        """A new key for credential `user` (the caller checked it exists): (key id,
        secret). The only time the secret leaves this store."""
        secret = new_secret()
        with self._file.locked():
            keys = dict(self._file.read().keys)
            key_id = new_key_id()
            while key_id in keys:
                key_id = new_key_id()
            keys[key_id] = KeyRecord(user, self._encrypt(key_id, user, secret),
                                     self.clock.now())
            self._file.write(_KeysFile(keys=dict(sorted(keys.items()))))
        return key_id, secret

    def list_keys(self, user: str | None = None) -> list[KeyInfo]:
        """Every key (of `user`), by credential then creation time; never a secret."""
        keys = self._file.read().keys
        found = [KeyInfo(k, r.user, r.created_at) for k, r in keys.items()
                 if user is None or r.user == user]
        return sorted(found, key=lambda i: (i.user, i.created_at, i.key_id))

    def revoke(self, key_id: str, user: str | None = None) -> KeyInfo:
        """Delete a key (that must belong to `user` when given); the running server stops
        accepting it within `recheck` seconds."""
        with self._file.locked():
            keys = dict(self._file.read().keys)
            record = keys.get(key_id)
            if record is None or (user is not None and record.user != user):
                owner = f" of user {user!r}" if user is not None else ""
                raise ApiKeyError(f"no access key {key_id!r}{owner}")
            del keys[key_id]
            self._file.write(_KeysFile(keys=keys))
        return KeyInfo(key_id, record.user, record.created_at)

    def revoke_user(self, user: str) -> list[str]:
        """Delete every key of `user` (its credential is being removed); their ids."""
        with self._file.locked():
            keys = dict(self._file.read().keys)
            gone = [k for k, r in keys.items() if r.user == user]
            if gone:
                self._file.write(_KeysFile(keys={k: r for k, r in keys.items()
                                                 if r.user != user}))
        return gone

    def secret(self, key_id: str) -> str:
        """The secret of `key_id` as on disk now (`relay user keys smtp-password`)."""
        record = self._file.read().keys.get(key_id)
        if record is None:
            raise ApiKeyError(f"no access key {key_id!r}")
        return self._decrypt(key_id, record)

    def check(self) -> int:
        """The records file and every secret in it as the server needs them (`relay
        serve` checks before it starts): the number of keys; ApiKeyError naming the file
        otherwise. A server started on a key file that decrypts nothing would refuse
        every signed request as from an unknown key."""
        keys = self._file.read().keys
        for key_id, record in keys.items():
            self._decrypt(key_id, record)
        return len(keys)

    # --- the server ------------------------------------------------------------------

    def _records(self) -> dict[str, KeyRecord]:
        try:
            return self._file.current().keys
        except ApiKeyError:
            return self._file.value.keys  # a bad edit keeps the last good records

    def refresh(self) -> None:
        """Look at the file now (SIGHUP)."""
        with suppress(ApiKeyError):  # a bad edit keeps the last good records
            self._file.current(force=True)

    def lookup(self, key_id: str) -> tuple[str, str] | None:
        """(credential name, secret) of `key_id`, or None (unknown, or undecryptable)."""
        record = self._records().get(key_id)
        if record is None:
            return None
        hit = self._secrets.get(key_id)
        if hit is not None and hit[0] is record:
            return record.user, hit[1]
        try:
            secret = self._decrypt(key_id, record)
        except ApiKeyError:
            return None
        with self._lock:
            if len(self._secrets) > 10_000:
                self._secrets.clear()
            self._secrets[key_id] = (record, secret)
        return record.user, secret

    def secret_for(self, key_id: str) -> str | None:
        """The verifier's lookup: the secret of `key_id`, or None."""
        found = self.lookup(key_id)
        return found[1] if found is not None else None

    def user_of(self, key_id: str) -> str | None:
        record = self._records().get(key_id)
        return record.user if record is not None else None

    def smtp_login(self, login: str, password: str | bytes, region: str) -> str | None:
        """The credential an SMTP AUTH as access key `login` with its SES SMTP password
        (for `region`) authenticates as, or None. Cheap (a few HMACs) for a key, a regex
        for any other name: fit for the event loop."""
        if not KEY_ID_RE.match(login):
            return None
        found = self.lookup(login)
        if found is None:
            return None
        user, secret = found
        given = password.encode("utf-8", "surrogateescape") if isinstance(password, str) \
            else password
        expected = smtp_password(secret, region).encode("ascii")
        return user if hmac.compare_digest(given, expected) else None
