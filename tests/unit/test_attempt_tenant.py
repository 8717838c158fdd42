"""The per-attempt log line and the Attempt observers see the message's tenant."""

from __future__ import annotations

import logging

import pytest

from relay.delivery.attempts import Attempt, record_attempts
from relay.delivery.outcome import Outcome

OK = [Outcome("delivered", 250, "2.0.0", "ok")]


def test_attempt_line_and_observers_name_the_tenant(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Attempt] = []
    with caplog.at_level(logging.INFO, logger="relay.delivery"):
        record_attempts("q1", ["a@example.net"], OK, "192.0.2.1",
                        "gmail", [seen.append], tenant="acme")
        record_attempts("q2", ["b@example.net"], OK, "192.0.2.1",
                        "gmail", [seen.append])
    assert [a.tenant for a in seen] == ["acme", "default"]
    lines = [r for r in caplog.records if r.getMessage().startswith("attempt ")]
    assert "tenant=acme " in lines[0].getMessage()
    assert lines[0].__dict__["tenant"] == "acme"
    assert "tenant=default " in lines[1].getMessage()
