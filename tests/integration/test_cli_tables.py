"""CLI polish: list commands print aligned tables (or JSON with --json), a credential's
default configuration set, and a progress bar for queue bulk actions (--progress)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from relay.clock import SystemClock
from relay.queue.ops import NewMessage
from relay.queue.store import QueueStore
from relay.testing.process import run_cli

CONFIG = """
[server]
state_dir = "{state}"

[[configuration_set]]
name = "transactional"
"""


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state"), encoding="utf-8")
    return path


def test_user_default_configuration_set_and_table(tmp_path: Path) -> None:
    config = _config(tmp_path)
    added = run_cli("user", "add", "app", "--password-stdin", "--configuration-set",
                    "Transactional", config=config, input="pw-long-enough\n")
    assert added.returncode == 0, added.stderr
    bad = run_cli("user", "add", "ops", "--password-stdin", "--configuration-set", "nope",
                  config=config, input="pw-long-enough\n")
    assert bad.returncode == 1 and "no [[configuration_set]] named 'nope'" in bad.stderr
    assert run_cli("user", "add", "ops", "--password-stdin", config=config,
                   input="pw-long-enough\n").returncode == 0
    table = run_cli("user", "list", config=config).stdout.splitlines()
    assert table[0].startswith("NAME") and "CONFIGURATION SET" in table[0]
    col = table[0].index("CONFIGURATION SET")
    assert table[1].startswith("app") and table[1][col:].startswith("transactional")
    assert table[2].startswith("ops") and table[2][col:].startswith("-")
    changed = run_cli("user", "configuration-set", "ops", "transactional", config=config)
    assert changed.returncode == 0, changed.stderr
    rows = json.loads(run_cli("user", "list", "--json", config=config).stdout)
    assert {r["name"]: r["configuration_set"] for r in rows} == {
        "app": "transactional", "ops": "transactional"}
    assert run_cli("user", "configuration-set", "ops", config=config).returncode == 0
    rows = json.loads(run_cli("user", "list", "--json", config=config).stdout)
    assert {r["name"]: r["configuration_set"] for r in rows}["ops"] == ""


def test_queue_and_suppression_tables_and_bulk_progress(tmp_path: Path) -> None:
    config = _config(tmp_path)

    async def fill() -> None:
        store = QueueStore(tmp_path / "state" / "queue", SystemClock())
        await store.start()
        for i in range(3):
            await store.submit_record(NewMessage(
                sender="app@example.com", recipients=[f"u{i}@example.net"],
                body=b"Subject: hi\r\n\r\nhello\r\n", headers={"Subject": "hi"}))
        await store.close()

    asyncio.run(fill())
    listed = run_cli("queue", "list", config=config)
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "RECEIVED", "SIZE", "SENDER", "RECIPIENTS"]
    assert len(lines) == 4 and "u0@example.net (queued, 0)" in listed.stdout
    widths = {line.index("app@example.com") for line in lines[1:]}
    assert len(widths) == 1  # aligned
    assert run_cli("suppression", "add", "gone@example.net", config=config).returncode == 0
    sup = run_cli("suppression", "list", config=config).stdout.splitlines()
    assert sup[0].split() == ["ADDRESS", "REASON", "SINCE", "MESSAGE"]
    assert sup[1].startswith("gone@example.net") and " BOUNCE " in sup[1]
    quiet = run_cli("queue", "retry", "--all", config=config)
    assert quiet.returncode == 0 and "[" not in quiet.stderr  # not a TTY: no bar
    deleted = run_cli("queue", "delete", "--all", "--progress", config=config)
    assert deleted.returncode == 0, deleted.stderr
    assert "delete [" in deleted.stderr and "3/3" in deleted.stderr
    assert "delete: 3 message(s)" in deleted.stdout
