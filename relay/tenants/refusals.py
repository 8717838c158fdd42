"""PURE: the SMTP refusals of the account model, in SES's words.

`Refusal` has the fields of relay.smtp.replies.Reply (code, enhanced status code, text)
in the same order, so the SMTP session turns one into its reply with `Reply(*refusal)`;
these modules sit below the SMTP layer and cannot import it.
"""

from __future__ import annotations

from typing import NamedTuple


class Refusal(NamedTuple):
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


# SES's SMTP answers past MaxSendRate and Max24HourSend, word for word.
RATE_EXCEEDED = Refusal(454, "4.7.0", "Throttling failure: Maximum sending rate exceeded.")
DAILY_QUOTA_EXCEEDED = Refusal(454, "4.7.0", "Throttling failure: Daily message quota exceeded.")

# SES's sandbox refusal of a recipient that is not a verified identity ("… failed the
# check in region R: A"; relay has no regions). `{address}` is the recipient.
NOT_VERIFIED = Refusal(554, "5.7.1", "Message rejected: Email address is not verified. "
                                     "The following identities failed the check: {address}")

# A paused tenant or configuration set.
PAUSED_ACCOUNT = Refusal(554, "5.7.1", "Sending paused for this account")
PAUSED_CONFIGURATION_SET = Refusal(554, "5.7.1",
                                   "Sending paused for configuration set {name}")


def not_verified(address: str) -> Refusal:
    return NOT_VERIFIED._replace(text=NOT_VERIFIED.text.format(address=address))


def paused_configuration_set(name: str) -> Refusal:
    return PAUSED_CONFIGURATION_SET._replace(
        text=PAUSED_CONFIGURATION_SET.text.format(name=name))
