"""KeyStore's look at a domain's state.json: at most every `recheck` seconds on the
server's per-message path, always for edits (read-modify-write) and after refresh()."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.dkim.keys import DkimError, KeyStore


def test_state_is_looked_at_most_every_recheck(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    server = KeyStore(tmp_path / "dkim", clock, rsa_bits=1024, recheck=0.5)
    cli = KeyStore(tmp_path / "dkim", clock, rsa_bits=1024)
    assert server.get("example.com") is None
    cli.keygen("example.com", key_type="ed25519")
    assert server.get("example.com") is None  # within recheck
    assert server.get("example.com", fresh=True) is not None
    clock.advance(0.6)
    state = server.get("example.com")
    assert state is not None and len(state.generations) == 1
    cli.rotate("example.com")
    assert len(server.get("example.com").generations) == 1  # type: ignore[union-attr]
    server.refresh()
    assert len(server.get("example.com").generations) == 2  # type: ignore[union-attr]


def test_edits_never_start_from_a_stale_copy(tmp_path: Path) -> None:
    """keygen/rotate in the server read the file afresh under its lock, so an edit made
    by the CLI a moment ago is not overwritten."""
    clock = FakeClock(1_800_000_000.0)
    server = KeyStore(tmp_path / "dkim", clock, rsa_bits=1024, recheck=3600)
    cli = KeyStore(tmp_path / "dkim", clock, rsa_bits=1024)
    cli.keygen("example.com", key_type="ed25519")
    assert server.get("example.com") is not None
    cli.rotate("example.com", selector="second")
    # The server's cached copy has one generation; its rotate must see the pending one.
    with pytest.raises(DkimError, match="pending selector 'second'"):
        server.rotate("example.com", selector="third")
    names = [g.name for g in cli.get("example.com").generations]  # type: ignore[union-attr]
    assert names[-1] == "second"
