"""`relay tenant ...` and the tenant options of `relay user` against a real spool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.cli import main
from relay.clock import SystemClock
from relay.identity.store import IdentityStore
from relay.queue.store import QueueStore
from relay.tenants.store import TenantStore
from relay.testing.process import run_cli

CONFIG = """
[server]
state_dir = "{state}"

[[configuration_set]]
name = "news"
"""


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`relay --config FILE ARGS` (the --config of the arguments put first: after `user
    add` argparse would read it as an abbreviation of --configuration-set)."""
    rest = list(args)
    i = rest.index("--config")
    code = main([*rest[i:i + 2], *rest[:i], *rest[i + 2:]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_add_list_show_production_quota(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "tenant", "add", "acme", "--max-24h-send", "500",
                        "--max-send-rate", "2", "--suppression-scope", "tenant",
                        "--config", cfg)
    assert code == 0 and "in the sandbox" in out
    assert _run(capsys, "tenant", "add", "beta", "--no-sandbox", "--config", cfg)[0] == 0
    code, _, err = _run(capsys, "tenant", "add", "acme", "--config", cfg)
    assert code == 1 and "tenant 'acme' already exists" in err
    code, _, err = _run(capsys, "tenant", "add", "no good", "--config", cfg)
    assert code == 1 and "tenant name 'no good': expected 1-64 letters" in err
    code, _, err = _run(capsys, "tenant", "add", "x", "--max-24h-send", "-5", "--config", cfg)
    assert code == 1 and "max_24h_send: expected a whole number >= 0" in err and "-5" in err

    code, out, _ = _run(capsys, "tenant", "list", "--json", "--config", cfg)
    rows = {r["name"]: r for r in json.loads(out)}
    assert list(rows) == ["acme", "beta", "default"]
    assert (rows["acme"]["sandbox"], rows["beta"]["sandbox"], rows["default"]["sandbox"]) \
        == (True, False, False)
    assert rows["acme"]["max_24h_send"] == 500 and rows["acme"]["suppression_scope"] == "tenant"
    code, out, _ = _run(capsys, "tenant", "list", "--config", cfg)
    assert out.splitlines()[0].startswith("NAME") and "STATUS" in out

    code, out, _ = _run(capsys, "tenant", "show", "acme", "--config", cfg)
    shown = dict(line.split(":", 1) for line in out.splitlines())
    assert shown["Status"].strip() == "Healthy"
    # In the sandbox: the sandbox's limits hold; its own quota is shown beside them.
    assert shown["Max24HourSend"].strip() == "200 (own: 500)"
    assert shown["MaxSendRate"].strip() == "1.0 (own: 2.0)"
    assert shown["SentLast24Hours"].strip() == "0"
    assert shown["LastFreshStart"].strip() == "-"
    assert shown["Sandbox"].strip() == "yes"

    assert _run(capsys, "tenant", "production", "acme", "--config", cfg)[0] == 0
    assert _run(capsys, "tenant", "quota", "acme", "--max-send-rate", "5", "--config",
                cfg)[0] == 0
    code, out, _ = _run(capsys, "tenant", "show", "acme", "--json", "--config", cfg)
    data = json.loads(out)
    assert data["sandbox"] is False and data["production_at"]
    assert (data["max_24h_send"], data["max_send_rate"]) == (500, 5.0)
    code, _, err = _run(capsys, "tenant", "show", "ghost", "--config", cfg)
    assert code == 1 and "no tenant 'ghost'" in err


def test_pause_resume_and_remove_rules(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "tenant", "add", "acme", "--config", cfg)[0] == 0
    code, out, _ = _run(capsys, "tenant", "pause", "acme", "--reason", "list cleanup",
                        "--config", cfg)
    assert code == 0 and "tenant:acme paused" in out
    code, out, _ = _run(capsys, "tenant", "show", "acme", "--json", "--config", cfg)
    st = json.loads(out)["status_record"]
    assert (st["status"], st["reason"], st["automatic"]) == ("Paused", "list cleanup", False)
    assert st["changed_by"].startswith("cli")
    code, out, _ = _run(capsys, "tenant", "resume", "acme", "--config", cfg)
    assert code == 0
    code, out, _ = _run(capsys, "tenant", "show", "acme", "--config", cfg)
    shown = dict(line.split(":", 1) for line in out.splitlines())
    assert shown["Status"].strip() == "Healthy" and shown["LastFreshStart"].strip() != "-"
    # A configuration set of the config can be paused; an unknown one is named.
    assert _run(capsys, "tenant", "pause", "news", "--configuration-set", "--config",
                cfg)[0] == 0
    code, _, err = _run(capsys, "tenant", "pause", "nope", "--configuration-set",
                        "--config", cfg)
    assert code == 1 and "no [[configuration_set]] named 'nope'" in err
    code, _, err = _run(capsys, "tenant", "pause", "ghost", "--config", cfg)
    assert code == 1 and "no tenant 'ghost'" in err

    # Credentials: unknown tenant refused; removal refused while one belongs to it.
    code, _, err = _run(capsys, "user", "add", "app", "--tenant", "nope",
                        "--generate-password", "--config", cfg)
    assert code == 1 and "no tenant 'nope'" in err
    code, _, err = _run(capsys, "user", "add", "app", "--tenant", "acme",
                        "--generate-password", "--config", cfg)
    assert code == 0, err
    code, _, err = _run(capsys, "tenant", "remove", "acme", "--config", cfg)
    assert code == 1 and "tenant 'acme' still has credentials: app" in err
    code, _, err = _run(capsys, "tenant", "remove", "default", "--config", cfg)
    assert code == 1 and "'default' cannot be removed" in err
    assert _run(capsys, "user", "tenant", "app", "default", "--config", cfg)[0] == 0
    code, out, _ = _run(capsys, "tenant", "remove", "acme", "--config", cfg)
    assert code == 0 and "removed" in out
    code, out, _ = _run(capsys, "tenant", "list", "--json", "--config", cfg)
    assert [r["name"] for r in json.loads(out)] == ["default"]


def test_user_tenants_and_quota_override(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("platform", "a", "b"):
        assert _run(capsys, "tenant", "add", name, "--config", cfg)[0] == 0
    code, _, err = _run(capsys, "user", "add", "svc", "--tenant", "platform", "--tenants",
                        "a,b", "--tenants", "a", "--generate-password", "--config", cfg)
    assert code == 0, err
    code, _, err = _run(capsys, "user", "add", "legacy", "--generate-password",
                        "--config", cfg)
    assert code == 0, err
    code, _, err = _run(capsys, "user", "quota", "svc", "--max-24h-send", "100",
                        "--max-send-rate", "1.5", "--config", cfg)
    assert code == 0, err
    code, _, err = _run(capsys, "user", "quota", "svc", "--max-send-rate", "-1",
                        "--config", cfg)
    assert code == 1 and "max_send_rate: expected a number >= 0" in err
    code, out, _ = _run(capsys, "user", "show", "svc", "--json", "--config", cfg)
    data = json.loads(out)
    assert (data["tenant"], data["tenants"], data["max_24h_send"], data["max_send_rate"]) \
        == ("platform", ["platform", "a", "b"], 100, 1.5)
    code, out, _ = _run(capsys, "user", "show", "svc", "--config", cfg)
    assert "Tenants:" in out and "platform, a, b" in out and "Max24HourSend:" in out
    code, out, _ = _run(capsys, "user", "list", "--config", cfg)
    head, *lines = out.splitlines()
    assert "TENANT" in head and "QUOTA" in head
    legacy = next(line for line in lines if line.startswith("legacy"))
    assert legacy[head.index("TENANT"):].startswith("default")
    assert _run(capsys, "user", "quota", "svc", "--clear", "--config", cfg)[0] == 0
    code, out, _ = _run(capsys, "user", "show", "svc", "--json", "--config", cfg)
    assert json.loads(out)["max_24h_send"] is None
    code, _, err = _run(capsys, "tenant", "remove", "b", "--config", cfg)
    assert code == 1 and "still has credentials: svc" in err


def test_an_edit_by_the_cli_process_shows_in_a_running_view(cfg: str, tmp_path: Path) -> None:
    """The CLI is another process on the same spool; the server's view (recheck 0.5 s)
    sees its change without being told."""
    queue = QueueStore(tmp_path / "state" / "queue", SystemClock())
    try:
        view = TenantStore(queue, queue.clock, recheck=0.5)
        assert view.get("acme") is None
        added = run_cli("tenant", "add", "acme", config=Path(cfg))
        assert added.returncode == 0, added.stderr
        paused = run_cli("tenant", "pause", "acme", config=Path(cfg))
        assert paused.returncode == 0, paused.stderr
        view.invalidate()  # the 0.5 s passed (the processes took longer than that)
        assert view.get("acme") is not None
        assert view.paused("acme") is not None
    finally:
        queue.close_sync()


def test_identities_can_belong_to_a_tenant(cfg: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "identity", "add", "acme.example", "--tenant", "acme",
                        "--config", cfg)
    assert code == 1 and "no tenant 'acme'" in err
    assert _run(capsys, "tenant", "add", "acme", "--config", cfg)[0] == 0
    code, out, err = _run(capsys, "identity", "add", "acme.example", "--tenant", "acme",
                          "--config", cfg)
    assert code == 0 and "for tenant 'acme'" in out, err
    assert _run(capsys, "identity", "add", "shared.example", "--config", cfg)[0] == 0
    code, out, _ = _run(capsys, "identity", "list", "--json", "--config", cfg)
    assert {r["name"]: r["tenant"] for r in json.loads(out)} == {
        "acme.example": "acme", "shared.example": ""}
    assert _run(capsys, "identity", "tenant", "acme.example", "--config", cfg)[0] == 0
    store = IdentityStore.in_state_dir(tmp_path / "state")
    assert store.owner("acme.example") == "" and store.owner("unknown.example") == ""
    assert _run(capsys, "identity", "tenant", "shared.example", "acme", "--config", cfg)[0] == 0
    assert IdentityStore.in_state_dir(tmp_path / "state").owner("shared.example") == "acme"
