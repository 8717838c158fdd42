"""PURE: the configuration set of a submitted message, and the headers removed before delivery.

`X-SES-CONFIGURATION-SET` (or `X-Relay-Configuration-Set`) picks a [[configuration_set]];
`X-SES-MESSAGE-TAGS` carries tags (parsed at submission by relay/smtp/message.py);
`X-SES-TENANT` names the message's tenant (relay/tenants/account.py); `X-SES-TRACKING`
turns the set's open and click tracking off for one message (SES's per-request
ConfigurationOverrides.Tracking, which has no SMTP header of its own): "none", or the
kinds kept, "open" or "click". All of them are removed from the stored message, so they
never reach the recipient, as with SES. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.config import Config
from relay.tracking.token import CLICK_PATH, OPEN_PATH

SET_HEADERS = ("x-ses-configuration-set", "x-relay-configuration-set")
TENANT_HEADER = "x-ses-tenant"
TRACKING_HEADER = "x-ses-tracking"
# `relay queue transfer` (relay/cli/transfer.py): "<queue id>@<node>" of the message on the
# node that handed it over; read only from an authenticated session, kept as the tag
# TRANSFERRED_TAG (in the Send event and the history), and removed like the others.
TRANSFER_HEADER = "x-relay-transfer-id"
TRANSFERRED_TAG = "relay:transferred-from"
_TRANSFER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}@[A-Za-z0-9._-]{1,253}")
STRIPPED = frozenset({*SET_HEADERS, "x-ses-message-tags", TENANT_HEADER, TRACKING_HEADER,
                      TRANSFER_HEADER})
_HEADER_LIMIT = 256 * 1024


def _split(body: bytes) -> tuple[bytes, bytes]:
    end = body.find(b"\r\n\r\n", 0, _HEADER_LIMIT)
    if end < 0:
        return body, b""
    return body[: end + 2], body[end + 2:]


def _fields(head: bytes) -> list[bytes]:
    """Header fields with their continuation lines, each ending in CRLF."""
    out: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if out and line[:1] in (b" ", b"\t"):
            out[-1] += line
        else:
            out.append(line)
    return out


def _name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def requested_tenant(body: bytes, known: list[tuple[str, str]] | None = None) -> str | None:
    """The X-SES-TENANT value, or None when the message has none."""
    return _header_value(body, known, (TENANT_HEADER,))


def requested_transfer_id(body: bytes, known: list[tuple[str, str]] | None = None
                          ) -> str | None:
    """The X-Relay-Transfer-Id value when it is one ("<queue id>@<node>"), else None."""
    value = _header_value(body, known, (TRANSFER_HEADER,))
    if value is None or _TRANSFER_ID.fullmatch(value) is None:
        return None
    return value


def _header_value(body: bytes, known: list[tuple[str, str]] | None,
                  names: tuple[str, ...]) -> str | None:
    if known is not None:
        for name, text in known:
            if name.lower() in names:
                return re.sub(r"\s+", " ", text).strip()
        return None
    head, _ = _split(body)
    for f in _fields(head):
        if _name(f) in names:
            value = f.split(b":", 1)[1] if b":" in f else b""
            return re.sub(r"\s+", " ", value.decode("utf-8", "replace")).strip()
    return None


def requested_set(body: bytes, known: list[tuple[str, str]] | None = None) -> str:
    """The configuration set named in the header ("" if none). `known`: the header fields
    of `body` as relay.events.headers.read_fields reads them (listed at DATA); then the
    body is not read again."""
    return _header_value(body, known, SET_HEADERS) or ""


def strip_headers(body: bytes, known: list[tuple[str, str]] | None = None) -> bytes:
    """The message without the configuration-set and tag headers. `known`: as in
    requested_set (when none of them is there, the body is not read)."""
    if known is not None and not any(name.lower() in STRIPPED for name, _ in known):
        return body
    head, rest = _split(body)
    fields = _fields(head)
    kept = [f for f in fields if _name(f) not in STRIPPED]
    if len(kept) == len(fields):
        return body
    return b"".join(kept) + rest


def resolve(cfg: Config, requested: str, default: str = "") -> str:
    """The configuration set's configured name, or "" when none applies or it is unknown."""
    name = requested or default
    if not name:
        return ""
    cs = cfg.configuration_set_named(name)
    return cs.name if cs is not None else ""


def unsubscribe_base(cfg: Config, name: str) -> str:
    """The List-Unsubscribe URL prefix of a set with list_unsubscribe = true ("" if not):
    the admin HTTP server's /unsubscribe/ route as the internet reaches it, admin.public_url
    (its path kept: a proxy may serve relay under a prefix), else server.hostname."""
    cs = cfg.configuration_set_named(name) if name else None
    if cs is None or not cs.list_unsubscribe:
        return ""
    base = cfg.admin.public_url.rstrip("/") or f"https://{cfg.server.hostname}"
    return f"{base}/unsubscribe/"


def requested_tracking(body: bytes, known: list[tuple[str, str]] | None = None) -> str:
    """The X-SES-TRACKING override as the message record keeps it: "" (no header: the
    configuration set decides), "none", "open", "click" or "open,click" (the kinds the
    message allows). A value relay cannot read is "none": tracking is a matter of the
    recipient's consent, so a mistake turns it off, never on."""
    value = _header_value(body, known, (TRACKING_HEADER,))
    if value is None:
        return ""
    kinds = {k for k in re.split(r"[\s,;]+", value.lower()[:64]) if k}
    if kinds and kinds <= {"open", "click"}:
        return ",".join(k for k in ("open", "click") if k in kinds)
    return "none"


@dataclass(frozen=True)
class TrackingPlan:
    """How one message's copies are tracked (relay/tracking/rewrite.py does the work)."""

    open_base: str     # "https://track.example.com/t/o/" + token; "" = no open pixel
    click_host: str    # the tracking domain of the redirects; "" = links left alone
    click_https: bool  # every redirect over https; else with the scheme of its link

    def open_url(self, token: str) -> str:
        return self.open_base + token

    def click_url(self, token: str, link: str) -> str:
        https = self.click_https or link[:6].lower() == "https:"
        return f"{'https' if https else 'http'}://{self.click_host}{CLICK_PATH}{token}"


def tracking_plan(cfg: Config, name: str, override: str = "") -> TrackingPlan | None:
    """The tracking of a message of configuration set `name` with the X-SES-TRACKING
    override `override` (requested_tracking); None when it is not tracked at all."""
    cs = cfg.configuration_set_named(name) if name else None
    if cs is None or not cs.tracking.domain:
        return None
    t = cs.tracking
    allowed = set(override.split(",")) if override else {"open", "click"}
    track_open, track_click = t.open and "open" in allowed, t.click and "click" in allowed
    if not track_open and not track_click:
        return None
    domain = t.domain.lower()
    scheme = "http" if t.https_policy == "optional" else "https"
    return TrackingPlan(f"{scheme}://{domain}{OPEN_PATH}" if track_open else "",
                        domain if track_click else "", t.https_policy == "require")
