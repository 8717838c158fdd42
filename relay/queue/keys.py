"""Queue ids, worker shards and the spool's key and value codecs.

A queue id is 20 characters: 12 hex digits of milliseconds then 8 random hex, so ids
sort by the time the message came in. The first random byte names the worker that
delivers the message (`shard_of`). Keys of the sub-databases:

- "messages", "bodies", "sent": the id (ASCII);
- "recipients", "inflight": the id + the recipient's index (big-endian u16);
- "due_new", "due_retry": the due time in milliseconds (big-endian u64) + the
  recipients key, so a cursor from the start finds the earliest due work.

Records are msgspec msgpack (relay/queue/records.py).
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
from dataclasses import dataclass

import msgspec

from relay.queue.records import MessageRecord, RecipientRecord

ID_LEN = 20
IDX = struct.Struct(">H")
TS = struct.Struct(">Q")
MAX_RECIPIENTS = 0xFFFF

enc = msgspec.msgpack.Encoder()
msg_dec = msgspec.msgpack.Decoder(MessageRecord)
rcpt_dec = msgspec.msgpack.Decoder(RecipientRecord)


@dataclass(frozen=True)
class DueItem:
    message_id: str
    index: int


def shard_of(mid: str | bytes, count: int) -> int:
    """The worker (0..count-1) that delivers message `mid`: read from the id itself (its
    first random byte), so every process agrees without a lookup. `new_message_id` gives
    the accepting worker's messages its own index, so each worker delivers what it
    accepted (its own submissions wake it) and the load splits as connections do."""
    if count <= 1:
        return 0
    text = mid.decode("ascii") if isinstance(mid, bytes) else mid
    return int(text[12:14], 16) % count


class _RandomPool:
    """OS randomness fetched 4 KB at a time: one getrandom() per 1,024 message ids instead
    of one per message (each is a syscall that releases the GIL on the accept path)."""

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)  # a child never reuses ours

    def _forget(self) -> None:
        self._buf, self._at = b"", 0
        self._lock = threading.Lock()  # the parent's may have been held at the fork

    def __call__(self) -> bytes:
        with self._lock:
            if self._at + 4 > len(self._buf):
                self._buf, self._at = secrets.token_bytes(4096), 0
            out = self._buf[self._at:self._at + 4]
            self._at += 4
            return out


_random4 = _RandomPool()


def new_message_id(now: float, shard: tuple[int, int] | None = None) -> str:
    """Time-sortable, 20 characters: 12 hex digits of milliseconds + 8 random hex. With
    `shard` (i, N) the first random byte is chosen so that `shard_of(id, N) == i`."""
    rand = _random4()
    if shard is not None and shard[1] > 1:
        i, n = shard
        first = rand[0] - rand[0] % n + i
        if first > 0xFF:
            first -= n
        rand = bytes([first]) + rand[1:]
    return f"{int(now * 1000):012x}{rand.hex()}"


def rcpt_key(mid: str, idx: int) -> bytes:
    """A recipient's key in "recipients" and "inflight"."""
    return mid.encode("ascii") + IDX.pack(idx)


def due_key(at: float, mid: str, idx: int) -> bytes:
    """A recipient's key in its schedule index ("due_new" or "due_retry")."""
    return TS.pack(max(0, int(at * 1000))) + mid.encode("ascii") + IDX.pack(idx)


def parse_due_key(key: bytes) -> tuple[float, DueItem]:
    (ms,) = TS.unpack_from(key)
    mid = key[8:8 + ID_LEN].decode("ascii")
    (idx,) = IDX.unpack_from(key, 8 + ID_LEN)
    return ms / 1000.0, DueItem(mid, idx)


def parse_rcpt_key(key: bytes) -> tuple[str, int]:
    """(message id, recipient index) of a "recipients"/"inflight" key."""
    (idx,) = IDX.unpack_from(key, ID_LEN)
    return bytes(key[:ID_LEN]).decode("ascii"), idx
