"""The SES v2 errors relay answers for the submission pipeline's refusals, and the names of
the SES operations it does not serve (PURE tables)."""

from __future__ import annotations

import pytest

from relay.sesapi.catalog import OPERATIONS, operation_of
from relay.sesapi.errors import ApiError, for_refusal, unsupported
from relay.smtp import replies as R
from relay.tenants import refusals


@pytest.mark.parametrize(("refusal", "status", "code"), [
    (refusals.RATE_EXCEEDED, 429, "TooManyRequestsException"),
    (refusals.DAILY_QUOTA_EXCEEDED, 429, "LimitExceededException"),
    (refusals.PAUSED_ACCOUNT, 400, "SendingPausedException"),
    (refusals.paused_configuration_set("promo"), 400, "SendingPausedException"),
    (refusals.not_verified("x@example.com"), 400, "MessageRejected"),
    (R.TOO_MANY_HOPS, 400, "MessageRejected"),
    (R.STORE_FULL, 503, "ServiceUnavailable"),
    (R.CONFIGURATION_SET_UNKNOWN.with_text(
        R.CONFIGURATION_SET_UNKNOWN.text.format(name="nope")), 404, "NotFoundException"),
    (R.Reply(554, "5.7.1", "Message rejected: MailFromDomainNotVerified: MAIL FROM domain "
             "bounce.example.com has no MX record"), 400,
     "MailFromDomainNotVerifiedException"),
])
def test_refusals_map_to_the_ses_v2_error(refusal: tuple[int, str, str], status: int,
                                          code: str) -> None:
    err = for_refusal(*refusal)
    assert (err.status, err.code) == (status, code)
    assert not err.message.startswith(("Message rejected: ", "Throttling failure: "))


def test_the_quota_messages_are_ses_words() -> None:
    assert for_refusal(*refusals.RATE_EXCEEDED).message == "Maximum sending rate exceeded."
    assert for_refusal(*refusals.DAILY_QUOTA_EXCEEDED).message == \
        "Daily message quota exceeded."


def test_operations_are_named_by_method_and_path() -> None:
    assert operation_of("POST", "/v2/email/templates") == "CreateEmailTemplate"
    assert operation_of("GET", "/v2/email/templates/welcome") == "GetEmailTemplate"
    assert operation_of("DELETE", "/v2/email/suppression/addresses/a%40b.example") == \
        "DeleteSuppressedDestination"
    assert operation_of("POST", "/v2/email/outbound-emails") == "SendEmail"
    assert operation_of("GET", "/v2/email/outbound-emails") is None
    assert operation_of("GET", "/admin") is None
    assert len({name for _, _, name in OPERATIONS}) == len(OPERATIONS)


def test_an_unsupported_operation_is_a_400_naming_it() -> None:
    err = unsupported("POST", "/v2/email/contact-lists", "CreateContactList")
    assert (err.status, err.code) == (400, "BadRequestException")
    assert "CreateContactList" in err.message
    err = unsupported("GET", "/nowhere")
    assert (err.status, err.code) == (404, "NotFoundException")
    assert "GET /nowhere" in err.message


def test_a_request_body_nested_past_the_stack_is_a_bad_request() -> None:
    from relay.sesapi.server import _json

    with pytest.raises(ApiError) as caught:
        _json(b"[" * 100_000 + b"]" * 100_000)
    assert caught.value.code == "BadRequestException"
