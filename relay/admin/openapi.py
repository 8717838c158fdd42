"""The OpenAPI 3.1 document of the admin API, served at /openapi.json.

The paths are written next to the routes (relay.admin.api.ROUTES); a test checks that
every route is described here and every described path is routed. The query parameters
and request bodies are generated from the Structs the routes decode them into
(relay.admin.params) with msgspec.json.schema_components, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.admin.params import (
    BODIES,
    QUERIES,
    DomainQuery,
    EventsQuery,
    MessagesQuery,
    Params,
    QueueQuery,
    StatsQuery,
    StatusChange,
    SuppressionAdd,
    SuppressionQuery,
    SuppressionRemoveQuery,
    TenantAdd,
    UserAdd,
)
from relay.history.keys import METRICS
from relay.history.model import ENTRY_KINDS, STATUSES
from relay.queue.records import PENDING_STATES
from relay.suppression.policy import SUPPRESSION_REASONS
from relay.tenants.model import REPUTATION_STATUSES, SUPPRESSION_SCOPES

_REF = "#/components/schemas/{name}"
_ERROR = {"$ref": _REF.format(name="Error")}


def _components() -> dict[str, Any]:
    """The request bodies' schemas (referenced) and the query Structs' (unfolded)."""
    _, components = msgspec.json.schema_components((*BODIES, *QUERIES), ref_template=_REF)
    return components


def _query(cls: type[Params], components: dict[str, Any]) -> list[dict[str, Any]]:
    """A query Struct as OpenAPI query parameters, one per field."""
    schema = components[cls.__name__]
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", "")
        params.append({"name": name, "in": "query", "required": name in required,
                       "schema": prop, "description": description})
    return params


def _body(cls: type[Params]) -> dict[str, Any]:
    return {"$ref": _REF.format(name=cls.__name__)}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return body


def _op(summary: str, ok: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, errors: tuple[int, ...] = (400, 401),
        secured: bool = True, status: str = "200") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok}}
    for code in errors:
        op["responses"][str(code)] = _resp({400: "Wrong input; `field` names it",
                                            401: "Missing or unknown bearer token",
                                            404: "No such item",
                                            429: "Too many at once",
                                            409: "Already exists, or still in use",
                                            501: "Not available in this build"}[code], _ERROR)
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    if not secured:
        op["security"] = []
    return op


def _tracking_path(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    op = {"summary": summary, "security": [],
          "parameters": [_p("token", "from the tracked message")],
          "responses": {**ok, "404": {"description": "Unknown, altered or forged token "
                                                     "(nothing published)"}}}
    return {"get": op, "head": op}


def _p(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
            "description": description}


_OBJ = {"type": "object"}
_ID = _p("id", "queue id (20 hex characters)")
_TENANT = _p("name", "tenant name")
_NULLABLE_TEXT = {"type": ["string", "null"]}


def document() -> dict[str, Any]:
    components = _components()
    suppressed = {"type": "object", "properties": {
        "address": {"type": "string"}, "reason": {"enum": SUPPRESSION_REASONS},
        "created_at": {"type": "string"}, "message_id": {"type": "string"},
        "diagnostic": {"type": "string"},
        "feedback_id": {"type": "string",
                        "description": "the Bounce or Complaint event that put it there"}}}

    message = {"type": "object", "properties": {
        "id": {"type": "string"}, "received_at": {"type": "string"},
        "sender": {"type": "string"}, "size": {"type": "integer"},
        "subject": {"type": "string"},
        "recipients": {"type": "array", "items": {"type": "object", "properties": {
            "address": {"type": "string"}, "state": {"enum": [
                *PENDING_STATES, "delivered", "bounced", "expired"]},
            "attempts": {"type": "integer"}, "last_response": {"type": "string"}}}}}}
    status = {"type": "object", "properties": {
        "Status": {"enum": REPUTATION_STATUSES}, "Reason": {"type": "string"},
        "Automatic": {"type": "boolean"}, "ChangedTimestamp": _NULLABLE_TEXT,
        "ChangedBy": {"type": "string"}, "LastFreshStart": _NULLABLE_TEXT,
        "BounceRate": {"type": "number"}, "ComplaintRate": {"type": "number"},
        "Volume": {"type": "integer"}}}
    tenant = {"type": "object", "properties": {
        "TenantName": {"type": "string"}, "CreatedTimestamp": _NULLABLE_TEXT,
        "SendingStatus": {"enum": ["ENABLED", "REINSTATED", "DISABLED"]},
        "ProductionAccessEnabled": {"type": "boolean"},
        "ProductionAccessTimestamp": _NULLABLE_TEXT,
        "SuppressionScope": {"enum": SUPPRESSION_SCOPES},
        "ReputationStatus": status,
        "SendQuota": {"type": "object", "properties": {
            "Max24HourSend": {"type": ["integer", "null"]},
            "MaxSendRate": {"type": ["number", "null"]},
            "SentLast24Hours": {"type": "integer"}}}}}
    tenant_body = {"type": "object", "properties": {"Tenant": tenant}}
    text = {"type": "string"}
    texts = {"type": "array", "items": text}
    history_row = {"type": "object", "properties": {
        "id": text, "received_at": text, "sender": text, "from": texts, "to": texts,
        "subject": text, "message_id": text, "tenant": text, "configuration_set": text,
        "size": {"type": "integer"}, "status": {"enum": list(STATUSES)},
        "partial": {"type": "boolean", "description": "its Send is not recorded (yet)"},
        "recipients": {"type": "array", "items": {"type": "object", "properties": {
            "address": text, "status": {"enum": list(STATUSES)},
            "attempts": {"type": "integer"}, "provider": text, "last_response": text,
            "updated_at": _NULLABLE_TEXT}}}}}
    timeline_entry = {"type": "object", "properties": {
        "ts": text, "recipient": text, "kind": {"enum": list(ENTRY_KINDS)},
        "result": text, "source_ip": text, "mx_host": text, "remote_ip": text,
        "tls": {"type": "boolean"}, "reused": {"type": "boolean"}, "response": text,
        "delay_ms": {"type": "integer"}, "duration_ms": {"type": "integer"},
        "provider": text, "dkim": texts, "event_type": text, "detail": text,
        "event": {"type": "object", "description": "the SES event as published"}}}
    insight = {"type": "object", "properties": {
        "Destination": text, "Isp": text, "Events": {"type": "array", "items": {
            "type": "object", "properties": {
                "Timestamp": text, "Type": {"enum": [
                    "SEND", "DELIVERY", "TRANSIENT_BOUNCE", "PERMANENT_BOUNCE",
                    "UNDETERMINED_BOUNCE", "COMPLAINT", "DELIVERY_DELAY", "REJECT",
                    "RENDERING_FAILURE", "SUBSCRIPTION", "OPEN", "CLICK"]},
                "Details": _OBJ}}}}}
    history_detail = {"allOf": [history_row, {"type": "object", "properties": {
        "tags": _OBJ, "dkim": texts, "client_ip": text, "auth_user": text,
        "identity": text, "source": {"enum": ["smtp", "api", ""]},
        "timeline": {"type": "array", "items": timeline_entry},
        "MessageId": text, "FromEmailAddress": text, "Subject": text,
        "EmailTags": {"type": "array", "items": _OBJ},
        "Insights": {"type": "array", "items": insight}}}]}
    counts = {"type": "object", "properties": {m: {"type": "integer"} for m in METRICS}}
    domain_done = _resp("Done", {"type": "object", "properties": {
        "domain": text, "messages": {"type": "integer"}, "recipients": {"type": "integer"}}})
    domain_params = _query(DomainQuery, components)
    paths: dict[str, Any] = {
        "/api/queue": {"get": _op(
            "List queued messages, oldest first",
            _resp("Messages", {"type": "object", "properties": {
                "messages": {"type": "array", "items": message},
                "count": {"type": "integer"}, "matched": {"type": "integer"}}}),
            params=_query(QueueQuery, components)),
            "delete": _op(
                "Remove every waiting recipient at a destination domain without a bounce "
                "(a message with recipients elsewhere keeps them)", domain_done,
                params=domain_params)},
        "/api/queue/retry": {"post": _op(
            "Attempt now every waiting recipient at a destination domain",
            domain_done, params=domain_params)},
        "/api/queue/bounce": {"post": _op(
            "Fail every waiting recipient at a destination domain, with Bounce events",
            domain_done, params=domain_params)},
        "/api/queue/{id}": {
            "get": _op("One message with its recipients", _resp("The message", message),
                       params=[_ID], errors=(400, 401, 404)),
            "delete": _op("Remove a message without a bounce", _resp("Deleted", _OBJ),
                          params=[_ID], errors=(400, 401, 404))},
        "/api/queue/{id}/retry": {"post": _op(
            "Attempt the message's pending recipients now", _resp("Retried", _OBJ),
            params=[_ID], errors=(400, 401, 404))},
        "/api/queue/{id}/bounce": {"post": _op(
            "Fail the message's pending recipients, with a Bounce event", _resp("Bounced", _OBJ),
            params=[_ID], errors=(400, 401, 404))},
        "/api/suppression": {
            "get": _op("The account-level suppression list, in address order, paged",
                       _resp("Entries", {"type": "object", "properties": {
                           "entries": {"type": "array", "items": suppressed},
                           "count": {"type": "integer"}, "matched": {"type": "integer"},
                           "offset": {"type": "integer"}, "limit": {"type": "integer"},
                           "next_offset": {"type": ["integer", "null"]}}}),
                       params=_query(SuppressionQuery, components)),
            "post": _op("Suppress an address (201; 200 when it was already listed, with the "
                        "reason replaced)", _resp("Added", _OBJ), status="201",
                        body=_body(SuppressionAdd),
                        errors=(400, 401))},
        "/api/suppression/{address}": {"delete": _op(
            "Remove an address from the suppression list",
            _resp("Removed", _OBJ), params=[_p("address", "the suppressed address"),
                                            *_query(SuppressionRemoveQuery, components)],
            errors=(400, 401, 404))},
        "/api/identities": {"get": _op(
            "Identities (config and `relay identity add`) with their DNS verification and "
            "DKIM selectors", _resp("Identities", _OBJ), errors=(401,))},
        "/api/warmup": {"get": _op(
            "Warm-up status per source IP: plan, day, today's cap and usage, plan curve",
            _resp("Warm-up", _OBJ), errors=(401,))},
        "/api/users": {
            "get": _op("SMTP users (names and sending authorization; never hashes)",
                       _resp("Users", _OBJ), errors=(401,)),
            "post": _op("Add an SMTP user (no password given: one is generated and "
                        "answered once as generated_password)", _resp("Created", _OBJ),
                        status="201",
                        body=_body(UserAdd),
                        errors=(400, 401, 409))},
        "/api/users/{name}": {"delete": _op(
            "Remove an SMTP user", _resp("Removed", _OBJ), params=[_p("name", "user name")],
            errors=(401, 404))},
        "/api/tenants": {
            "get": _op("Every tenant (`default` always), SES-named: TenantName, "
                       "SendingStatus, ReputationStatus, SendQuota, ProductionAccessEnabled",
                       _resp("Tenants", {"type": "object", "properties": {
                           "Tenants": {"type": "array", "items": tenant}}}), errors=(401,)),
            "post": _op("Create a tenant (in the sandbox unless Sandbox is false)",
                        _resp("Created", tenant_body), status="201", body=_body(TenantAdd),
                        errors=(400, 401, 409))},
        "/api/tenants/{name}": {
            "get": _op("One tenant with SendQuota.SentLast24Hours",
                       _resp("The tenant", tenant_body), params=[_TENANT],
                       errors=(401, 404)),
            "delete": _op("Remove a tenant and its status (409: `default`, or credentials "
                          "still belong to it)", _resp("Removed", _OBJ), params=[_TENANT],
                          errors=(401, 404, 409))},
        "/api/tenants/{name}/pause": {"post": _op(
            "Pause a tenant's sending (by the operator: the token's name is recorded); "
            "the body is optional", _resp("Paused", tenant_body), params=[_TENANT],
            body=_body(StatusChange), errors=(400, 401, 404))},
        "/api/tenants/{name}/resume": {"post": _op(
            "Resume a tenant: Healthy, with a fresh reputation window from now "
            "(LastFreshStart); the body is optional", _resp("Resumed", tenant_body),
            params=[_TENANT], body=_body(StatusChange), errors=(400, 401, 404))},
        "/api/tenants/{name}/production": {"post": _op(
            "Take a tenant out of the sandbox", _resp("In production", tenant_body),
            params=[_TENANT], errors=(401, 404))},
        "/api/events": {"get": _op(
            "Recent events, newest first (SES event publishing shape)",
            _resp("Events", _OBJ),
            params=_query(EventsQuery, components))},
        "/api/events/stream": {"get": _op(
            "Server-Sent Events: every event published from now on by any worker "
            "(`event: <eventType>`, `data: <SES event JSON>`, a comment as heartbeat "
            "every 15 s); at most 20 streams at once",
            {"description": "The stream", "content": {"text/event-stream": {}}},
            errors=(401, 429))},
        "/api/messages": {"get": _op(
            "Search the message history, newest first, paged by cursor",
            _resp("Messages", {"type": "object", "properties": {
                "messages": {"type": "array", "items": history_row},
                "count": {"type": "integer"},
                "next_cursor": {"type": "string", "description": "\"\": no more"},
                "scanned": {"type": "integer"}}}),
            params=_query(MessagesQuery, components))},
        "/api/messages/{id}": {"get": _op(
            "One message's history: its recipients, timeline (attempts and events) and "
            "SES GetMessageInsights' fields",
            _resp("The message", history_detail),
            params=[_p("id", "a queue id or a Message-ID header value")],
            errors=(400, 401, 404))},
        "/api/stats": {"get": _op(
            "Sending statistics per bucket (default: the last 24 hours in 15 minutes), "
            "per value of a dimension, with totals and SES SendDataPoints",
            _resp("Statistics", {"type": "object", "properties": {
                "bucket_seconds": {"type": "integer"}, "since": text, "until": text,
                "series": {"type": "array", "items": {"type": "object", "properties": {
                    "key": text, "points": {"type": "array", "items": {
                        "allOf": [{"type": "object", "properties": {"t": text}},
                                  counts]}}}}},
                "totals": counts,
                "SendDataPoints": {"type": "array", "items": _OBJ}}}),
            params=_query(StatsQuery, components))},
        "/api/status": {"get": _op("Summary of the running instance (relay status)",
                                   _resp("Status", _OBJ), errors=(401,))},
        "/api/cluster": {"get": _op(
            "The cluster as Redis sees it (relay cluster status): live nodes (heartbeat), "
            "their queue depth, Redis latency, connection leases per node, nodes whose "
            "distributed files differ; {\"configured\": false} without [cluster]",
            _resp("Cluster", {"type": "object", "properties": {
                "configured": {"type": "boolean"}, "redis_up": {"type": "boolean"},
                "node_id": text, "redis_latency_ms": {"type": "number"},
                "nodes": {"type": "array", "items": _OBJ},
                "leases": {"type": "array", "items": _OBJ},
                "differing": _OBJ, "message": text, "error": text}}),
            errors=(401,))},
        "/api/dashboard": {"get": _op(
            "Everything the dashboard draws: queue-depth history, per-provider rates, "
            "warm-up, oldest deferred messages", _resp("Dashboard data", _OBJ),
            errors=(401,))},
        "/metrics": {"get": {"summary": "Prometheus metrics (text format; a bearer token "
                                        "only with [admin] metrics_auth = true)",
                             "security": [],
                             "responses": {"200": {"description": "Metrics",
                                                   "content": {"text/plain": {}}}}}},
        "/health": {"get": {"summary": "Load balancer health check (public): 200 \"ok\", "
                                       "503 \"draining\" while `relay node drain` is in effect",
                            "security": [],
                            "responses": {"200": {"description": "Serving",
                                                  "content": {"text/plain": {}}},
                                          "503": {"description": "Draining",
                                                  "content": {"text/plain": {}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/": {"get": {"summary": "The dashboard page (HTML; asks for a token)", "security": [],
                      "responses": {"200": {"description": "HTML",
                                            "content": {"text/html": {}}}}}},
        "/unsubscribe/{token}": {
            "post": {"summary": "RFC 8058 one-click unsubscribe (public: the List-Unsubscribe "
                                "token is the credential); publishes a Subscription event",
                     "security": [], "parameters": [_p("token", "from List-Unsubscribe")],
                     "requestBody": {"required": True, "content": {
                         "application/x-www-form-urlencoded": {"schema": {
                             "type": "object", "properties": {
                                 "List-Unsubscribe": {"const": "One-Click"}}}}}},
                     "responses": {"200": {"description": "Unsubscribed"},
                                   "400": {"description": "Not List-Unsubscribe=One-Click"},
                                   "404": {"description": "Unknown or forged token"}}},
            "get": {"summary": "A short page (a GET never unsubscribes)", "security": [],
                    "parameters": [_p("token", "from List-Unsubscribe")],
                    "responses": {"200": {"description": "HTML",
                                          "content": {"text/html": {}}},
                                  "404": {"description": "Unknown or forged token"}}}},
        "/t/o/{token}": _tracking_path(
            "Open tracking pixel (public: the signed token is the credential); a GET "
            "publishes an Open event, a HEAD nothing",
            {"200": {"description": "A 1x1 transparent GIF, not cacheable",
                     "content": {"image/gif": {}}}}),
        "/t/c/{token}": _tracking_path(
            "Click tracking redirect (public: the signed token is the credential); a GET "
            "publishes a Click event, a HEAD nothing",
            {"302": {"description": "To the link of the message the token names"}}),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "relay admin API", "version": "1",
                 "description": "Queue, suppression, users, identities, warm-up and events of "
                                "one relay "
                                "process. Every /api/ call needs `Authorization: Bearer "
                                "TOKEN` (`relay admin token add NAME`)."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"},
                "field": {"type": "string", "description": "the input that was wrong"}}},
                **{cls.__name__: components[cls.__name__] for cls in BODIES}},
        },
        "paths": paths,
    }
