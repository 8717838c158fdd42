"""Helpers of the tests that run several real relay processes on one Redis: a node's
config, starting the nodes side by side (each start waits for its ready line), and an
SES API access key distributed to every node as a deployment would copy the files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)


def node_config(tmp: Path, name: str, redis_url: str, *, nameserver: str = "127.0.0.1:1",
                delivery_port: int = 0, api_port: int | None = None,
                tenants: dict[str, Any] | None = None,
                cluster: dict[str, Any] | None = None) -> Path:
    """Node `name`: a trusted-network listener on 127.0.0.1 (the default tenant), fast
    Redis timeouts, optionally the SES API on `api_port`."""
    listener = listener_config("none", "none", trusted_networks=["127.0.0.0/8"])
    data: dict[str, Any] = relay_config(tmp / name / "state", nameserver,
                                        delivery_port or free_port(), [listener])
    data["cluster"] = {"redis_url": redis_url, "node_id": name, "command_timeout": "500ms",
                       "connect_timeout": "500ms", **(cluster or {})}
    if tenants:
        data["tenants"] = tenants
    if api_port is not None:
        data["api"] = {"enabled": True, "address": f"127.0.0.1:{api_port}"}
    return write_config(tmp / name / "relay.toml", data)


def start_all(configs: Sequence[Path]) -> list[RelayProcess]:
    """Start a relay per config, side by side; all started or none left running."""
    procs = [RelayProcess(c, log_dir=c.parent / "logs") for c in configs]
    with ThreadPoolExecutor(len(procs)) as pool:
        futures = [pool.submit(p.start) for p in procs]
        errors = [f.exception() for f in futures]
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        for p in procs:
            if p.running:
                p.stop()
        raise failed
    return procs


def api_key(configs: Sequence[Path], user: str = "app") -> dict[str, str]:
    """An SMTP user and an SES API access key made on the first node, the credential
    files copied to the others."""
    first = configs[0]
    added = run_cli("user", "add", user, "--password-stdin", config=first,
                    input="pw-123456789\n")
    assert added.returncode == 0, added.stderr
    made = run_cli("user", "keys", "create", user, "--json", config=first)
    assert made.returncode == 0, made.stderr
    key: dict[str, str] = json.loads(made.stdout)
    for other in configs[1:]:
        state = other.parent / "state"
        state.mkdir(parents=True, exist_ok=True)
        for name in ("users.json", "api_keys.json", "api_keys.key"):
            shutil.copy2(first.parent / "state" / name, state / name)
    return key
