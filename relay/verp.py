"""VERP return paths: `b-<token>@<return-path domain>` (PURE encode/decode + the secret file).

The token carries the queue id and the recipient index with a truncated HMAC-SHA256
(80 bits) keyed by `<state_dir>/verp.key` (32 random bytes, 0600), in lower-case base32
so it survives MTAs that fold local-part case. A bounce to a token that does not verify
is ignored (against suppression poisoning: only a verified token may change suppression).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import struct
from pathlib import Path

from relay.statedir import StateError

PREFIX = "b-"
MAC_LEN = 10
MIN_SECRET = 16
_HEX = re.compile(r"^(?:[0-9a-f]{2}){1,63}$")


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _unb32(text: str) -> bytes:
    t = text.upper()
    return base64.b32decode(t + "=" * (-len(t) % 8))


class Verp:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the VERP secret must be at least {MIN_SECRET} bytes")
        self._secret = secret

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> Verp:
        """Load `verp.key`, creating it (0600) on first use.

        The key is written whole to a private temporary file and then hard-linked into
        place, which fails if the name exists: workers starting together (server.workers)
        all end up with the one key, and none can read a half-written one. (An O_EXCL
        create and then a write let a second worker read the empty file in between, and
        a crash there left an empty key that stopped every later start.)"""
        path = state_dir / "verp.key"
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".verp.key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> Verp:
        """The key in `path`; one that is too short (an empty file left by a crash, a
        truncated copy) is a StateError: a new key would orphan every VERP address
        already sent, so it is the operator's call, not relay's."""
        secret = path.read_bytes()
        if len(secret) < MIN_SECRET:
            raise StateError(
                f"{path}: {len(secret)} bytes, expected at least {MIN_SECRET} (relay makes "
                "32 random bytes); restore it from a backup, or delete it to make a new one "
                "(bounces to mail sent with the old key are then ignored)")
        return cls(secret)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:MAC_LEN]

    def derived_key(self, label: bytes) -> bytes:
        """A key for another purpose (the tracking tokens) derived from this secret:
        HMAC-SHA256(secret, label). One secret file to keep; the derived key is not the
        VERP key, so a MAC of one kind is never a valid MAC of the other."""
        return hmac.new(self._secret, b"derive:" + label, hashlib.sha256).digest()

    def token(self, queue_id: str, index: int) -> str:
        if not 0 <= index <= 0xFFFF:
            raise ValueError("recipient index out of range")
        if _HEX.match(queue_id):  # relay's ids: hex, packed to half the length
            qid = bytes([0x80 | len(queue_id) // 2]) + bytes.fromhex(queue_id)
        else:
            raw = queue_id.encode("ascii")
            if not 0 < len(raw) < 0x80:
                raise ValueError("queue id too long for a VERP token")
            qid = bytes([len(raw)]) + raw
        payload = qid + struct.pack(">H", index)
        return _b32(payload + self._mac(payload))

    def address(self, queue_id: str, index: int, domain: str) -> str:
        return f"{PREFIX}{self.token(queue_id, index)}@{domain}"

    def decode(self, address_or_token: str) -> tuple[str, int] | None:
        """(queue id, recipient index) of a genuine token or address; None otherwise."""
        text = address_or_token.strip().strip("<>")
        local = text.rpartition("@")[0] if "@" in text else text
        local = local.lower()
        if local.startswith(PREFIX):
            local = local[len(PREFIX):]
        try:
            raw = _unb32(local)
        except (ValueError, TypeError):
            return None
        if len(raw) < 1 + 2 + MAC_LEN:
            return None
        payload, mac = raw[:-MAC_LEN], raw[-MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        head = payload[0]
        size = head & 0x7F
        if len(payload) != 1 + size + 2:
            return None
        body = payload[1:1 + size]
        qid = body.hex() if head & 0x80 else body.decode("ascii", "replace")
        (index,) = struct.unpack(">H", payload[1 + size:])
        return qid, index
