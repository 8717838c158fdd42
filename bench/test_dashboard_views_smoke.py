"""Smoke run of bench/dashboard_views.py (each dashboard view timed against a relay whose
history holds many messages), ~10 s: a small history, every view loads and the page shows
no error. No timing assertions (the machine is shared); the figures for 100,000 messages
come from `python bench/dashboard_views.py` run by hand."""

from __future__ import annotations

from pathlib import Path

import dashboard_views  # bench/ is on sys.path (bench/conftest.py)
import pytest

from relay.testing.require import require_program

pytestmark = pytest.mark.slow


def test_every_dashboard_view_loads_over_a_built_history(tmp_path: Path) -> None:
    require_program("chromium")
    result = dashboard_views.run(1000, tmp_path)
    print(result)
    assert set(result["views"]) == {
        "messages: newest 50", "messages: one recipient", "messages: subject word + status",
        "messages: next page", "message: timeline", "messages: no match (a tenant's all)",
        "statistics: 24 h", "statistics: 7 days", "statistics: 14 days per provider",
        "suppression", "queue"}
    assert all(seconds > 0 for seconds in result["views"].values())
