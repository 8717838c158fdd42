"""PURE key encodings of the history's sub-databases, and the words a subject is found by.

- "history":    the queue id (20 ASCII hex: 12 of milliseconds, 8 random) -> HistoryMessage
- "history_tl": the queue id + the entry's time in microseconds (8 bytes big-endian) + a
                sequence number (4 bytes big-endian, so two entries of one microsecond
                both stay) -> TimelineEntry; the queue id alone -> the message's SES
                `mail` object (codec.mail_key)
  (values in the stored forms of relay/history/codec.py)
- "history_ix": a field code (1 byte) + the value (lowercased UTF-8, at most 200 bytes,
                no NUL) + NUL + the queue id -> b"" (an inverted index: the newest
                message of a value is the last key of its prefix)
- "stats":      the bucket start (epoch seconds // 900 * 900, 4 bytes big-endian) + a
                dimension code (1 byte) + its value (UTF-8, no NUL) + NUL + a metric code
                (1 byte) -> a count (8 bytes big-endian)

Queue ids sort by time, so a time range of messages is a range of ids (`id_bound`).
No I/O here.
"""

from __future__ import annotations

import functools
import re
import struct

import msgspec

from relay.history.model import HistoryMessage, TimelineEntry, statuses_of

HISTORY_DB = "history"
TIMELINE_DB = "history_tl"
INDEX_DB = "history_ix"
STATS_DB = "stats"
DBS: tuple[str, ...] = (HISTORY_DB, TIMELINE_DB, INDEX_DB, STATS_DB)

ID_LEN = 20
BUCKET = 900                  # seconds of one statistics bucket
MAX_VALUE = 200               # bytes of an indexed value
MAX_WORDS = 30                # distinct subject words indexed per message
SEP = b"\x00"

_US = struct.Struct(">Q")
_SEQ = struct.Struct(">I")
_BUCKET = struct.Struct(">I")
COUNT = struct.Struct(">Q")

# Index fields.
F_RECIPIENT = b"r"
F_SENDER = b"s"
F_FROM = b"f"
F_WORD = b"w"
F_MESSAGE_ID = b"m"
F_TENANT = b"t"
F_CONFIGURATION_SET = b"c"
F_STATUS = b"x"
F_IDENTITY = b"i"

# Statistics dimensions (by= names) and metrics (1-byte codes).
DIMENSIONS: dict[str, bytes] = {"": b"a", "tenant": b"t", "configuration_set": b"c",
                                "identity": b"i", "provider": b"p"}
METRICS: dict[str, bytes] = {"sent": b"s", "delivered": b"d", "deferred": b"f",
                             "bounced": b"b", "complained": b"c", "rejected": b"r",
                             "attempts": b"a", "suppressed": b"u",
                             # engagement: opens and clicks a person made (not automated)
                             "opened": b"o", "clicked": b"k"}
METRIC_NAMES: dict[bytes, str] = {v: k for k, v in METRICS.items()}

_WORD = re.compile(r"\w+")

enc = msgspec.msgpack.Encoder()
message_dec = msgspec.msgpack.Decoder(HistoryMessage)
entry_dec = msgspec.msgpack.Decoder(TimelineEntry)


# ------------------------------------------------------------------ times and ids

def id_bound(ts: float) -> str:
    """The smallest queue id of a message received at `ts` or later (ids sort by time)."""
    ms = ts * 1000
    return f"{int(min(max(0.0, ms), float(0xFFFFFFFFFFFF))):012x}"


def id_time(qid: str) -> float:
    """When the message with queue id `qid` was received (its first 12 hex digits)."""
    try:
        return int(qid[:12], 16) / 1000.0
    except ValueError:
        return 0.0


def is_queue_id(text: str) -> bool:
    return len(text) == ID_LEN and all(c in "0123456789abcdef" for c in text)


def bucket_of(ts: float, size: int = BUCKET) -> int:
    """The start of the statistics bucket holding `ts` (epoch seconds)."""
    return int(ts) // size * size


# ------------------------------------------------------------------ "history", "history_tl"

def message_key(qid: str) -> bytes:
    return qid.encode("ascii")


def timeline_key(qid: str, ts: float, seq: int = 0) -> bytes:
    return qid.encode("ascii") + _US.pack(max(0, round(ts * 1_000_000))) + _SEQ.pack(seq)


def timeline_prefix(qid: str) -> bytes:
    return qid.encode("ascii")


def parse_timeline_key(key: bytes) -> tuple[str, float, int]:
    return (key[:ID_LEN].decode("ascii"), _US.unpack(key[ID_LEN:ID_LEN + 8])[0] / 1e6,
            _SEQ.unpack(key[ID_LEN + 8:ID_LEN + 12])[0])


# ------------------------------------------------------------------ "history_ix"

# Memoised: a message's keys are worked out when it is recorded and again from the stored
# copy at each later op (to delete the keys its new statuses replace), and most values
# (tenants, sets, senders, statuses, subject words, a message's own recipients) recur, so
# the normalisation was the largest share of a recording op on the event loop. Bounded in
# entries and, as the values come from clients' headers, in the size of what is kept.
_MEMO_MAX_CHARS = 512


def index_value(value: str) -> bytes:
    """An indexed (or searched) value: lowercased UTF-8 without NUL, cut to 200 bytes at
    a character boundary."""
    return _index_value(value) if len(value) <= _MEMO_MAX_CHARS else _normalised(value)


@functools.lru_cache(maxsize=16384)
def _index_value(value: str) -> bytes:
    return _normalised(value)


def _normalised(value: str) -> bytes:
    raw = value.strip().lower().replace("\x00", "").encode("utf-8")
    if len(raw) > MAX_VALUE:
        raw = raw[:MAX_VALUE].decode("utf-8", "ignore").encode("utf-8")
    return raw


def index_prefix(field: bytes, value: str) -> bytes:
    return field + index_value(value) + SEP


def index_key(field: bytes, value: str, qid: str) -> bytes:
    return index_prefix(field, value) + qid.encode("ascii")


def id_of_index_key(key: bytes) -> str:
    return key[-ID_LEN:].decode("ascii")


def words(subject: str) -> list[str]:
    """The words a subject is found by: lowercased runs of word characters of 2..40
    characters, each once, in order, at most 30."""
    return list(_words(subject) if len(subject) <= _MEMO_MAX_CHARS else _words_of(subject))


@functools.lru_cache(maxsize=4096)  # a sender's subjects recur; each message's keys twice
def _words(subject: str) -> tuple[str, ...]:
    return _words_of(subject)


def _words_of(subject: str) -> tuple[str, ...]:
    out: list[str] = []
    seen: set[str] = set()
    for m in _WORD.finditer(subject.lower()):
        w = m.group(0)
        if 2 <= len(w) <= 40 and w not in seen:
            seen.add(w)
            out.append(w)
            if len(out) >= MAX_WORDS:
                break
    return tuple(out)


def address_of(value: str) -> str:
    """The address in "Name <addr>" (or the value itself)."""
    lt, gt = value.rfind("<"), value.rfind(">")
    if 0 <= lt < gt:
        return value[lt + 1:gt].strip()
    return value.strip()


def domain_of(address: str) -> str:
    addr = address_of(address)
    return addr.rpartition("@")[2].lower() if "@" in addr else ""


def index_fields(msg: HistoryMessage) -> set[tuple[bytes, str]]:
    """(field, value) of every index key of `msg` (its statuses as they are now)."""
    out: set[tuple[bytes, str]] = set()

    def add(field: bytes, value: str) -> None:
        v = index_value(value)
        if v:
            out.add((field, v.decode("utf-8")))

    for r in msg.recipients:
        add(F_RECIPIENT, r.address)
    add(F_SENDER, msg.sender)
    for f in msg.from_:
        add(F_FROM, address_of(f))
    for w in words(msg.subject):
        add(F_WORD, w)
    add(F_MESSAGE_ID, msg.message_id)
    add(F_TENANT, msg.tenant)
    add(F_CONFIGURATION_SET, msg.configuration_set)
    add(F_IDENTITY, msg.identity)
    for s in statuses_of(msg):
        add(F_STATUS, s)
    return out


def index_keys(msg: HistoryMessage) -> set[bytes]:
    """Every "history_ix" key of `msg`."""
    tail = SEP + msg.id.encode("ascii")  # index_key() of each, without two calls a key
    return {f + index_value(v) + tail for f, v in index_fields(msg)}


# ------------------------------------------------------------------ "stats"

def stats_key(bucket: int, dim: bytes, value: str, metric: bytes) -> bytes:
    return (_BUCKET.pack(bucket) + dim + value.replace("\x00", "").encode("utf-8") + SEP
            + metric)


def stats_prefix(bucket: int, dim: bytes = b"", value: str | None = None) -> bytes:
    out = _BUCKET.pack(bucket) + dim
    if value is not None:
        out += value.replace("\x00", "").encode("utf-8") + SEP
    return out


def parse_stats_key(key: bytes) -> tuple[int, bytes, str, bytes]:
    """(bucket, dimension, value, metric)."""
    return (_BUCKET.unpack(key[:4])[0], key[4:5], key[5:-2].decode("utf-8", "replace"),
            key[-1:])


def bucket_prefix(bucket: int) -> bytes:
    return _BUCKET.pack(bucket)
