"""/api/queue: list, show, retry, bounce and delete queued messages, one by one or every
recipient waiting for one destination domain (`?domain=`).

Actions go through the store's group committer like the scheduler's own writes; a bounce
publishes its Bounce event. A per-destination action finds its messages in a thread and
changes them in ops of DOMAIN_CHUNK messages, so no one transaction grows with the queue.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from msgspec import UnsetType

from relay.admin.api.common import _error, _json, _query
from relay.admin.api.context import _ctx
from relay.admin.params import BadInput, DomainQuery, QueueQuery, domain_name
from relay.admin.queueactions import (
    DOMAIN_CHUNK,
    OPERATOR_BOUNCE,
    OPERATOR_DELETE,
    bounce_events,
)
from relay.events.model import bounce_event, iso
from relay.queue.records import Action, MessageRecord, RecipientRecord


def _message_row(msg: MessageRecord, rcpts: list[RecipientRecord]) -> dict[str, Any]:
    return {
        "id": msg.id, "received_at": iso(msg.received_at), "sender": msg.sender,
        "size": msg.size, "subject": msg.headers.get("Subject", ""),
        "auth_user": msg.auth_user, "client_ip": msg.client_ip,
        "recipients": [
            {"address": r.address, "domain": r.domain, "state": r.state.value,
             "attempts": r.attempts,
             "next_attempt_at": iso(r.next_attempt_at) if not r.state.final else None,
             "last_attempt_at": iso(r.last_attempt_at) if r.last_attempt_at else None,
             "last_response": r.last_response, "remote_mta": r.remote_mta}
            for r in rcpts],
    }


async def queue_list(request: web.Request) -> web.Response:
    query = _query(request, QueueQuery)
    ctx = _ctx(request)
    state = None if isinstance(query.state, UnsetType) else query.state
    limit = query.limit
    # Normalised before it is checked (" Example.COM" is a domain), so checked here.
    domain = query.domain.strip().lower() or None
    if domain is not None and ("@" in domain or " " in domain or "." not in domain):
        raise BadInput("domain", f"domain: expected a domain name like example.com, "
                                 f"got {domain!r}")
    rows: list[dict[str, Any]] = []
    total = 0
    for msg, rcpts in ctx.store.messages():
        if domain and not any(r.domain == domain for r in rcpts):
            continue
        if state and not any(r.state.value == state for r in rcpts):
            continue
        total += 1
        if len(rows) < limit:
            rows.append(_message_row(msg, rcpts))
    return _json({"messages": rows, "count": len(rows), "matched": total})


def _message_id(request: web.Request) -> str:
    mid = request.match_info["id"]
    if len(mid) != 20 or not all(c in "0123456789abcdef" for c in mid):
        raise BadInput("id", f"id: expected a 20-character queue id, got {mid!r}")
    return mid


async def queue_show(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    mid = _message_id(request)
    msg = ctx.store.message(mid)
    if msg is None:
        return _error(404, f"no queued message with id {mid!r}", "id")
    return _json(_message_row(msg, ctx.store.recipients(mid)))


async def _queue_action(request: web.Request, what: str) -> web.Response:
    ctx = _ctx(request)
    mid = _message_id(request)
    store = ctx.store
    now = ctx.clock.now()
    try:
        if what == "delete":
            await store.write(store.delete_op(mid))
            return _json({"id": mid, "deleted": True})
        if what == "retry":
            settled = await store.write(store.operator_op(mid, Action.RETRY, now))
            ctx.wake_scheduler()
            return _json({"id": mid, "retried": len(settled)})
        settled = await store.write(store.operator_op(
            mid, Action.BOUNCE, now, OPERATOR_BOUNCE))
    except KeyError:
        return _error(404, f"no queued message with id {mid!r}", "id")
    if settled:
        ctx.events.emit([bounce_event(
            settled[0].message, [s.recipient.address for s in settled],
            settled[0].recipient.last_response, now, ctx.config().server.hostname)])
    return _json({"id": mid, "bounced": len(settled)})


async def queue_retry(request: web.Request) -> web.Response:
    return await _queue_action(request, "retry")


async def queue_delete(request: web.Request) -> web.Response:
    return await _queue_action(request, "delete")


async def queue_bounce(request: web.Request) -> web.Response:
    return await _queue_action(request, "bounce")


async def _domain_action(request: web.Request, what: str) -> web.Response:
    ctx = _ctx(request)
    domain = domain_name("domain", _query(request, DomainQuery).domain)
    store = ctx.store
    mids = await asyncio.to_thread(store.pending_at, domain)
    messages: set[str] = set()
    recipients = 0
    for i in range(0, len(mids), DOMAIN_CHUNK):
        chunk, now = mids[i:i + DOMAIN_CHUNK], ctx.clock.now()
        if what == "delete":
            settled = await store.write(store.drop_domain_op(chunk, domain, now,
                                                             OPERATOR_DELETE))
        elif what == "retry":
            settled = await store.write(store.domain_op(chunk, domain, Action.RETRY, now))
        else:
            settled = await store.write(store.domain_op(chunk, domain, Action.BOUNCE, now,
                                                        OPERATOR_BOUNCE))
            if settled:
                ctx.events.emit(bounce_events(settled, now, ctx.config().server.hostname))
        messages.update(s.message.id for s in settled)
        recipients += len(settled)
    if what == "retry" and recipients:
        ctx.wake_scheduler()
    return _json({"domain": domain, "messages": len(messages), "recipients": recipients})


async def queue_domain_retry(request: web.Request) -> web.Response:
    """POST /api/queue/retry?domain=D: attempt now every waiting recipient at D."""
    return await _domain_action(request, "retry")


async def queue_domain_bounce(request: web.Request) -> web.Response:
    """POST /api/queue/bounce?domain=D: fail them, with Bounce events."""
    return await _domain_action(request, "bounce")


async def queue_domain_delete(request: web.Request) -> web.Response:
    """DELETE /api/queue?domain=D: remove them without a bounce."""
    return await _domain_action(request, "delete")
