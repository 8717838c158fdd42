"""The spool side of `relay queue transfer`: claim a message's pending recipients, then either
remove the message (the peer answered 250) or give them back as they were.

A claim marks every waiting recipient (queued or deferred, whatever its due time) in
flight, in one transaction, so the running relay's scheduler, which leases only queued
and deferred recipients, cannot deliver them meanwhile. A message with a recipient
already in flight (a delivery under way) is not claimed: it is skipped, and the next run
picks it up if it is still queued. If the transferring process dies after a claim, its
recipients stay in flight until the relay's next start, whose recovery makes them
deferred again (delivered locally then, or transferred by another run; at least once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.queue.keys import msg_dec
from relay.queue.ops import Db, Result, apply, delete_message, move, recipients_in
from relay.queue.records import FINAL_STATES, Action, MessageRecord, RecipientRecord, State

CLAIM_SECONDS = 3600.0  # the claim's due time; only a restart's recovery reads it


@dataclass(frozen=True)
class Claim:
    message: MessageRecord
    # (index, the record as it was before the claim), for give_back_op.
    recipients: list[tuple[int, RecipientRecord]]

    @property
    def addresses(self) -> list[str]:
        return [r.address for _, r in self.recipients]


def claim_op(db: Db, mid: str, now: float) -> Callable[[Any], Claim | str]:
    """Claim the waiting recipients of `mid`: a Claim, or why not ("gone", "in flight",
    "nothing pending")."""
    def op(txn: Any) -> Claim | str:
        raw = txn.get(mid.encode("ascii"), db=db["messages"])
        if raw is None:
            return "gone"
        rcpts = recipients_in(txn, db, mid)
        if any(r.state is State.INFLIGHT for _, r in rcpts):
            return "in flight"
        waiting = [(i, r) for i, r in rcpts if r.state not in FINAL_STATES]
        if not waiting:
            return "nothing pending"
        lease = Result(mid, 0, Action.LEASE, next_attempt_at=now + CLAIM_SECONDS)
        for idx, rr in waiting:
            move(txn, db, mid, idx, rr, apply(rr, lease, now))
        return Claim(msg_dec.decode(raw), waiting)
    return op


def finish_op(db: Db, claim: Claim) -> Callable[[Any], bool]:
    """The peer took the message: remove it (its other recipients are all final).
    False if it is gone already."""
    mid = claim.message.id

    def op(txn: Any) -> bool:
        if txn.get(mid.encode("ascii"), db=db["messages"]) is None:
            return False
        delete_message(txn, db, mid, recipients_in(txn, db, mid))
        return True
    return op


def give_back_op(db: Db, claim: Claim, now: float) -> Callable[[Any], int]:
    """The transfer failed: the claimed recipients back to the state and due time they
    had (only those still in flight under this claim). Returns how many."""
    mid = claim.message.id

    def op(txn: Any) -> int:
        current = dict(recipients_in(txn, db, mid))
        n = 0
        for idx, before in claim.recipients:
            now_rec = current.get(idx)
            if now_rec is None or now_rec.state is not State.INFLIGHT:
                continue
            restored = RecipientRecord(
                before.address, before.domain, before.state, before.attempts,
                before.next_attempt_at, before.last_attempt_at, before.last_response,
                before.remote_mta, now)
            move(txn, db, mid, idx, now_rec, restored)
            n += 1
        return n
    return op


def claim_many_op(db: Db, mids: list[str], now: float) -> Callable[[Any], list[Claim | str]]:
    """claim_op for each of `mids`, in one transaction."""
    ops = [claim_op(db, mid, now) for mid in mids]

    def op(txn: Any) -> list[Claim | str]:
        return [claim(txn) for claim in ops]
    return op


def settle_claims_op(db: Db, taken: list[Claim], back: list[Claim],
                     now: float) -> Callable[[Any], None]:
    """In one transaction: remove the messages the peer took (finish_op), give the others
    back (give_back_op)."""
    def op(txn: Any) -> None:
        for claim in taken:
            finish_op(db, claim)(txn)
        for claim in back:
            give_back_op(db, claim, now)(txn)
    return op
