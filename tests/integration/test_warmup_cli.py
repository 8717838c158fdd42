"""`relay warmup status|set|freeze|resume|plan` against a real LMDB state dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.cli import main

CONFIG = """
[server]
state_dir = "{state}"
[delivery]
pool = "dedicated"
[[pool]]
name = "dedicated"
ips = [{{address = "127.0.0.10", ehlo = "mta1.test"}}, "127.0.0.11"]
warmup_plan = "ses-standard"
warmup_start = "2020-01-01"
overflow = "shared"
[[pool]]
name = "shared"
ips = ["127.0.0.12"]
"""


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    return str(path)


def test_status_set_freeze_resume(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["warmup", "status", "--config", cfg, "--json"]) == 0
    rows = {r["ip"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"127.0.0.10", "127.0.0.11", "127.0.0.12"}
    assert rows["127.0.0.10"]["day"] == 1 and rows["127.0.0.10"]["cap_today"] == 200
    assert rows["127.0.0.10"]["next_step"]["day"] == 2
    assert rows["127.0.0.12"]["plan"] is None and rows["127.0.0.12"]["cap_today"] is None

    assert main(["warmup", "set", "127.0.0.10", "--day", "45", "--config", cfg]) == 0
    assert main(["warmup", "freeze", "127.0.0.11", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["warmup", "status", "--config", cfg, "--json"]) == 0
    rows = {r["ip"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["127.0.0.10"]["day"] == 45 and rows["127.0.0.10"]["cap_today"] == 50_000
    assert rows["127.0.0.10"]["next_step"] is None
    assert rows["127.0.0.11"]["frozen"] is True
    assert main(["warmup", "resume", "127.0.0.11", "--config", cfg]) == 0
    assert main(["warmup", "status", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "127.0.0.11" in out and "ses-standard" in out


def test_errors(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["warmup", "freeze", "192.0.2.1", "--config", cfg]) == 1
    assert "in no [[pool]]" in capsys.readouterr().err
    assert main(["warmup", "set", "127.0.0.10", "--day", "0", "--config", cfg]) == 1
    assert main(["warmup", "plan", "--daily-target", "5", "--plan", "x", "--config", cfg]) == 1
    with pytest.raises(SystemExit) as info:
        main(["warmup", "set", "127.0.0.10", "--config", cfg])
    assert info.value.code == 2


def test_plan(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["warmup", "plan", "--daily-target", "10000000", "--peak-hourly", "2000000",
                 "--config", cfg, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ips"] == 480 and data["full_volume_day"] == 38
    assert len(data["schedule"]) == 45
    assert main(["warmup", "plan", "--daily-target", "1000000", "--plan",
                 "double-every-other-day", "--config", cfg]) == 0
    assert "full volume on day" in capsys.readouterr().out
