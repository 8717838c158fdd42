"""Signed tracking tokens for `/t/o/{token}` (open) and `/t/c/{token}` (click) (PURE).

A token is 36 URL-safe base64 characters (27 bytes, no padding, so no spare bits: every
character of the text is significant and a changed character is a different token):

    kind (1: 0x4F "O" open, 0x43 "C" click) | queue id (10: relay's 20 hex digits, packed)
    | recipient index (2) | link index (2; 0 for an open) | HMAC-SHA256 truncated to 12 (96 bits)

The click token does not carry the URL: the redirect target is looked up, by link index,
in the message itself (`relay.tracking.rewrite.links_of`), so a token can only ever lead
to a link that was in the message (no open redirect), and tampering with the index gives
a token whose MAC fails.

The key is not the VERP key itself but a key derived from it (`Verp.derived_key`): one
secret file to keep and back up, and a token of one kind is never a valid MAC of the
other (the VERP MAC covers a different payload under a different key).

`verify()` faces the public internet: it refuses on length and charset before decoding,
decodes a fixed 36 characters, checks the kind byte, and only then computes one HMAC,
compared in constant time. Bounded work whatever the input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from typing import Literal

OPEN_PATH = "/t/o/"    # + token: the open pixel
CLICK_PATH = "/t/c/"   # + token: the click redirect
TOKEN_LEN = 36
MAC_LEN = 12
MIN_SECRET = 16
_PAYLOAD = struct.Struct(">B10sHH")  # kind, queue id, recipient index, link index
_KINDS: dict[int, Literal["open", "click"]] = {0x4F: "open", 0x43: "click"}
_KIND_BYTE = {v: k for k, v in _KINDS.items()}
_QUEUE_ID = re.compile(r"[0-9a-f]{20}")
_CHARS = re.compile(rb"[A-Za-z0-9_-]{36}")
_MAX_INDEX = 0xFFFF

# The label that derives the tracking key from the VERP secret (change it and every
# tracking link already sent stops working).
KEY_LABEL = b"relay tracking token v1"


@dataclass(frozen=True)
class TrackingToken:
    kind: Literal["open", "click"]
    queue_id: str
    recipient: int   # the recipient's index in the message (as the VERP token's)
    link: int        # the link's index in links_of(message); 0 for an open


class Tokens:
    """Signs and verifies tracking tokens with one secret (see the module docstring)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the tracking secret must be at least {MIN_SECRET} bytes")
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:MAC_LEN]

    def _sign(self, kind: Literal["open", "click"], queue_id: str, recipient: int,
              link: int) -> str:
        if not _QUEUE_ID.fullmatch(queue_id):
            raise ValueError(f"queue id {queue_id!r}: expected 20 lower-case hex digits")
        if not 0 <= recipient <= _MAX_INDEX or not 0 <= link <= _MAX_INDEX:
            raise ValueError("recipient or link index out of range (0..65535)")
        payload = _PAYLOAD.pack(_KIND_BYTE[kind], bytes.fromhex(queue_id), recipient, link)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode("ascii")

    def open_token(self, queue_id: str, recipient: int) -> str:
        return self._sign("open", queue_id, recipient, 0)

    def click_token(self, queue_id: str, recipient: int, link: int) -> str:
        return self._sign("click", queue_id, recipient, link)

    def verify(self, token: str | bytes,
               kind: Literal["open", "click"] | None = None) -> TrackingToken | None:
        """The token's content when it is genuine (and of `kind`, when given); None for
        anything else: wrong length or characters, unknown kind, a MAC that fails."""
        if len(token) != TOKEN_LEN:
            return None
        raw = token.encode("ascii", "replace") if isinstance(token, str) else token
        if not _CHARS.fullmatch(raw):
            return None
        try:
            data = base64.urlsafe_b64decode(raw)
        except (binascii.Error, ValueError):
            return None
        payload, mac = data[:_PAYLOAD.size], data[_PAYLOAD.size:]
        if len(mac) != MAC_LEN:
            return None
        code, qid, recipient, link = _PAYLOAD.unpack(payload)
        found = _KINDS.get(code)
        if found is None or (kind is not None and found != kind):
            return None
        if found == "open" and link != 0:
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        return TrackingToken(found, qid.hex(), recipient, link)
