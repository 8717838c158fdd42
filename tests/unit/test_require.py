"""relay.testing.require: skip when a program is missing, fail instead under RELAY_REQUIRE_ALL=1."""

from __future__ import annotations

import pytest

from relay.testing.require import require_program

ABSENT = "relay-no-such-program-xyz"


def test_present_program_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_REQUIRE_ALL", "1")
    require_program("sh")


@pytest.mark.parametrize("value", [None, "", "0"])
def test_absent_program_skips(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("RELAY_REQUIRE_ALL", raising=False)
    else:
        monkeypatch.setenv("RELAY_REQUIRE_ALL", value)
    with pytest.raises(pytest.skip.Exception, match=f"'{ABSENT}' is not installed"):
        require_program(ABSENT)


def test_absent_program_fails_when_all_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception, match="RELAY_REQUIRE_ALL=1"):
        require_program(ABSENT)
