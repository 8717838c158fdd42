"""PURE: SES v1 (the query protocol, API version 2010-12-01) on top of the v2 operations.

A v1 request is a form (`Action=SendRawEmail&Source=...&Destinations.member.1=...`),
POSTed to "/". `unflatten()` reads the query protocol's flattened names into the nested
shape ("Destination.ToAddresses.member.1" -> {"Destination": {"ToAddresses": [...]}});
`to_v2()` turns SendEmail and SendRawEmail into the v2 SendEmail request they are (the
same message, checks and pipeline); `xml_result()` and `xml_error()` write the XML
answers botocore's query parser reads, with v1's error codes for v2's (Throttling for the
quota and rate, AccountSendingPausedException, ConfigurationSetDoesNotExist, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape

from relay.sesapi.errors import ApiError, bad_request

NAMESPACE = "http://ses.amazonaws.com/doc/2010-12-01/"
MAX_PARAMS = 1000
SUPPORTED = ("SendEmail", "SendRawEmail", "GetSendQuota")


def unflatten(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The nested request of the query protocol's flat (name, value) pairs: dotted names
    nest, "X.member.N" lists."""
    root: dict[str, Any] = {}
    for count, (key, value) in enumerate(pairs):
        if count >= MAX_PARAMS:
            raise bad_request(f"more than {MAX_PARAMS} parameters")
        parts = key.split(".")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    out = _lists(root)
    assert isinstance(out, dict)
    return out


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    members = node.get("member")
    if len(node) == 1 and isinstance(members, dict) and all(k.isdigit() for k in members):
        return [_lists(v) for _, v in sorted(members.items(), key=lambda kv: int(kv[0]))]
    return {k: _lists(v) for k, v in node.items()}


def _strings(value: Any, name: str) -> list[str]:
    if value is None or value == "":  # botocore writes an empty list as "Name="
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{name}: expected {name}.member.N values")
    return list(value)


def _tags(value: Any) -> list[dict[str, Any]]:
    if value is None or value == "":
        return []
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise bad_request("Tags: expected Tags.member.N.Name and .Value")
    return list(value)


def to_v2(action: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """The v2 SendEmail request of a v1 SendEmail or SendRawEmail."""
    out: dict[str, Any] = {}
    source = request.get("Source")
    if source is not None:
        out["FromEmailAddress"] = source
    if request.get("ConfigurationSetName"):
        out["ConfigurationSetName"] = request["ConfigurationSetName"]
    tags = _tags(request.get("Tags"))
    if tags:
        out["EmailTags"] = tags
    if action == "SendRawEmail":
        raw = request.get("RawMessage")
        if not isinstance(raw, dict) or not isinstance(raw.get("Data"), str):
            raise bad_request("RawMessage.Data is required")
        out["Content"] = {"Raw": {"Data": raw["Data"]}}
        destinations = _strings(request.get("Destinations"), "Destinations")
        if destinations:
            out["Destination"] = {"ToAddresses": destinations}
        return out
    if source is None:
        raise bad_request("Source is required")
    destination = request.get("Destination")
    if not isinstance(destination, dict):
        raise bad_request("Destination is required")
    out["Destination"] = {
        key: _strings(destination.get(key), f"Destination.{key}")
        for key in ("ToAddresses", "CcAddresses", "BccAddresses")}
    reply_to = _strings(request.get("ReplyToAddresses"), "ReplyToAddresses")
    if reply_to:
        out["ReplyToAddresses"] = reply_to
    message = request.get("Message")
    if not isinstance(message, dict):
        raise bad_request("Message is required")
    out["Content"] = {"Simple": message}
    return out


def _v1_code(err: ApiError) -> tuple[int, str]:
    if err.code in ("TooManyRequestsException", "LimitExceededException"):
        return 400, "Throttling"
    if err.code == "SendingPausedException":
        if "configuration set" in err.message:
            return 400, "ConfigurationSetSendingPausedException"
        return 400, "AccountSendingPausedException"
    if err.code == "NotFoundException" and err.message.startswith("Configuration Set"):
        return 400, "ConfigurationSetDoesNotExist"
    if err.code == "BadRequestException":
        return 400, "InvalidParameterValue"
    return err.status, err.code


def xml_error(err: ApiError, request_id: str, *, signature: bool = False) -> tuple[int, str]:
    """(status, body) of a v1 ErrorResponse; `signature`: `err` is already in v1's terms
    (sigv4's query-protocol codes)."""
    status, code = (err.status, err.code) if signature else _v1_code(err)
    kind = "Receiver" if status >= 500 else "Sender"
    return status, (
        f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{kind}</Type>'
        f"<Code>{escape(code)}</Code><Message>{escape(err.message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>")


def xml_result(action: str, fields: Mapping[str, Any], request_id: str) -> str:
    inner = "".join(f"<{k}>{escape(_text(v))}</{k}>" for k, v in fields.items())
    return (f'<{action}Response xmlns="{NAMESPACE}"><{action}Result>{inner}</{action}Result>'
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
            f"</{action}Response>")


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def unsupported_action(action: str) -> ApiError:
    if not action:
        return ApiError(400, "MissingAction", "The request must contain the parameter Action")
    return ApiError(400, "InvalidAction", f"relay does not support the SES v1 operation "
                    f"{action[:100]!r} (supported: {', '.join(SUPPORTED)})")
