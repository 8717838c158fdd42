"""Fixtures of the reliability suite: a real small disk (`tiny_disk`, a tmpfs) for the
disk-full tests. The in-process submission server with real TLS (`server`) is in
tests/conftest.py.

Attack tests speak raw bytes through `RawClient` (relay.testing.submission) so every
input is exactly the one in RELIABILITY.md §2.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.testing.disk import mounted_tmpfs


@pytest.fixture
def tiny_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB tmpfs (another size with `@pytest.mark.parametrize("tiny_disk", ["8m"],
    indirect=True)`); skipped without root, a failure under RELAY_REQUIRE_ALL=1."""
    with mounted_tmpfs(tmp_path / "tiny", getattr(request, "param", "1m")) as mnt:
        yield mnt
