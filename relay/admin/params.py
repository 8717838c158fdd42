"""The admin API's request parameters as msgspec Structs, and their decoding.

One Struct per query string or JSON body: the routes in relay.admin.api decode into them,
and relay.admin.openapi describes them with msgspec.json.schema_components, so the
document and the validation cannot drift apart. Wrong input raises BadInput naming the
parameter or JSON key; the checks run in the order the API has always answered them:
a body that is no JSON object, then unknown keys, then missing ones, then wrong types
(query strings: unknown parameters, then each value in the order the Struct declares).

Pure: no aiohttp here; relay.admin.api reads the request and hands over what it read.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    TypeVar,
    get_args,
    get_origin,
    get_type_hints,
)

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from msgspec import inspect as mi

from relay.events.model import EVENT_TYPES
from relay.history.model import STATUSES
from relay.queue.records import PENDING_STATES
from relay.suppression.policy import SUPPRESSION_REASONS
from relay.tenants.model import SuppressionScope
from relay.users import MIN_NEW_PASSWORD_LENGTH

MAX_LIMIT = 10_000

if TYPE_CHECKING:
    PendingState = str
    SuppressionReason = str
    EventType = str
    HistoryStatus = str
else:
    # The lists are owned by their modules; msgspec reads them as Literal choices.
    PendingState = Literal[tuple(PENDING_STATES)]
    SuppressionReason = Literal[tuple(SUPPRESSION_REASONS)]
    EventType = Literal[tuple(EVENT_TYPES)]
    HistoryStatus = Literal[tuple(STATUSES)]


class BadInput(Exception):
    """Wrong input: answered as a 400 `{"error": message, "field": field}`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Params(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every parameter Struct: unknown keys are refused."""


Limit = Annotated[int, Meta(ge=1, le=MAX_LIMIT, description="at most this many")]


# ------------------------------------------------------------------ query strings


class QueueQuery(Params):
    """GET /api/queue."""

    state: Annotated[PendingState, Meta(
        description="only messages with a recipient in this state")] | UnsetType = UNSET
    limit: Limit = 100
    domain: Annotated[str, Meta(description="only messages with a recipient here")] = ""


# A tenant's own suppression list instead of the account-level one ("": the account's).
TenantParam = Annotated[str, Meta(pattern=r"^([A-Za-z0-9_-]{1,64})?$",
                                  description="a tenant's own list (\"\": the account's)")]


class SuppressionQuery(Params):
    """GET /api/suppression."""

    reason: Annotated[SuppressionReason,
                      Meta(description="only this reason")] | UnsetType = UNSET
    limit: Limit = 100
    offset: Annotated[int, Meta(ge=0, le=1 << 31,
                                description="skip this many matching entries")] = 0
    prefix: Annotated[str, Meta(description="only addresses starting with this")] = ""
    q: Annotated[str, Meta(max_length=320,
                           description="only addresses containing this")] = ""
    tenant: TenantParam = ""


class SuppressionRemoveQuery(Params):
    """DELETE /api/suppression/{address}."""

    tenant: TenantParam = ""


class EventsQuery(Params):
    """GET /api/events."""

    type: Annotated[EventType, Meta(description="eventType")] | UnsetType = UNSET
    limit: Limit = 100
    message_id: Annotated[str, Meta(description="mail.messageId")] = ""
    recipient: Annotated[str, Meta(description="an address in mail.destination")] = ""


# An instant: ISO 8601 ("2026-01-02T03:04:05Z"; no zone = UTC) or epoch seconds. Read by
# `instant()`, which names the parameter when it is neither.
Instant = Annotated[str, Meta(max_length=64,
                              description="ISO 8601 or epoch seconds")]
HISTORY_MAX_LIMIT = 500
# A queue id (20 hex) or a Message-ID header value; kept under LMDB's key size.
_TEXT = 200


class MessagesQuery(Params):
    """GET /api/messages: every given condition must hold."""

    recipient: Annotated[str, Meta(max_length=_TEXT, description="a recipient address")] = ""
    sender: Annotated[str, Meta(max_length=_TEXT,
                                description="the envelope sender (MAIL FROM)")] = ""
    subject: Annotated[str, Meta(max_length=_TEXT,
                                 description="words of the subject (all must match)")] = ""
    message_id: Annotated[str, Meta(max_length=_TEXT,
                                    description="a queue id or a Message-ID header")] = ""
    tenant: Annotated[str, Meta(max_length=_TEXT, description="the sending tenant")] = ""
    configuration_set: Annotated[str, Meta(max_length=_TEXT,
                                           description="the configuration set")] = ""
    identity: Annotated[str, Meta(max_length=_TEXT,
                                  description="the sending identity (From domain)")] = ""
    status: Annotated[HistoryStatus, Meta(
        description="a recipient has this status now")] | UnsetType = UNSET
    since: Instant = ""
    until: Instant = ""
    limit: Annotated[int, Meta(ge=1, le=HISTORY_MAX_LIMIT,
                               description="at most this many")] = 50
    cursor: Annotated[str, Meta(max_length=_TEXT,
                                description="the previous page's next_cursor")] = ""


STATS_DIMENSIONS = ("tenant", "configuration_set", "identity", "provider")
STATS_BUCKETS = (900, 3600, 86400)
if TYPE_CHECKING:
    StatsDimension = str
else:
    StatsDimension = Literal[STATS_DIMENSIONS]


class StatsQuery(Params):
    """GET /api/stats (since/until: the last 24 hours by default)."""

    since: Instant = ""
    until: Instant = ""
    by: Annotated[StatsDimension, Meta(
        description="one series per value of this dimension")] | UnsetType = UNSET
    tenant: Annotated[str, Meta(max_length=_TEXT, description="only this tenant")] = ""
    configuration_set: Annotated[str, Meta(max_length=_TEXT,
                                           description="only this configuration set")] = ""
    # One of STATS_BUCKETS (checked by the handler: from_query reads integers by range).
    bucket: Annotated[int, Meta(extra_json_schema={"enum": list(STATS_BUCKETS)},
                                description="seconds per point")] = 900


class DomainQuery(Params):
    """The per-destination queue actions."""

    # Required: checked by `domain_name()`, so a missing one is named like a wrong one.
    domain: Annotated[str, Meta(max_length=253, description="the recipients' domain "
                                                           "(required)")] = ""


def instant(key: str, raw: str) -> float | None:
    """`raw` ("" = not given) as epoch seconds: ISO 8601 (no zone = UTC) or a number."""
    text = raw.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or not 0 <= value < 1e11:
            raise BadInput(key, f"{key}: expected epoch seconds or an ISO 8601 time, "
                                f"got {raw!r}")
        return value
    try:
        when = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise BadInput(key, f"{key}: expected an ISO 8601 time (2026-01-02T03:04:05Z) or "
                            f"epoch seconds, got {raw!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def domain_name(key: str, raw: str) -> str:
    """A destination domain, lower-cased; a clear 400 for anything else."""
    domain = raw.strip().lower().rstrip(".")
    if (not domain or "@" in domain or "." not in domain or len(domain) > 253
            or any(c.isspace() or c in "/\\" for c in domain)):
        raise BadInput(key, f"{key}: expected a domain name like example.com, got {raw!r}")
    return domain


# ------------------------------------------------------------------ JSON bodies


class SuppressionAdd(Params):
    """Suppress an address; `reason` is read case-insensitively."""

    address: str
    # Any case is accepted (the handler upper-cases it, then checks it against the
    # list), so the list is documented here rather than enforced by the type.
    reason: Annotated[str, Meta(extra_json_schema={"enum": SUPPRESSION_REASONS})] = "BOUNCE"
    tenant: TenantParam = ""


class UserAdd(Params):
    """Add an SMTP user; without `password`, relay generates one and answers it once."""

    name: str
    # The length is checked by the handler, after the name (a bad name is named first,
    # whatever the password), so the schema documents it rather than the type.
    password: Annotated[str, Meta(extra_json_schema={
        "minLength": MIN_NEW_PASSWORD_LENGTH})] | UnsetType = UNSET
    allow: list[str] = []


class TenantAdd(Params):
    """Create a tenant (SES CreateTenant's TenantName, with relay's quota, sandbox and
    suppression scope). Without Sandbox, a tenant other than `default` starts in it."""

    TenantName: Annotated[str, Meta(description="1-64 letters, digits, '-' or '_'")]
    Sandbox: Annotated[bool, Meta(
        description="start in the sandbox (default: yes)")] | UnsetType = UNSET
    Max24HourSend: Annotated[int, Meta(
        ge=0, description="recipients in a rolling 24 hours; 0 = unlimited; absent = the "
                          "[tenants] default")] | UnsetType = UNSET
    MaxSendRate: Annotated[float, Meta(
        ge=0, description="recipients per second; 0 = unlimited; absent = the [tenants] "
                          "default")] | UnsetType = UNSET
    SuppressionScope: Annotated[SuppressionScope, Meta(
        description="the suppression list its mail is checked against and feeds")] = \
        "account"


class StatusChange(Params):
    """Pause or resume a tenant (the body is optional)."""

    Reason: Annotated[str, Meta(max_length=500, description="why (kept with the status)")] = ""


QUERIES: tuple[type[Params], ...] = (QueueQuery, SuppressionQuery, SuppressionRemoveQuery,
                                     EventsQuery, MessagesQuery, StatsQuery, DomainQuery)
BODIES: tuple[type[Params], ...] = (SuppressionAdd, UserAdd, TenantAdd, StatusChange)

P = TypeVar("P", bound=Params)


# ------------------------------------------------------------------ decoding


def _fields(cls: type[Params]) -> dict[str, mi.Field]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return {f.encode_name: f for f in info.fields}


def _bare(t: mi.Type) -> mi.Type:
    """The field's type without its Meta (description, bounds are kept on the type)."""
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _choices(cls: type[Params], name: str) -> tuple[Any, ...]:
    """A Literal field's choices in the order its list is written (msgspec sorts them)."""
    stack = [get_type_hints(cls, include_extras=True)[name]]
    while stack:
        hint = stack.pop()
        if get_origin(hint) is Literal:
            return get_args(hint)
        stack.extend(get_args(hint))
    return ()


def _unknown(key: str, known: Iterable[str], what: str) -> BadInput:
    return BadInput(key, f"{key}: unknown {what} (known: {', '.join(sorted(known)) or 'none'})")


def from_query(cls: type[P], query: Iterable[tuple[str, str]]) -> P:
    """Decode a query string (its (key, value) pairs; the first of a repeated key counts).
    Integers are read as int() reads them; an empty value of a text or choice parameter
    counts as absent."""
    fields = _fields(cls)
    pairs: dict[str, str] = {}
    for key, raw in query:
        pairs.setdefault(key, raw)
    for key in pairs:
        if key not in fields:
            raise _unknown(key, fields, "query parameter")
    values: dict[str, Any] = {}
    for key in [k for k in fields if k in pairs]:  # in the Struct's order, not the URL's
        raw = pairs[key]
        t = _bare(fields[key].type)
        if isinstance(t, mi.IntType):
            try:
                values[key] = int(raw)
            except ValueError:
                raise BadInput(key, f"{key}: expected an integer, got {raw!r}") from None
            lo, hi = t.ge, t.le
            if (lo is not None and values[key] < lo) or (hi is not None and values[key] > hi):
                raise BadInput(key, f"{key}: expected an integer between {lo} and {hi}, "
                                    f"got {values[key]}")
        elif raw != "":
            if isinstance(t, mi.LiteralType) and raw not in t.values:
                choices = ", ".join(str(v) for v in _choices(cls, fields[key].name))
                raise BadInput(key, f"{key}: expected one of {choices}, got {raw!r}")
            values[key] = raw
    return _convert(cls, values, fields)


def from_body(cls: type[P], data: Any) -> P:
    """Validate a decoded JSON body."""
    if not isinstance(data, dict):
        raise BadInput("body", "body: expected a JSON object")
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            raise _unknown(key, fields, "field")
    for key, f in fields.items():
        if f.required and key not in data:
            raise BadInput(key, f"{key}: missing")
    return _convert(cls, data, fields)


def _expected(t: mi.Type) -> str:
    if isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StrType):
        return "a list of strings"
    if isinstance(t, mi.StrType):
        return "str"
    if isinstance(t, mi.IntType):
        return "int"
    return "a valid value"


def _convert(cls: type[P], values: dict[str, Any], fields: dict[str, mi.Field]) -> P:
    try:
        return msgspec.convert(values, cls)
    except msgspec.ValidationError as e:
        # "... - at `$.key`" or "... - at `$.key[0]`": name the key, as the API always has.
        path = str(e).rpartition(" - at `$.")[2].rstrip("`")
        key = path.split("[", 1)[0].split(".", 1)[0]
        if key not in fields:
            raise BadInput("body", f"body: {e}") from None
        raise BadInput(key, f"{key}: expected {_expected(_bare(fields[key].type))}") from None
