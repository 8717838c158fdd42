"""systemd/relay.service: `systemd-analyze verify` accepts it; the promised hardening is there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from relay.testing.require import require_program

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "relay.service"


def test_unit_verifies(tmp_path: Path) -> None:
    require_program("systemd-analyze")
    # verify insists that ExecStart exists: point it at this venv's relay script.
    relay_bin = Path(sys.executable).parent / "relay"
    if not relay_bin.exists():
        relay_bin = Path(shutil.which("true") or "/bin/true")
    unit = tmp_path / "relay.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/relay", str(relay_bin)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "relay.service" not in r.stderr, r.stderr  # no warnings about our unit


def test_unit_settings() -> None:
    lines = {ln.strip() for ln in UNIT.read_text().splitlines()}
    for want in (
        "User=relay",
        "ExecStart=/usr/local/bin/relay serve --config /etc/relay/relay.toml",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "StateDirectory=relay", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
        "NoNewPrivileges=yes", "LimitNOFILE=65536", "Restart=on-failure", "KillSignal=SIGTERM",
        "Type=notify", "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert want in lines, want
    assert any(ln.startswith("TimeoutStopSec=") for ln in lines)
    sysusers = (ROOT / "systemd" / "relay.sysusers.conf").read_text()
    assert any(ln.split()[:2] == ["u", "relay"] for ln in sysusers.splitlines())
