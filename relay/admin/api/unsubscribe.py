"""RFC 8058 one-click unsubscribe at /unsubscribe/{token}: public, the HMAC token is the credential.

GET answers a small page; only POST unsubscribes (once per token: the mark is on disk).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from relay.admin.api.context import _ctx
from relay.events.model import subscription_event
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore
from relay.suppression.policy import normalize
from relay.suppression.store import Entry, SuppressionList

_UNSUBSCRIBED_PAGE = (b"<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
                      b"<p>To unsubscribe, use your mail program's unsubscribe button "
                      b"(RFC 8058 one-click).</p>\n")


def _unsubscribe_target(request: web.Request) -> tuple[MessageRecord, int] | None:
    """The sent message and recipient index a genuine List-Unsubscribe token names."""
    ctx = _ctx(request)
    found = ctx.verp.decode(request.match_info["token"]) if ctx.verp is not None else None
    if found is None:
        return None
    mid, index = found
    msg = ctx.store.sent_message(mid) or ctx.store.message(mid)
    if msg is None or not 0 <= index < len(msg.recipients):
        return None
    return msg, index


def _unsubscribed_key(mid: str, index: int) -> bytes:
    # Beside the message's record in the "sent" sub-database: the id's leading 12 hex
    # digits (its time) are kept, so prune_sent_op forgets the mark with the record,
    # when the token stops being honoured anyway; "~" sorts after every message id.
    return f"{mid}~unsubscribed/{index}".encode("ascii")


def _first_unsubscribe_op(store: QueueStore, mid: str, index: int,
                          now: float) -> Callable[[Any], bool]:
    """Mark (message, recipient) unsubscribed; True only the first time. Check and mark
    run in one write transaction (the store's single writer), so two POSTs at once
    cannot both be first, and the mark is on disk: a restart does not forget it."""
    db, key = store.named_db("sent"), _unsubscribed_key(mid, index)

    def op(txn: Any) -> bool:
        return bool(txn.put(key, msgspec.json.encode(now), db=db, overwrite=False))
    return op


async def unsubscribe_page(request: web.Request) -> web.Response:
    """GET: a tiny page; only the RFC 8058 POST unsubscribes (link scanners GET URLs)."""
    if await asyncio.to_thread(_unsubscribe_target, request) is None:
        return web.Response(status=404, text="not found")
    return web.Response(body=_UNSUBSCRIBED_PAGE, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def unsubscribe(request: web.Request) -> web.Response:
    """RFC 8058 one-click (public, no bearer token; the HMAC token is the credential):
    publishes a Subscription event; suppresses the address too only when the message's
    configuration set has unsubscribe_suppresses = true."""
    ctx = _ctx(request)
    target = await asyncio.to_thread(_unsubscribe_target, request)
    if target is None:
        return web.Response(status=404, text="not found")
    form = await request.post()
    if form.get("List-Unsubscribe") != "One-Click":
        return web.Response(status=400, text="expected List-Unsubscribe=One-Click")
    msg, index = target
    address = msg.recipients[index]
    now = ctx.clock.now()
    # Idempotent (RFC 8058 clients and link checkers may POST again): the Subscription
    # event, and the suppression, happen for the first POST of a token only.
    if not await ctx.store.write(_first_unsubscribe_op(ctx.store, msg.id, index, now)):
        return web.Response(text="unsubscribed\n")
    ctx.events.emit([subscription_event(msg, address, now)])
    cs = ctx.config().configuration_set_named(msg.configuration_set) \
        if msg.configuration_set else None
    if cs is not None and cs.unsubscribe_suppresses:
        entry = Entry(normalize(address), "COMPLAINT", now, msg.id,
                      "one-click unsubscribe (List-Unsubscribe-Post)")
        await ctx.store.write(SuppressionList(ctx.store).add_op([entry], replace=False))
        if ctx.cluster is not None:  # [cluster]: to every node's copy
            ctx.cluster.suppression.added("", [entry])
    return web.Response(text="unsubscribed\n")
