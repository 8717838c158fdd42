"""Open and click tracking's public routes: GET /t/o/{token} (the pixel) and GET /t/c/{token}
(the redirect). Public: the signed token is the credential (relay/tracking/token.py).

Hostile input is the normal case here: the token is checked for length and characters,
then its MAC (one HMAC, constant-time compare), before anything is looked up; a forged,
altered or unknown token (a message or copy relay does not remember) answers 404 and
publishes nothing. The lookups are a few LMDB gets of bounded size on the loop (no thread
hand-off a flood could queue up without bound); the redirect target is the link the
token's index names in the message's stored link list (relay/tracking/links.py), so
only links that were in the message are ever redirected to.

A genuine GET publishes an SES Open or Click event to the message's destinations (the
event log, hence the history and statistics), with the verdict of relay/tracking/
automated.py (`automated`, `automatedReason`); the same token again from the same
address and user agent within REPEAT_WINDOW seconds is answered but not published twice.
A hit a person made also marks the recipient engaged (relay/tracking/engagement.py, the
warm-up's engaged lane). HEAD gets
the same status and headers but publishes nothing: a HEAD is a link checker's or a
prefetcher's probe, never a reader loading an image or following a link.

The hit's address is the peer's, or, when the peer is one of admin.trusted_proxies, the
rightmost X-Forwarded-For address that is not a trusted proxy (what that proxy saw).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Literal
from urllib.parse import quote

from aiohttp import web

from relay.admin.api.context import AdminContext, _ctx
from relay.events.model import click_event, open_event
from relay.queue.records import MessageRecord
from relay.tracking.automated import BUILTIN_RULES, MAX_USER_AGENT, Hit, classify
from relay.tracking.engagement import Engagement
from relay.tracking.links import TrackedLinks
from relay.tracking.token import KEY_LABEL, TOKEN_LEN, Tokens

# The smallest transparent GIF: 1x1, one transparent colour.
PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00"
         b"\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate, private, max-age=0",
            "Pragma": "no-cache", "Expires": "0"}
MAX_FORWARDED = 2048      # characters of X-Forwarded-For read (its right end)
MAX_HOPS = 20             # addresses of X-Forwarded-For looked at
RECENT_MAX = 10_000       # recipients whose recent clicks are remembered
CLICKS_KEPT = 64          # clicks remembered per recipient
# The same token from the same address and user agent again within this many seconds
# (a client loading the pixel twice, a replayed request) is answered but not published
# again: one event per hit a reader made, and a replay loop cannot flood the event log.
REPEAT_WINDOW = 10.0
# Message records read for hits, kept this many seconds (a campaign's message with many
# recipients is decoded once, not once per hit), at most RECORDS_MAX of them.
RECORD_TTL = 60.0
RECORDS_MAX = 256

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrackingState:
    """What the routes keep between hits: the token verifier, the trusted proxies (parsed
    once per configuration) and each recipient's recent clicks (for the "clicked every
    link at once" rule), bounded."""

    def __init__(self, ctx: AdminContext) -> None:
        self.tokens = Tokens(ctx.verp.derived_key(KEY_LABEL)) if ctx.verp is not None \
            else None
        self.links = ctx.tracked_links or TrackedLinks(ctx.store)
        self.engagement = ctx.engagement or Engagement(
            ctx.store, lambda: float(ctx.config().warmup.engaged_window), ctx.clock.now)
        self._proxies_of: tuple[object, tuple[_Net, ...]] = (None, ())
        self.recent: OrderedDict[tuple[str, int], list[tuple[int, float]]] = OrderedDict()
        self.last_hits: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self.records: OrderedDict[str, tuple[float, MessageRecord | None]] = OrderedDict()
        self.store = ctx.store

    def message(self, mid: str, now: float) -> MessageRecord | None:
        """The message's record, sent or still queued (cached for RECORD_TTL)."""
        cached = self.records.get(mid)
        if cached is not None and 0 <= now - cached[0] <= RECORD_TTL:
            return cached[1]
        msg = self.store.sent_message(mid) or self.store.message(mid)
        self.records[mid] = (now, msg)
        self.records.move_to_end(mid)
        while len(self.records) > RECORDS_MAX:
            self.records.popitem(last=False)
        return msg

    def proxies(self, ctx: AdminContext) -> tuple[_Net, ...]:
        cfg = ctx.config()
        if self._proxies_of[0] is not cfg:
            nets = tuple(ipaddress.ip_network(n, strict=False)
                         for n in cfg.admin.trusted_proxies)
            self._proxies_of = (cfg, nets)
        return self._proxies_of[1]

    def repeated(self, token: str, ip: str, agent: str, at: float) -> bool:
        """Whether this hit repeats one published within REPEAT_WINDOW (and note it)."""
        key = (token, ip, agent)
        before = self.last_hits.pop(key, None)
        self.last_hits[key] = at if before is None or at - before > REPEAT_WINDOW else before
        while len(self.last_hits) > RECENT_MAX:
            self.last_hits.popitem(last=False)
        return before is not None and 0 <= at - before <= REPEAT_WINDOW

    def clicks(self, key: tuple[str, int], link: int, at: float) -> list[tuple[int, float]]:
        """The recipient's recent clicks, this one included."""
        seen = self.recent.pop(key, [])
        seen.append((link, at))
        seen = seen[-CLICKS_KEPT:]
        self.recent[key] = seen
        while len(self.recent) > RECENT_MAX:
            self.recent.popitem(last=False)
        return seen


# Set by make_app (routes.py) when the application is built.
TRACKING_STATE: web.AppKey[TrackingState] = web.AppKey("relay_tracking", TrackingState)


def _state(request: web.Request) -> TrackingState:
    return request.app[TRACKING_STATE]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]")[:64])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_ip(peer: str, forwarded: str, proxies: tuple[_Net, ...]) -> str:
    """The hit's client address: `peer`, unless it is a trusted proxy; then the rightmost
    X-Forwarded-For address that is not one (the leftmost when all are)."""
    addr = _address(peer)
    if addr is None or not proxies or not any(addr in n for n in proxies):
        return str(addr) if addr is not None else peer
    hops = [h for h in forwarded[-MAX_FORWARDED:].split(",")[-MAX_HOPS:] if h.strip()]
    last = addr
    for hop in reversed(hops):
        found = _address(hop)
        if found is None:
            break  # garbage: trust nothing to the left of it
        last = found
        if not any(found in n for n in proxies):
            break
    return str(last)


def location(url: str) -> str:
    """`url` as a Location header: printable ASCII as it is, anything else (spaces,
    controls, non-ASCII of an IRI) percent-encoded, so no header can be injected."""
    if all("!" <= c <= "~" for c in url):
        return url
    return "".join(c if "!" <= c <= "~" else quote(c, safe="") for c in url)


def _not_found() -> web.Response:
    return web.Response(status=404, text="not found\n", headers=NO_CACHE)


def _hit(request: web.Request, kind: Literal["open", "click"]) -> web.Response:
    """The answer to one hit; publishes its event when it is a genuine GET."""
    token = request.match_info.get("token", "")
    if len(token) != TOKEN_LEN:  # before any work
        return _not_found()
    ctx = _ctx(request)
    state = _state(request)
    found = state.tokens.verify(token, kind) if state.tokens is not None else None
    if found is None:
        return _not_found()
    tracked = state.links.lookup(found.queue_id, found.recipient)
    if tracked is None:
        return _not_found()
    links, copied_at = tracked
    link = None
    if kind == "click":
        if found.link >= len(links):
            return _not_found()
        link = links[found.link]
    now = ctx.clock.now()
    msg = state.message(found.queue_id, now)
    if msg is not None and not 0 <= found.recipient < len(msg.recipients):
        return _not_found()
    if link is not None:
        answer = web.Response(status=302, headers={**NO_CACHE, "Location": location(link.url),
                                                   "Referrer-Policy": "no-referrer"})
    else:
        answer = web.Response(body=PIXEL, content_type="image/gif", headers=NO_CACHE)
    if request.method != "GET" or msg is None:
        # A HEAD publishes nothing; nor does a hit after the message record is forgotten
        # ([suppression] feedback_window): its link keeps working for
        # [admin] tracked_link_retention, but no event can be made without the message.
        return answer
    ip = client_ip(request.remote or "", request.headers.get("X-Forwarded-For", ""),
                   state.proxies(ctx))
    agent = request.headers.get("User-Agent", "")[:MAX_USER_AGENT]
    address = msg.recipients[found.recipient]
    if state.repeated(token, ip, agent, now):
        return answer
    if link is not None:
        clicks = state.clicks((found.queue_id, found.recipient), found.link, now)
        verdict = classify(Hit("click", ip, agent, now, copied_at, clicks, len(links)),
                           BUILTIN_RULES)
        event = click_event(msg, address, now, ip=ip, user_agent=agent, link=link.url,
                            tags=link.tags, automated=verdict.automated,
                            reason=verdict.reason)
    else:
        verdict = classify(Hit("open", ip, agent, now, copied_at), BUILTIN_RULES)
        event = open_event(msg, address, now, ip=ip, user_agent=agent,
                           automated=verdict.automated, reason=verdict.reason)
    ctx.events.emit([event])
    if not verdict.automated:
        state.engagement.engaged(address, now)
    return answer


async def open_pixel(request: web.Request) -> web.Response:
    """GET|HEAD /t/o/{token}: a 1x1 transparent GIF, never cached."""
    return _hit(request, "open")


async def click_redirect(request: web.Request) -> web.Response:
    """GET|HEAD /t/c/{token}: 302 to the link the token names."""
    return _hit(request, "click")
