"""[tenants] and [reputation]: defaults, validation naming key, value and expectation, and
the sections handed to the quota and reputation cores as they are."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, loads
from relay.tenants.model import Tenant
from relay.tenants.quota import Cap, Limits, effective_limits
from relay.tenants.reputation import Lines


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text)
    return info.value.problems


def test_defaults_are_ses_figures() -> None:
    cfg = loads("")
    assert (cfg.tenants.max_24h_send, cfg.tenants.max_send_rate) == (0, 0.0)
    assert (cfg.tenants.sandbox_max_24h_send, cfg.tenants.sandbox_max_send_rate) == (200, 1.0)
    assert Lines.of(cfg.reputation) == Lines()
    assert (cfg.reputation.bounce_review, cfg.reputation.bounce_pause) == (0.05, 0.10)
    assert (cfg.reputation.complaint_review, cfg.reputation.complaint_pause) == (0.001, 0.005)


def test_sections_feed_the_cores() -> None:
    cfg = loads('[tenants]\nmax_24h_send = 5000\nmax_send_rate = 0.5\n'
                '[reputation]\nmin_volume = 50\nwindow = "2d"\nmax_window = "10d"\n')
    assert effective_limits(cfg.tenants, Tenant("t")) == Limits(Cap(5000, 0.5))
    assert effective_limits(cfg.tenants, Tenant("t", sandbox=True)) == Limits(Cap(200, 0.5))
    lines = Lines.of(cfg.reputation)
    assert (lines.min_volume, lines.window, lines.max_window) == (50, 2 * 86400.0,
                                                                  10 * 86400.0)


@pytest.mark.parametrize(("text", "expected"), [
    ("[reputation]\nbounce_review = 0.2",
     "reputation: bounce_review = 0.2: expected below bounce_pause (0.1), the review line "
     "comes before the pause line"),
    ("[reputation]\ncomplaint_review = 0.005",
     "reputation: complaint_review = 0.005: expected below complaint_pause (0.005)"),
    ("[reputation]\nbounce_pause = 1.5", "reputation.bounce_pause: expected a number > 0 "
                                         "and < 1, got 1.5"),
    ("[reputation]\ncomplaint_review = 0", "reputation.complaint_review: expected a number "
                                           "> 0 and < 1, got 0"),
    ("[reputation]\nmin_volume = 0", "reputation.min_volume: expected an integer >= 1, got 0"),
    ('[reputation]\nwindow = "10m"', 'reputation: window = "10m": expected at least 1 hour'),
    ('[reputation]\nwindow = "40d"', 'reputation: max_window = "30d": expected at least '
                                     'window ("40d")'),
    ("[tenants]\nmax_send_rate = -1", "tenants.max_send_rate: expected a number >= 0, got -1"),
    ('[tenants]\nmax_24h_send = "lots"',
     'tenants.max_24h_send: expected an integer >= 0, got "lots"'),
    ("[tenants]\nsandbox_max_24h_send = 0",
     "tenants.sandbox_max_24h_send: expected an integer >= 1, got 0"),
    ("[tenants]\nsandbox_max_send_rate = 0",
     "tenants.sandbox_max_send_rate: expected a number > 0, got 0"),
    ("[tenants]\nmax_daily = 5", "tenants.max_daily: unknown key"),
])
def test_problems_name_key_value_and_expectation(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found
