"""Queue state changes: the ops that submit, lease, settle, recover and operate on
messages, each a function of one write transaction run by the group committer
(relay/queue/committer.py), around the pure `apply()`.

Rule 1 (one change): every change of a recipient record (lease, delivery result,
recovery, operator action) is `apply(record, result, now)`, a pure function over
records.transition(); the ops read the record, apply, and write it back with `move()`.

Rule 2 (durable, visible schedule): each recipient not yet final has exactly one key in
a schedule index, `due_new` (never attempted) or `due_retry` (attempted, or leased),
keyed by due time; `move()` keeps it in step with the record. A leased (in-flight)
recipient stays in `due_retry` at its lease expiry, so a lease that is never settled
comes back by itself; `recover_op()` at start makes every in-flight recipient due at
once, found through the `inflight` index (one key per INFLIGHT recipient, kept in step
by `move()`), so start-up does not read the queue.

Rule 3: a message whose recipients are all final is removed (record, body, recipients
and its DKIM signatures); its history lives in the event log, and its "sent" record
(kept for late feedback) is pruned by relay/delivery/sentfrom.py.

`db` below is the store's sub-database handles by name (QueueStore.DBS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from relay.queue.keys import (
    ID_LEN,
    IDX,
    DueItem,
    due_key,
    enc,
    msg_dec,
    parse_rcpt_key,
    rcpt_dec,
    rcpt_key,
    shard_of,
)
from relay.queue.records import (
    FINAL_STATES,
    TRANSITIONS,
    Action,
    MessageRecord,
    RecipientRecord,
    State,
    recipient_domain,
    transition,
)

Db = Mapping[str, Any]

# A key in "inflight" that says the index is complete (written by the first recovery,
# which scans the recipients once on a spool from before the index); sorts after every
# queue id (hex digits).
INFLIGHT_COMPLETE = b"~complete"

# Results that count as a delivery attempt when they settle an in-flight recipient.
_ATTEMPTS = frozenset({Action.DELIVER, Action.DEFER, Action.BOUNCE, Action.EXPIRE})


class NewMessage(msgspec.Struct):
    sender: str
    recipients: list[str]
    body: bytes
    client_ip: str = ""
    helo: str = ""
    auth_user: str = ""
    headers: dict[str, str] = {}
    tags: dict[str, list[str]] = {}
    configuration_set: str = ""
    # The header fields of `body` as relay.events.headers.read_fields reads them, when
    # already read (at DATA); None: read from `body`. Whoever changes body's header
    # section changes this too.
    header_fields: list[tuple[str, str]] | None = None
    # The sending tenant ("" = the default tenant).
    tenant: str = ""
    # The X-SES-TRACKING override (relay/configsets.py requested_tracking).
    tracking: str = ""


@dataclass(frozen=True)
class Leased:
    message: MessageRecord
    index: int
    recipient: RecipientRecord


@dataclass(frozen=True)
class Result:
    """A settled delivery attempt (or operator action) for one recipient."""

    message_id: str
    index: int
    action: Action
    response: str = ""
    remote_mta: str = ""
    next_attempt_at: float = 0.0   # for DEFER/RECOVER/RETRY/RELEASE


@dataclass
class Settled:
    """What a Result did, for events: the record after the change."""

    message: MessageRecord
    index: int
    recipient: RecipientRecord
    message_done: bool = False


def apply(record: RecipientRecord, result: Result, now: float) -> RecipientRecord:
    """The recipient record after `result` at `now` (pure). The state follows
    records.TRANSITIONS (IllegalTransition for a change not in it); an attempt (a
    delivery result for an in-flight recipient) is counted and timed; a state that is
    not final takes the result's next attempt time; a result's response and remote MTA
    replace the last ones when given."""
    state = transition(record.state, result.action)
    attempted = result.action in _ATTEMPTS and record.state is State.INFLIGHT
    return msgspec.structs.replace(
        record, state=state,
        attempts=record.attempts + (1 if attempted else 0),
        next_attempt_at=(result.next_attempt_at if state not in FINAL_STATES
                         else record.next_attempt_at),
        last_attempt_at=now if attempted else record.last_attempt_at,
        last_response=result.response or record.last_response,
        remote_mta=result.remote_mta or record.remote_mta,
        updated_at=now)


# ---------------------------------------------------------------------- records in a txn

def put_message(txn: Any, db: Db, record: MessageRecord, body: bytes) -> None:
    """Write a new message: its record, body, "sent" copy and recipients, all due now."""
    mid = record.id
    key = mid.encode("ascii")
    raw = enc.encode(record)
    txn.put(key, raw, db=db["messages"])
    txn.put(key, body, db=db["bodies"])
    txn.put(key, raw, db=db["sent"])  # for late feedback
    for idx, addr in enumerate(record.recipients):
        rr = RecipientRecord(address=addr, domain=recipient_domain(addr),
                             state=State.QUEUED, next_attempt_at=record.received_at,
                             updated_at=record.received_at)
        txn.put(rcpt_key(mid, idx), enc.encode(rr), db=db["recipients"])
        txn.put(due_key(rr.next_attempt_at, mid, idx), b"", db=db["due_new"])


def move(txn: Any, db: Db, mid: str, idx: int, old: RecipientRecord,
         new: RecipientRecord) -> None:
    """Rewrite a recipient record and keep its single schedule-index key in step."""
    old_db = "due_new" if old.state is State.QUEUED else "due_retry"
    if old.state not in FINAL_STATES:
        txn.delete(due_key(old.next_attempt_at, mid, idx), db=db[old_db])
    if new.state not in FINAL_STATES:
        new_db = "due_new" if new.state is State.QUEUED else "due_retry"
        txn.put(due_key(new.next_attempt_at, mid, idx), b"", db=db[new_db])
    key = rcpt_key(mid, idx)
    if old.state is State.INFLIGHT and new.state is not State.INFLIGHT:
        txn.delete(key, db=db["inflight"])
    elif new.state is State.INFLIGHT and old.state is not State.INFLIGHT:
        txn.put(key, new.domain.encode("utf-8", "surrogateescape"), db=db["inflight"])
    txn.put(key, enc.encode(new), db=db["recipients"])


def recipients_in(txn: Any, db: Db, mid: str) -> list[tuple[int, RecipientRecord]]:
    """A message's recipients with their indexes, in one transaction (read or write)."""
    prefix = mid.encode("ascii")
    out: list[tuple[int, RecipientRecord]] = []
    with txn.cursor(db=db["recipients"]) as cur:
        if not cur.set_range(prefix):
            return out
        for key, val in cur.iternext():
            if not key.startswith(prefix) or len(key) != ID_LEN + 2:
                break
            (idx,) = IDX.unpack_from(key, ID_LEN)
            out.append((idx, rcpt_dec.decode(val)))
    return out


def remove_if_done(txn: Any, db: Db, mid: str, msg: MessageRecord | None = None,
                   settled_final: list[tuple[int, RecipientRecord]] | None = None) -> bool:
    """Delete the message if every recipient is final. `settled_final`: recipients
    this op just made final; when they are all of the message's (the usual
    one-recipient case) the recipient scan is skipped."""
    if (msg is not None and settled_final
            and {i for i, _ in settled_final} == set(range(len(msg.recipients)))):
        delete_message(txn, db, mid, settled_final)
        return True
    rcpts = recipients_in(txn, db, mid)
    if any(r.state not in FINAL_STATES for _, r in rcpts):
        return False
    delete_message(txn, db, mid, rcpts)
    return True


def delete_message(txn: Any, db: Db, mid: str,
                   rcpts: list[tuple[int, RecipientRecord]]) -> None:
    """Remove a message: its recipients and their index keys, record, body, and the
    DKIM signatures kept for it (keys that start with its id, relay/dkim/sigcache.py)."""
    for idx, r in rcpts:
        if r.state not in FINAL_STATES:
            due_db = "due_new" if r.state is State.QUEUED else "due_retry"
            txn.delete(due_key(r.next_attempt_at, mid, idx), db=db[due_db])
        if r.state is State.INFLIGHT:
            txn.delete(rcpt_key(mid, idx), db=db["inflight"])
        txn.delete(rcpt_key(mid, idx), db=db["recipients"])
    key = mid.encode("ascii")
    txn.delete(key, db=db["messages"])
    txn.delete(key, db=db["bodies"])
    with txn.cursor(db=db["dkim"]) as cur:
        found = cur.set_range(key)
        while found and bytes(cur.key()[:ID_LEN]) == key:
            found = cur.delete()


# ---------------------------------------------------------------------- ops

def submit_op(db: Db, record: MessageRecord, body: bytes,
              also: Callable[[Any, MessageRecord], object] | None = None,
              before: Callable[[Any], object] | None = None,
              ) -> Callable[[Any], MessageRecord]:
    """An op that queues a new message; `also(txn, record)` runs in the same transaction.
    `before(txn)` runs first and may raise to queue nothing (the committer gives an op's
    exception to its caller without rolling back what the op wrote, so a refusal must
    come before the first write)."""
    def op(txn: Any) -> MessageRecord:
        if before is not None:
            before(txn)
        put_message(txn, db, record, body)
        if also is not None:
            also(txn, record)
        return record
    return op


def lease_op(db: Db, items: list[DueItem], now: float,
             lease_seconds: float) -> Callable[[Any], list[Leased]]:
    """An op that marks due recipients in flight and returns what it leased.

    Items whose state changed since they were read (delivered, deleted, retried by
    the operator in another process) are skipped, so the in-memory queue never
    holds work the spool no longer has.
    """
    # One lease for every item (apply() reads only its action and due time): no Result
    # built per recipient on the delivery hot path.
    lease = Result("", 0, Action.LEASE, next_attempt_at=now + lease_seconds)
    now_ms = int(now * 1000)  # compared at the index's millisecond precision

    def op(txn: Any) -> list[Leased]:
        out: list[Leased] = []
        messages: dict[str, MessageRecord | None] = {}
        for item in items:
            raw = txn.get(rcpt_key(item.message_id, item.index), db=db["recipients"])
            if raw is None:
                continue
            rr = rcpt_dec.decode(raw)
            if (rr.state not in (State.QUEUED, State.DEFERRED)
                    or int(rr.next_attempt_at * 1000) > now_ms):
                continue
            if item.message_id not in messages:
                mraw = txn.get(item.message_id.encode("ascii"), db=db["messages"])
                messages[item.message_id] = msg_dec.decode(mraw) if mraw is not None else None
            msg = messages[item.message_id]
            if msg is None:
                continue
            new = apply(rr, lease, now)
            move(txn, db, item.message_id, item.index, rr, new)
            out.append(Leased(msg, item.index, new))
        return out
    return op


def settle_op(db: Db, results: list[Result], now: float) -> Callable[[Any], list[Settled]]:
    """An op applying delivery results; removes messages whose recipients are all final."""
    def op(txn: Any) -> list[Settled]:
        out: list[Settled] = []
        touched: dict[str, MessageRecord] = {}
        for res in results:
            raw = txn.get(rcpt_key(res.message_id, res.index), db=db["recipients"])
            mraw = txn.get(res.message_id.encode("ascii"), db=db["messages"])
            if raw is None or mraw is None:
                continue
            rr = rcpt_dec.decode(raw)
            if (rr.state, res.action) not in TRANSITIONS:
                continue  # settled elsewhere meanwhile (operator, recovery): skip
            new = apply(rr, res, now)
            move(txn, db, res.message_id, res.index, rr, new)
            msg = msg_dec.decode(mraw)
            touched[res.message_id] = msg
            out.append(Settled(msg, res.index, new))
        final: dict[str, list[tuple[int, RecipientRecord]]] = {}
        for s in out:
            if s.recipient.state in FINAL_STATES:
                final.setdefault(s.message.id, []).append((s.index, s.recipient))
        done = {mid for mid, msg in touched.items()
                if remove_if_done(txn, db, mid, msg, final.get(mid, []))}
        for s in out:
            s.message_done = s.message.id in done
        return out
    return op


def recover_op(db: Db, now: float,
               shard: tuple[int, int] | None = None) -> Callable[[Any], int]:
    """An op run once at start: every in-flight recipient becomes due now.

    A crash between a remote 250 and our commit of DELIVERED means one duplicate
    delivery; that is the price of never losing a message. With `shard` (i, N), only
    recipients of shard i: a restarted worker recovers what it had in flight while
    the other workers keep delivering theirs.

    Reads the "inflight" index: O(in flight), whatever the queue depth. On a spool
    from before the index (no INFLIGHT_COMPLETE key) it scans the recipients once,
    indexes the in-flight ones it leaves (other shards'), and marks the index complete.
    """
    def mine(key: bytes) -> bool:
        return shard is None or shard_of(key[:ID_LEN], shard[1]) == shard[0]

    def op(txn: Any) -> int:
        index = db["inflight"]
        moved: list[tuple[str, int, RecipientRecord]] = []
        if txn.get(INFLIGHT_COMPLETE, db=index) is None:
            with txn.cursor(db=db["recipients"]) as cur:
                for key, val in cur.iternext():
                    rr = rcpt_dec.decode(val)
                    if rr.state is not State.INFLIGHT:
                        continue
                    if mine(bytes(key)):
                        mid, idx = parse_rcpt_key(key)
                        moved.append((mid, idx, rr))
                    txn.put(bytes(key), rr.domain.encode("utf-8", "surrogateescape"),
                            db=index)
            txn.put(INFLIGHT_COMPLETE, b"", db=index)
        else:
            stale: list[bytes] = []
            with txn.cursor(db=index) as cur:
                for key in cur.iternext(keys=True, values=False):
                    if len(key) != ID_LEN + 2:
                        continue  # INFLIGHT_COMPLETE
                    if not mine(bytes(key)):
                        continue
                    raw = txn.get(key, db=db["recipients"])
                    held = rcpt_dec.decode(raw) if raw is not None else None
                    if held is None or held.state is not State.INFLIGHT:
                        stale.append(bytes(key))
                        continue
                    mid, idx = parse_rcpt_key(key)
                    moved.append((mid, idx, held))
            for key in stale:
                txn.delete(key, db=index)
        recovered = Result("", 0, Action.RECOVER, next_attempt_at=now)
        for mid, idx, rr in moved:
            new = apply(rr, recovered, now)
            move(txn, db, mid, idx, rr, new)
        return len(moved)
    return op


def operator_op(db: Db, mid: str, action: Action, now: float,
                response: str = "") -> Callable[[Any], list[Settled]]:
    """retry / bounce for every non-final, not in-flight recipient of a message."""
    def op(txn: Any) -> list[Settled]:
        return _operate(txn, db, mid, action, now, response, None)
    return op


def domain_op(db: Db, mids: list[str], domain: str, action: Action, now: float,
              response: str = "") -> Callable[[Any], list[Settled]]:
    """retry / bounce the non-final, not in-flight recipients at `domain` of each message
    of `mids` (one gone since it was listed is skipped): the per-destination actions."""
    def op(txn: Any) -> list[Settled]:
        out: list[Settled] = []
        for mid in mids:
            try:
                out.extend(_operate(txn, db, mid, action, now, response, domain))
            except KeyError:
                continue
        return out
    return op


def _operate(txn: Any, db: Db, mid: str, action: Action, now: float, response: str,
             domain: str | None) -> list[Settled]:
    mraw = txn.get(mid.encode("ascii"), db=db["messages"])
    if mraw is None:
        raise KeyError(mid)
    msg = msg_dec.decode(mraw)
    out: list[Settled] = []
    for idx, rr in recipients_in(txn, db, mid):
        if rr.state in FINAL_STATES or rr.state is State.INFLIGHT:
            continue
        if domain is not None and rr.domain != domain:
            continue
        # RETRY makes it due now; any other action keeps its due time.
        due = now if action is Action.RETRY else rr.next_attempt_at
        new = apply(rr, Result(mid, idx, action, response, next_attempt_at=due), now)
        move(txn, db, mid, idx, rr, new)
        out.append(Settled(msg, idx, new))
    if out or domain is None:
        done = remove_if_done(txn, db, mid)
        for s in out:
            s.message_done = done
    return out


def drop_domain_op(db: Db, mids: list[str], domain: str, now: float,
                   response: str) -> Callable[[Any], list[Settled]]:
    """Remove the waiting (not in-flight) recipients at `domain` of each of `mids`
    without a bounce: a message with nothing else left to deliver is deleted (as
    `delete_op` does); one that still has recipients elsewhere keeps them, and those at
    `domain` are settled as bounced with `response` (the caller publishes no event), so
    no other destination's mail is lost."""
    def op(txn: Any) -> list[Settled]:
        out: list[Settled] = []
        for mid in mids:
            mraw = txn.get(mid.encode("ascii"), db=db["messages"])
            if mraw is None:
                continue
            msg = msg_dec.decode(mraw)
            rcpts = recipients_in(txn, db, mid)
            targets = [(i, r) for i, r in rcpts if r.state not in FINAL_STATES
                       and r.state is not State.INFLIGHT and r.domain == domain]
            if not targets:
                continue
            chosen = {i for i, _ in targets}
            if all(r.state in FINAL_STATES or i in chosen for i, r in rcpts):
                delete_message(txn, db, mid, rcpts)
                out.extend(Settled(msg, i, r, message_done=True) for i, r in targets)
                continue
            for idx, rr in targets:
                new = apply(rr, Result(mid, idx, Action.BOUNCE, response), now)
                move(txn, db, mid, idx, rr, new)
                out.append(Settled(msg, idx, new))
        return out
    return op


def pending_at(txn: Any, db: Db, domain: str) -> list[str]:
    """The ids of the messages with a waiting or in-flight recipient at `domain`, oldest
    first (one pass over the recipient records)."""
    out: list[str] = []
    with txn.cursor(db=db["recipients"]) as cur:
        for key, val in cur.iternext():
            if len(key) != ID_LEN + 2:
                continue
            rr = rcpt_dec.decode(val)
            if rr.state in FINAL_STATES or rr.domain != domain:
                continue
            mid, _ = parse_rcpt_key(key)
            if not out or out[-1] != mid:
                out.append(mid)
    return out


def delete_op(db: Db, mid: str) -> Callable[[Any], MessageRecord]:
    """An op that removes a message whatever its recipients' states (KeyError if gone)."""
    def op(txn: Any) -> MessageRecord:
        mraw = txn.get(mid.encode("ascii"), db=db["messages"])
        if mraw is None:
            raise KeyError(mid)
        delete_message(txn, db, mid, recipients_in(txn, db, mid))
        return msg_dec.decode(mraw)
    return op
