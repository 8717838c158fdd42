"""The sandbox rule at RCPT: verified addresses and domains of the tenant, and the
mailbox simulator, pass; any other recipient gets SES's 554 naming it."""

from __future__ import annotations

import pytest

from relay.tenants.refusals import NOT_VERIFIED
from relay.tenants.sandbox import decide_sandbox_recipient

SIMULATOR = "simulator.relay.test"
VERIFIED = {"ops@partner.test", "acme.test"}


def _sim(address: str) -> bool:
    return address.rpartition("@")[2] == SIMULATOR


@pytest.mark.parametrize("recipient", [
    "ops@partner.test", "OPS@Partner.Test", "anyone@acme.test", "x@ACME.TEST",
    "success@simulator.relay.test", "bounce+label@simulator.relay.test",
])
def test_allowed(recipient: str) -> None:
    assert decide_sandbox_recipient(recipient, VERIFIED, _sim) is None
    assert decide_sandbox_recipient(recipient, VERIFIED.__contains__, _sim) is None


@pytest.mark.parametrize("recipient", [
    "other@partner.test",       # only the address of partner.test is verified
    "someone@example.test",
    "a@sub.acme.test",          # a subdomain is another identity
    "acme.test",                # no local part: not the domain identity
    "@acme.test",
])
def test_refused_with_ses_wording_naming_the_address(recipient: str) -> None:
    refusal = decide_sandbox_recipient(recipient, VERIFIED, _sim)
    assert refusal is not None
    assert (refusal.code, refusal.enhanced) == (NOT_VERIFIED.code, NOT_VERIFIED.enhanced)
    assert str(refusal) == ("554 5.7.1 Message rejected: Email address is not verified. "
                            f"The following identities failed the check: {recipient}")


def test_nothing_verified_leaves_only_the_simulator() -> None:
    assert decide_sandbox_recipient("a@b.test", set(), _sim) is not None
    assert decide_sandbox_recipient("success@simulator.relay.test", set(), _sim) is None
