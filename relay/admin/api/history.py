"""/api/messages: search the message history, and one message with its timeline.

GET /api/messages pages newest first by cursor (`next_cursor`; "" = no more); every
condition must hold. GET /api/messages/{id} takes a queue id or a Message-ID header
value and answers the row, the timeline (attempts with their SMTP details, each event
with its SES JSON) and SES GetMessageInsights' fields. Both read LMDB in a thread: a
search may scan many index keys, never on the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from msgspec import UnsetType

from relay.admin.api.common import _error, _json, _query
from relay.admin.api.context import _ctx
from relay.admin.historyview import message_detail, message_row
from relay.admin.params import BadInput, MessagesQuery, instant
from relay.history.model import MessageQuery

MAX_ID = 200   # a Message-ID header value longer than this is none relay indexed


def message_query(p: MessagesQuery) -> MessageQuery:
    """The store's query from the API's parameters (since/until read as instants)."""
    since, until = instant("since", p.since), instant("until", p.until)
    if since is not None and until is not None and until < since:
        raise BadInput("until", f"until: expected a time after since, got {p.until!r}")
    return MessageQuery(
        recipient=p.recipient.strip(), sender=p.sender.strip(), subject=p.subject.strip(),
        message_id=p.message_id.strip().strip("<>"), tenant=p.tenant.strip(),
        configuration_set=p.configuration_set.strip(), identity=p.identity.strip(),
        status="" if isinstance(p.status, UnsetType) else p.status,
        since=since, until=until, limit=p.limit, cursor=p.cursor.strip())


async def messages_search(request: web.Request) -> web.Response:
    q = message_query(_query(request, MessagesQuery))
    history = _ctx(request).history_store()
    page = await asyncio.to_thread(history.search, q)
    return _json({"messages": [message_row(m) for m in page.messages],
                  "count": len(page.messages), "next_cursor": page.next_cursor,
                  "scanned": page.scanned})


async def message_show(request: web.Request) -> web.Response:
    ident = request.match_info["id"].strip()
    if not ident or len(ident) > MAX_ID:
        raise BadInput("id", f"id: expected a queue id or a Message-ID, got {ident[:80]!r}")
    history = _ctx(request).history_store()

    def read() -> dict[str, Any] | None:
        view = history.get(ident)
        if view is None:
            return None
        return message_detail(view.message, view.timeline, view.by_recipient())

    detail = await asyncio.to_thread(read)
    if detail is None:
        return _error(404, f"no message with id {ident!r} in the history", "id")
    return _json(detail)
