"""SES v1 (query protocol) on the v2 operations: flattened names, the v2 request of a v1
send, and v1's error codes (PURE)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from relay.sesapi import v1
from relay.sesapi.errors import ApiError, for_refusal
from relay.tenants import refusals


def test_flattened_names_nest_and_members_list_in_order() -> None:
    got = v1.unflatten([
        ("Action", "SendEmail"), ("Destination.ToAddresses.member.2", "b@x.example"),
        ("Destination.ToAddresses.member.1", "a@x.example"),
        ("Message.Subject.Data", "hi"), ("Tags.member.1.Name", "k"),
        ("Tags.member.1.Value", "v"), ("Destination.ToAddresses.member.10", "c@x.example")])
    assert got == {"Action": "SendEmail",
                   "Destination": {"ToAddresses": ["a@x.example", "b@x.example",
                                                   "c@x.example"]},
                   "Message": {"Subject": {"Data": "hi"}},
                   "Tags": [{"Name": "k", "Value": "v"}]}


def test_too_many_parameters_are_refused() -> None:
    with pytest.raises(ApiError) as caught:
        v1.unflatten((f"P{i}", "x") for i in range(v1.MAX_PARAMS + 1))
    assert caught.value.code == "BadRequestException"


def test_send_raw_email_is_a_v2_raw_send() -> None:
    got = v1.to_v2("SendRawEmail", {"Source": "a@x.example", "Destinations": ["b@x.example"],
                                    "RawMessage": {"Data": "eA=="},
                                    "ConfigurationSetName": "cs"})
    assert got == {"FromEmailAddress": "a@x.example", "ConfigurationSetName": "cs",
                   "Content": {"Raw": {"Data": "eA=="}},
                   "Destination": {"ToAddresses": ["b@x.example"]}}
    with pytest.raises(ApiError):
        v1.to_v2("SendRawEmail", {"Source": "a@x.example"})


def test_send_email_is_a_v2_simple_send() -> None:
    message = {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}}}
    got = v1.to_v2("SendEmail", {"Source": "a@x.example", "Message": message,
                                 "Destination": {"CcAddresses": ["c@x.example"],
                                                 "ToAddresses": ""}})
    assert got["Content"] == {"Simple": message}
    assert got["Destination"] == {"ToAddresses": [], "CcAddresses": ["c@x.example"],
                                  "BccAddresses": []}


@pytest.mark.parametrize(("err", "status", "code"), [
    (for_refusal(*refusals.RATE_EXCEEDED), 400, "Throttling"),
    (for_refusal(*refusals.DAILY_QUOTA_EXCEEDED), 400, "Throttling"),
    (for_refusal(*refusals.PAUSED_ACCOUNT), 400, "AccountSendingPausedException"),
    (for_refusal(*refusals.paused_configuration_set("cs")), 400,
     "ConfigurationSetSendingPausedException"),
    (for_refusal(*refusals.not_verified("a@x.example")), 400, "MessageRejected"),
    (for_refusal(554, "5.3.0", "Configuration Set does not exist: cs"), 400,
     "ConfigurationSetDoesNotExist"),
    (ApiError(400, "BadRequestException", "x"), 400, "InvalidParameterValue"),
])
def test_errors_in_v1_terms(err: ApiError, status: int, code: str) -> None:
    got_status, text = v1.xml_error(err, "r-1")
    root = ET.fromstring(text)
    ns = {"s": v1.NAMESPACE}
    assert got_status == status
    assert root.findtext("s:Error/s:Code", namespaces=ns) == code
    assert root.findtext("s:Error/s:Message", namespaces=ns) == err.message


def test_results_are_wrapped_as_botocore_reads_them() -> None:
    root = ET.fromstring(v1.xml_result("SendRawEmail", {"MessageId": "m<1>"}, "r-1"))
    ns = {"s": v1.NAMESPACE}
    assert root.findtext("s:SendRawEmailResult/s:MessageId", namespaces=ns) == "m<1>"
    assert root.findtext("s:ResponseMetadata/s:RequestId", namespaces=ns) == "r-1"
