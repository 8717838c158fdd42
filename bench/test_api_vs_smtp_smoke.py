"""Smoke run of bench/api_vs_smtp.py (~10 s): one relay, the same messages sent over SMTP
and over the SES API with boto3, every one accepted and at the sink. No timing
assertions (the machine is shared); the figures come from running the script by hand."""

from __future__ import annotations

import json
from pathlib import Path

import api_vs_smtp  # bench/ is on sys.path (bench/conftest.py)
import pytest

pytest.importorskip("boto3")
pytestmark = pytest.mark.slow


def test_api_and_smtp_accept_and_deliver_the_same_messages(tmp_path: Path) -> None:
    result = api_vs_smtp.run(tmp_path, messages=10, clients=2, size=2048)
    print("\n" + api_vs_smtp.table(result))
    context = json.dumps(result, default=str)
    for mode in ("smtp", "api"):
        assert result[mode]["accepted"] == 10 and not result[mode]["failed"], context
    assert result["delivered"] == 20, context
