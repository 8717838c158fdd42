"""The message history in the queue's LMDB environment: ops for its group commit, and reads.

Sub-databases and keys: relay/history/keys.py. Writes are ops for `store.write_soon()` /
`store.write()` (never a transaction or a sync of their own): `record_op()` records a
batch of messages and timeline entries (relay/history/recorder.py makes them), moving
each recipient's status forward only (model.advance), keeping the inverted index equal
to the messages' current fields and statuses, and adding the statistics counts
(relay/history/entries.py stat_deltas) in the same transaction; an entry already
recorded (a replayed event) changes nothing. An op may run again on
the committer's retry (a map resize), so it never changes what it was given.

Search plan (`search()`): the most selective condition given (message id > recipient >
sender > subject word > configuration set > identity > tenant > status; none: the
"history" database itself) is iterated newest first, between the id bounds of
since/until; each other condition is a point probe of its index key. One call looks at
no more than `MAX_SCAN` candidates; `next_cursor` continues after the last one looked
at, so a caller pages on through a long scan.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from relay.history import codec
from relay.history import keys as K
from relay.history.entries import stat_deltas
from relay.history.model import (
    HistoryMessage,
    MessageQuery,
    RecipientHistory,
    TimelineEntry,
    advance,
)
from relay.queue.keys import msg_dec
from relay.queue.store import QueueStore

# About a quarter of a second at a million messages (the worst case: a condition no
# candidate meets); the caller pages on with next_cursor.
MAX_SCAN = 100_000
MAX_LIMIT = 500
# Group-commit ops run on the event loop (relay/queue/committer.py): a prune op of 100
# messages holds it for about 12 ms (2,000 held it 130 ms, bench/test_bench_history.py),
# and the pruner runs them one after the other until nothing older remains.
PRUNE_CHUNK = 100
# Messages whose index keys record_op remembers: the messages of the last few seconds, so
# a delivery finds its Send's keys; each with a record of at most STORED_RECORD_MAX bytes
# (one with many recipients or long headers is worked out again instead). Bounded by the
# memory held, not by a count: 8,192 entries held ~20 MiB (2.5 KB a message with 1-3
# recipients, record and keys), which a 1M-message spool draining for minutes keeps full
# of deliveries no later op looks up again, on top of the LMDB pages it maps. 4 MiB keeps
# ~1,600 such messages, ~2 s at the end-to-end rates measured (a Send's delivery comes
# well within that), and more of the small ones.
STORED_KEYS_BYTES = 4 << 20
STORED_RECORD_MAX = 2048
# What an entry costs beyond its set's table and the lengths of its record and keys
# (checked with tracemalloc): the dict slot, tuple and queue id; a bytes object's header.
_STORED_ENTRY_OVERHEAD = 380
_BYTES_HEADER = sys.getsizeof(b"")

# The message fields a Send's data sets (the others, recipients and dkim, are merged).
_DATA_FIELDS = ("received_at", "sender", "tenant", "configuration_set", "tags", "subject",
                "from_", "to", "message_id", "size", "client_ip", "auth_user", "identity",
                "source")


class MessageView(msgspec.Struct):
    """A message and its timeline in time order (each entry with its event: entries made
    from one event share the JSON the store keeps once)."""

    message: HistoryMessage
    timeline: list[TimelineEntry]

    def by_recipient(self) -> dict[str, list[TimelineEntry]]:
        """Each recipient's entries in time order (entries about the whole message, such
        as a rendering failure, under every recipient)."""
        out: dict[str, list[TimelineEntry]] = {r.address: [] for r in self.message.recipients}
        lower = {a.lower(): a for a in out}
        for e in self.timeline:
            if not e.recipient:
                for lst in out.values():
                    lst.append(e)
            else:
                out.setdefault(lower.get(e.recipient.lower(), e.recipient), []).append(e)
        return out


class SearchPage(msgspec.Struct):
    messages: list[HistoryMessage]    # newest first
    next_cursor: str                  # "" = nothing more
    scanned: int                      # candidates looked at


def _copy(msg: HistoryMessage) -> HistoryMessage:
    return K.message_dec.decode(K.enc.encode(msg))


def _find(msg: HistoryMessage, address: str) -> RecipientHistory:
    low = address.lower()
    for r in msg.recipients:
        if r.address.lower() == low:
            return r
    r = RecipientHistory(address=address)
    msg.recipients.append(r)
    return r


def merge(cur: HistoryMessage | None, new: HistoryMessage) -> HistoryMessage:
    """`cur` (as stored, or None) with what `new` says: a Send's data replaces a stub's;
    a partial record only fills fields still empty. Recipients are the union (statuses
    kept), so are the DKIM selectors. Mutates and returns `cur` (a copy of `new` when
    None); never changes `new`."""
    if cur is None:
        return _copy(new)
    if not new.partial:
        for f in _DATA_FIELDS:
            setattr(cur, f, _copy_value(getattr(new, f)))
        cur.partial = False
    else:
        for f in _DATA_FIELDS:
            if not getattr(cur, f) and getattr(new, f):
                setattr(cur, f, _copy_value(getattr(new, f)))
    for r in new.recipients:
        _find(cur, r.address)
    if not new.partial:
        # the Send's order (the envelope's), whatever order the stub learnt them in
        rank = {r.address.lower(): n for n, r in enumerate(new.recipients)}
        cur.recipients.sort(key=lambda r: rank.get(r.address.lower(), len(rank)))
    for d in new.dkim:
        if d not in cur.dkim:
            cur.dkim.append(d)
    return cur


def _copy_value(v: Any) -> Any:
    if isinstance(v, list):
        return list(v)
    if isinstance(v, dict):
        return {k: list(x) for k, x in v.items()}
    return v


def apply_entry(msg: HistoryMessage, entry: TimelineEntry) -> None:
    """Move the entry's recipient on (status forward only; attempts counted; the first
    attempt's provider kept; the response of the entry that set the status shown)."""
    if entry.kind == "attempt":
        for d in entry.dkim:
            if d not in msg.dkim:
                msg.dkim.append(d)
    if not entry.recipient:
        return
    r = _find(msg, entry.recipient)
    kind = entry.result if entry.kind == "attempt" else entry.kind
    if entry.kind == "attempt":
        r.attempts += 1
        if not r.provider:
            r.provider = entry.provider
    new = advance(r.status, kind)
    changed = new != r.status
    target = "queued" if kind == "accepted" else kind
    if changed or (new == target and entry.ts >= r.updated_at):
        if entry.response:
            r.last_response = entry.response
        r.updated_at = max(r.updated_at, entry.ts)
    r.status = new


def _entry_at(txn: Any, db: Any, key: bytes) -> TimelineEntry | None:
    raw = txn.get(key, db=db)
    return codec.decode_entry(raw) if raw is not None else None


def _same(a: TimelineEntry, b: TimelineEntry) -> bool:
    """The same happening: an event published twice (the journal's replay after a
    crash), an attempt reported twice. Entries of one microsecond otherwise differ in
    recipient, kind or result."""
    return a.recipient == b.recipient and a.kind == b.kind and a.result == b.result


class HistoryStore:
    """The history of the queue spool `store` (its four sub-databases, keys.DBS)."""

    def __init__(self, store: QueueStore) -> None:
        self.store = store
        self._msgs = store.named_db(K.HISTORY_DB)
        self._tl = store.named_db(K.TIMELINE_DB)
        self._ix = store.named_db(K.INDEX_DB)
        self._stats = store.named_db(K.STATS_DB)
        self._queued = store.named_db("messages")
        self._sent = store.named_db("sent")
        # The index keys of the messages this process wrote last, by queue id, with the
        # stored record they were worked out from: a message's next op (its delivery,
        # about a second after its Send) finds its record unchanged and need not work out
        # the keys to replace again. Only used when the stored bytes are equal (another
        # worker process, a prune, or an aborted transaction changed nothing then).
        # Each with its cost in bytes (STORED_KEYS_BYTES bounds their sum).
        self._stored_keys: dict[str, tuple[bytes, set[bytes], int]] = {}
        self._stored_bytes = 0

    # ------------------------------------------------------------------ writing

    def record_op(self, messages: list[HistoryMessage],
                  entries: list[tuple[str, TimelineEntry]]) -> Callable[[Any], int]:
        """An op recording a batch; returns how many entries it appended (an entry
        recorded already, at the same microsecond for the same recipient, kind and
        result, is skipped: replayed events count once)."""
        msgs_db, tl_db, ix_db, stats_db = self._msgs, self._tl, self._ix, self._stats
        queued_db, sent_db = self._queued, self._sent
        ordered = sorted(entries, key=lambda e: e[1].ts)

        def size_of(txn: Any, qid: str) -> int:
            # SES events carry no size: the queue's record has it (in "messages" while
            # queued, in "sent" for a while after delivery).
            key = qid.encode("ascii", "replace")
            raw = txn.get(key, db=queued_db) or txn.get(key, db=sent_db)
            return msg_dec.decode(raw).size if raw is not None else 0

        stored_keys = self._stored_keys

        def op(txn: Any) -> int:
            touched: dict[str, tuple[set[bytes], HistoryMessage | None]] = {}

            def load(qid: str) -> HistoryMessage | None:
                if qid not in touched:
                    raw = txn.get(K.message_key(qid), db=msgs_db)
                    if raw is None:
                        touched[qid] = (set(), None)
                    else:
                        old = codec.decode_message(qid, raw)
                        known = stored_keys.get(qid)
                        keys = known[1] if known is not None and known[0] == raw \
                            else K.index_keys(old)
                        touched[qid] = (keys, old)
                return touched[qid][1]

            def keep(qid: str, msg: HistoryMessage) -> None:
                touched[qid] = (touched[qid][0], msg)

            # This op's timeline values, written at its end in key order: a page LMDB
            # splits is split where the next key goes (each insert elsewhere in key order
            # would leave more half-filled pages behind).
            puts: dict[bytes, bytes] = {}
            added: dict[bytes, TimelineEntry] = {}
            mails: dict[str, bytes | None] = {}

            def mail_for(qid: str, event: bytes) -> bytes | None:
                # The message's stored `mail` object (the first event's, stored now).
                if qid not in mails:
                    stored = txn.get(codec.mail_key(qid), db=tl_db)
                    mails[qid] = codec.decode_mail(stored) if stored is not None else None
                if mails[qid] is None:
                    own = codec.mail_of(event)
                    if own is not None:
                        puts[codec.mail_key(qid)] = codec.encode_mail(own)
                        mails[qid] = own
                return mails[qid]

            for m in messages:
                merged = merge(load(m.id), m)
                if not merged.size:
                    merged.size = size_of(txn, m.id)
                keep(m.id, merged)
            deltas: dict[tuple[int, bytes, str, bytes], int] = {}
            for qid, e in ordered:
                msg = load(qid)
                if msg is None:
                    msg = HistoryMessage(id=qid, received_at=K.id_time(qid), partial=True)
                    keep(qid, msg)
                seq, key = 0, K.timeline_key(qid, e.ts)
                while (had := added.get(key) or _entry_at(txn, tl_db, key)) is not None:
                    if _same(had, e):
                        break  # a replayed event: recorded already
                    seq += 1
                    key = K.timeline_key(qid, e.ts, seq)
                if had is not None:
                    continue
                apply_entry(msg, e)
                mail = mail_for(qid, e.event) if e.event else None
                added[key] = e
                puts[key] = codec.encode_entry(e, mail)
                for bucket, dim, value, metric, n in stat_deltas(e, msg):
                    dk = (bucket, dim, value, metric)
                    deltas[dk] = deltas.get(dk, 0) + n
            for k in sorted(puts):
                txn.put(k, puts[k], db=tl_db)
            ix_gone: list[bytes] = []
            ix_new: list[bytes] = []
            for qid, (old_keys, msg) in sorted(touched.items()):
                if msg is None:
                    continue
                new_keys = K.index_keys(msg)
                ix_gone += old_keys - new_keys
                ix_new += new_keys - old_keys
                stored = codec.encode_message(msg)
                txn.put(K.message_key(qid), stored, db=msgs_db)
                self._forget_keys(qid)  # re-inserted last: the oldest go first
                if len(stored) <= STORED_RECORD_MAX:
                    cost = (_STORED_ENTRY_OVERHEAD + sys.getsizeof(new_keys)
                            + _BYTES_HEADER * (len(new_keys) + 1)
                            + len(stored) + sum(len(k) for k in new_keys))
                    stored_keys[qid] = (stored, new_keys, cost)
                    self._stored_bytes += cost
            while self._stored_bytes > STORED_KEYS_BYTES and stored_keys:
                self._forget_keys(next(iter(stored_keys)))
            for k in sorted(ix_gone):
                txn.delete(k, db=ix_db)
            for k in sorted(ix_new):
                txn.put(k, b"", db=ix_db)
            for (bucket, dim, value, metric), n in deltas.items():
                sk = K.stats_key(bucket, dim, value, metric)
                raw = txn.get(sk, db=stats_db)
                total = (K.COUNT.unpack(raw)[0] if raw is not None else 0) + n
                txn.put(sk, K.COUNT.pack(total), db=stats_db)
            return len(ordered)
        return op

    def _forget_keys(self, qid: str) -> None:
        known = self._stored_keys.pop(qid, None)
        if known is not None:
            self._stored_bytes -= known[2]

    def prune_op(self, before_ts: float,
                 max_messages: int = PRUNE_CHUNK) -> Callable[[Any], int]:
        """An op removing up to `max_messages` of the oldest messages received before
        `before_ts` (with their timeline and index keys); returns how many."""
        bound = K.id_bound(before_ts).encode("ascii")
        msgs_db, tl_db, ix_db = self._msgs, self._tl, self._ix

        def op(txn: Any) -> int:
            victims: list[tuple[bytes, bytes]] = []
            with txn.cursor(db=msgs_db) as cur:
                if cur.first():
                    for k, v in cur.iternext():
                        if len(victims) >= max_messages or bytes(k) >= bound:
                            break
                        victims.append((bytes(k), bytes(v)))
            for k, v in victims:
                msg = codec.decode_message(k.decode("ascii"), v)
                for ik in K.index_keys(msg):
                    txn.delete(ik, db=ix_db)
                with txn.cursor(db=tl_db) as cur:
                    if cur.set_range(k):
                        while bytes(cur.key()).startswith(k):
                            if not cur.delete():
                                break
                txn.delete(k, db=msgs_db)
            return len(victims)
        return op

    # ------------------------------------------------------------------ reading

    def get(self, ident: str) -> MessageView | None:
        """A message by queue id or Message-ID header value (with or without <>; the
        newest message when several carry it), with its timeline in time order."""
        ident = ident.strip()

        def read(txn: Any) -> MessageView | None:
            qid = ident if K.is_queue_id(ident) else ""
            raw = txn.get(K.message_key(qid), db=self._msgs) if qid else None
            if raw is None:
                prefix = K.index_prefix(K.F_MESSAGE_ID, ident.strip("<>"))
                qid = next((K.id_of_index_key(k) for k in _reverse(txn, self._ix, prefix,
                                                                  b"", b"\xff")), "")
                raw = txn.get(K.message_key(qid), db=self._msgs) if qid else None
                if raw is None:
                    return None
            msg = codec.decode_message(qid, raw)
            timeline: list[TimelineEntry] = []
            prefix = K.timeline_prefix(qid)
            mail = b""
            with txn.cursor(db=self._tl) as cur:
                if cur.set_range(prefix):
                    for k, v in cur.iternext():
                        key = bytes(k)
                        if not key.startswith(prefix):
                            break
                        if key == codec.mail_key(qid):
                            mail = codec.decode_mail(bytes(v))  # the prefix's first
                        else:
                            timeline.append(codec.decode_entry(bytes(v), mail))
            return MessageView(msg, _with_events(timeline))
        return self.store.read(read)

    def search(self, q: MessageQuery) -> SearchPage:
        """The messages matching every condition of `q`, newest first (plan: see the
        module's docstring)."""
        limit = max(1, min(MAX_LIMIT, q.limit))
        low = K.id_bound(q.since).encode("ascii") if q.since is not None else b""
        high = K.id_bound(q.until).encode("ascii") if q.until is not None else b"\xff"
        if q.cursor:
            high = min(high, q.cursor.encode("ascii", "replace"))
        conds = _conditions(q)
        if conds is None:
            return SearchPage([], "", 0)

        def read(txn: Any) -> SearchPage:
            driver, probes = _plan(conds)
            if driver is None:
                stream = _reverse(txn, self._msgs, b"", low, high)
                ids: Iterator[bytes] = (bytes(k) for k in stream)
            else:
                ids = _merged(txn, self._ix, driver, low, high)
            found: list[HistoryMessage] = []
            scanned = 0
            last = b""
            exhausted = True
            for qid in ids:
                scanned += 1
                last = qid
                if all(_probe(txn, self._ix, alts, qid) for alts in probes):
                    raw = txn.get(qid, db=self._msgs)
                    if raw is not None:
                        found.append(codec.decode_message(qid.decode("ascii"), raw))
                if len(found) >= limit or scanned >= MAX_SCAN:
                    exhausted = False
                    break
            cursor = "" if exhausted else last.decode("ascii")
            return SearchPage(found, cursor, scanned)
        return self.store.read(read)

    def usage(self) -> dict[str, int]:
        """{"messages": in the history, "bytes": pages the four sub-databases use,
        "oldest": receive time (epoch seconds) of the oldest message, 0 if none}."""

        def read(txn: Any) -> dict[str, int]:
            total = 0
            count = 0
            for name in K.DBS:
                st = txn.stat(self.store.named_db(name))
                total += st["psize"] * (st["branch_pages"] + st["leaf_pages"]
                                        + st["overflow_pages"])
                if name == K.HISTORY_DB:
                    count = st["entries"]
            oldest = 0
            with txn.cursor(db=self._msgs) as cur:
                if cur.first():
                    oldest = int(K.id_time(bytes(cur.key()).decode("ascii")))
            return {"messages": count, "bytes": total, "oldest": oldest}
        return self.store.read(read)


# ------------------------------------------------------------------ search helpers

# A condition: the index keys' prefixes any one of which a message must have; a message
# id condition also matches the queue id itself (marked by the prefix b"=" + id).
_Cond = tuple[bytes, ...]
# Driver order: the first field present drives the scan.
_ORDER = (K.F_MESSAGE_ID, K.F_RECIPIENT, K.F_SENDER, K.F_WORD, K.F_CONFIGURATION_SET,
          K.F_IDENTITY, K.F_TENANT, K.F_STATUS)


def _conditions(q: MessageQuery) -> list[tuple[bytes, _Cond]] | None:
    """(driver-order field, alternatives) per condition; None when a condition can
    match nothing (a subject without a searchable word)."""
    out: list[tuple[bytes, _Cond]] = []
    if q.message_id.strip():
        mid = q.message_id.strip()
        alts = [K.index_prefix(K.F_MESSAGE_ID, mid.strip("<>"))]
        if K.is_queue_id(mid):
            alts.append(b"=" + mid.encode("ascii"))
        out.append((K.F_MESSAGE_ID, tuple(alts)))
    if q.recipient.strip():
        out.append((K.F_RECIPIENT, (K.index_prefix(K.F_RECIPIENT, K.address_of(q.recipient)),)))
    if q.sender.strip():
        addr = K.address_of(q.sender)
        out.append((K.F_SENDER, (K.index_prefix(K.F_SENDER, addr),
                                 K.index_prefix(K.F_FROM, addr))))
    if q.subject.strip():
        ws = K.words(q.subject)
        if not ws:
            return None
        # the longest word first: the likeliest to be rare
        for w in sorted(ws, key=len, reverse=True):
            out.append((K.F_WORD, (K.index_prefix(K.F_WORD, w),)))
    for field, value in ((K.F_CONFIGURATION_SET, q.configuration_set),
                         (K.F_IDENTITY, q.identity), (K.F_TENANT, q.tenant),
                         (K.F_STATUS, q.status)):
        if value.strip():
            out.append((field, (K.index_prefix(field, value),)))
    return out


def _plan(conds: list[tuple[bytes, _Cond]]) -> tuple[_Cond | None, list[_Cond]]:
    if not conds:
        return None, []
    ranked = sorted(conds, key=lambda c: _ORDER.index(c[0]))
    return ranked[0][1], [c[1] for c in ranked[1:]]


def _probe(txn: Any, ix_db: Any, alts: _Cond, qid: bytes) -> bool:
    for p in alts:
        if p[:1] == b"=":
            if p[1:] == qid:
                return True
        elif txn.get(p + qid, db=ix_db) is not None:
            return True
    return False


def _reverse(txn: Any, db: Any, prefix: bytes, low: bytes, high: bytes) -> Iterator[bytes]:
    """Keys `prefix + x` with low <= x < high, last first."""
    with txn.cursor(db=db) as cur:
        start = prefix + high
        ok = cur.prev() if cur.set_range(start) else cur.last()
        lowest = prefix + low
        while ok:
            k = bytes(cur.key())
            if k < lowest or not k.startswith(prefix):
                return
            if k < start:
                yield k
            ok = cur.prev()


def _merged(txn: Any, ix_db: Any, alts: _Cond, low: bytes, high: bytes) -> Iterator[bytes]:
    """The queue ids under any of the alternatives, newest first, each once."""
    streams: list[Iterator[bytes]] = []
    for p in alts:
        if p[:1] == b"=":
            qid = p[1:]
            streams.append(iter([qid] if low <= qid < high else []))
        else:
            streams.append(k[len(p):] for k in _reverse(txn, ix_db, p, low, high))
    last = None
    for qid in heapq.merge(*streams, reverse=True):
        if qid != last:
            last = qid
            yield qid


def _with_events(timeline: list[TimelineEntry]) -> list[TimelineEntry]:
    """Entries stored without their event's JSON (not the first of their event's group)
    get the JSON of the group's first entry."""
    out: list[TimelineEntry] = []
    shared: dict[tuple[float, str], bytes] = {}
    for e in timeline:
        if e.event_type and e.event:
            shared[(e.ts, e.event_type)] = e.event
        elif e.event_type and not e.event and (e.ts, e.event_type) in shared:
            e = msgspec.structs.replace(e, event=shared[(e.ts, e.event_type)])
        out.append(e)
    return out
