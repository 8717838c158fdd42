"""PURE: the errors of the SES v2 API (REST-JSON) and how relay's refusals map to them.

An `ApiError` is what an operation raises for the client: the HTTP status, the AWS error
type (sent as `x-amzn-ErrorType`, which botocore turns into `client.exceptions.<Code>`)
and the message. Statuses are those of the SES v2 service model (its error shapes'
httpStatusCode), except quota and rate, which answer 429 as SES's throttling does.

`for_refusal()` turns an SMTP-shaped refusal of the shared submission pipeline (the
account model's `Refusal`, or a `MessageRefused` reply of the submitter: code, enhanced
code, text) into the SES v2 error an SDK expects for the same cause.
"""

from __future__ import annotations

from relay.sesapi.sigv4 import AwsError


class ApiError(Exception):
    """An answer other than success: status, AWS error type, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def of(cls, error: AwsError) -> ApiError:
        return cls(error.status, error.code, error.message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequestException", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NotFoundException", message)


def message_rejected(message: str) -> ApiError:
    return ApiError(400, "MessageRejected", message)


def service_unavailable(message: str) -> ApiError:
    """AWS's common 503: the SDKs retry it (through the load balancer: another node)."""
    return ApiError(503, "ServiceUnavailable", message)


def unsupported(method: str, path: str, operation: str = "") -> ApiError:
    what = f"the SES operation {operation}" if operation else f"{method} {path}"
    return ApiError(404 if not operation else 400, "BadRequestException" if operation
                    else "NotFoundException",
                    f"relay does not support {what}")


def _ses_text(text: str) -> str:
    """The SMTP text without relay's "Message rejected: " prefix (the error type says it)."""
    for prefix in ("Message rejected: ", "Throttling failure: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def for_refusal(code: int, enhanced: str, text: str) -> ApiError:
    """The SES v2 error for a refusal of the submission pipeline."""
    if "Maximum sending rate exceeded" in text:
        return ApiError(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
    if "Daily message quota exceeded" in text:
        return ApiError(429, "LimitExceededException", "Daily message quota exceeded.")
    if text.startswith("Sending paused"):
        return ApiError(400, "SendingPausedException", text)
    if "MailFromDomainNotVerified" in text:
        return ApiError(400, "MailFromDomainNotVerifiedException",
                        _ses_text(text).removeprefix("MailFromDomainNotVerified: "))
    if text.startswith("Configuration Set does not exist"):
        return not_found(text)
    if code == 452:
        return ApiError(503, "ServiceUnavailable", "Insufficient system storage; try again "
                        "later")
    if code // 100 == 4:
        return ApiError(503, "ServiceUnavailable", _ses_text(text))
    return message_rejected(_ses_text(text))
