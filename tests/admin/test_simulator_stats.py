"""The mailbox simulator in the statistics: its deliveries, bounces and complaints are all
counted (Prometheus, the dashboard's per-provider panel) under provider "simulator", every
attempt writes the same JSON delivery log line as a network attempt, and none of it moves
the warm-up state (caps used, reputation) of any IP. One real `relay serve` process with a
warming pool and the admin API (adminkit), JSON logs on stderr."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from adminkit import Admin, make_admin_relay

from relay.testing.dnsserver import DnsServer
from relay.testing.sink import Sink
from relay.testing.wait import wait_until

SIM = "simulator.relay.test"
SENT = {"success": 4, "bounce": 3, "complaint": 3}


@pytest.fixture(scope="module")
def json_admin(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
               sinks: tuple[Sink, Sink]) -> Iterator[Admin]:
    a = make_admin_relay(tmp_path_factory.mktemp("simstats"), dns, sinks,
                         extra_args=("--log-format", "json"))
    try:
        yield a
    finally:
        a.relay.stop()


def _sample(text: str, name: str, provider: str) -> float:
    found = re.search(rf'^{name}\{{provider="{provider}",source_ip="[^"]*"\}} (\S+)$', text,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _warmup_without_clock(admin: Admin) -> list[dict[str, Any]]:
    status, body = admin.call("GET", "/api/warmup")
    assert status == 200, body
    rows: list[dict[str, Any]] = body["ips"]
    return rows


def _attempt_lines(admin: Admin) -> list[dict[str, Any]]:
    lines = []
    for line in admin.relay.stderr().splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("logger") == "relay.delivery" and rec.get("provider") == "simulator":
            lines.append(rec)
    return lines


def test_simulator_mail_is_counted_and_logged_but_never_moves_reputation(
        json_admin: Admin) -> None:
    admin = json_admin
    warmup_before = _warmup_without_clock(admin)
    ids: dict[str, list[str]] = {}
    for name, n in SENT.items():
        ids[name] = [admin.send(f"{name}+{i}@{SIM}", f"sim {name} {i}") for i in range(n)]
    total = sum(SENT.values())

    def complaints_seen() -> int:
        _, body = admin.call("GET", "/api/events?type=Complaint")
        return sum(1 for ev in body["events"] if ev["mail"]["messageId"] in ids["complaint"])

    wait_until(lambda: complaints_seen() == SENT["complaint"], 15, "every Complaint event")
    wait_until(lambda: len(_attempt_lines(admin)) >= total, 15, "one log line per attempt")

    _, text = admin.call("GET", "/metrics", token=None)
    assert _sample(text, "relay_deliveries_total", "simulator") == \
        SENT["success"] + SENT["complaint"], text
    assert _sample(text, "relay_bounces_total", "simulator") == SENT["bounce"], text
    assert _sample(text, "relay_complaints_total", "simulator") == SENT["complaint"], text
    assert _sample(text, "relay_complaints_total", "other") == 0, text

    # The panel reads the sending statistics, which each process writes once per
    # [history] flush: they show within moments.
    def panel() -> tuple[int, int, int, int]:
        _, dash = admin.call("GET", "/api/dashboard")
        p = dash["providers"].get("simulator", {})
        return (p.get("attempts"), p.get("delivered"), p.get("bounced"), p.get("complained"))

    want = (total, SENT["success"] + SENT["complaint"], SENT["bounce"], SENT["complaint"])
    try:
        wait_until(lambda: panel() == want, 15, "the simulator's panel")
    except AssertionError:
        raise AssertionError(f"(attempts, delivered, bounced, complained): {panel()}, "
                             f"expected {want}") from None

    lines = _attempt_lines(admin)
    assert len(lines) == total
    by_id = {rec["queue_id"]: rec for rec in lines}
    assert set(by_id) == {mid for group in ids.values() for mid in group}
    for mid in ids["bounce"]:
        assert by_id[mid]["result"] == "bounced"
        assert by_id[mid]["response"].startswith("550 5.1.1")
    for mid in ids["success"] + ids["complaint"]:
        assert by_id[mid]["result"] == "delivered"
    assert all(rec["recipient_domain"] == SIM for rec in lines)

    # No IP used any cap for them, and no complaint or bounce reached any IP's state.
    assert _warmup_without_clock(admin) == warmup_before
    assert all(row["sent_today"] == 0 and not row["frozen"] for row in warmup_before)


def test_the_attempt_log_line_has_the_fields_of_a_network_attempt(
        json_admin: Admin, tmp_path: Path) -> None:
    admin = json_admin
    before = admin.sinks[0].message_count
    network_id = admin.send("friend@ok.test", "through the network")
    admin.sinks[0].wait_for(before + 1, timeout=15)
    sim_id = admin.send(f"success@{SIM}", "through the simulator")

    def line_for(mid: str) -> dict[str, Any] | None:
        for line in admin.relay.stderr().splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("logger") == "relay.delivery" and rec.get("queue_id") == mid:
                    return dict(rec)
        return None

    network = wait_until(lambda: line_for(network_id), 15, "the network attempt's line")
    simulated = wait_until(lambda: line_for(sim_id), 15, "the simulator attempt's line")
    assert set(simulated) == set(network)
    assert (simulated["provider"], simulated["source_ip"]) == ("simulator", "simulator")
    # Every field the README promises, and where the attempt went, how and how long.
    for rec in (network, simulated):
        for key in ("queue_id", "tenant", "recipient_domain", "source_ip", "provider",
                    "response", "result", "mx_host", "remote_ip", "tls", "delay",
                    "duration"):
            assert key in rec, (key, rec)
        assert rec["tenant"] == "default" and rec["result"] == "delivered"
        assert str(rec["response"]).startswith("250 ")
        assert isinstance(rec["delay"], float) and isinstance(rec["duration"], float)
        assert 0.0 <= rec["duration"] <= rec["delay"] < 60.0
    assert (network["recipient_domain"], network["mx_host"], network["remote_ip"],
            network["tls"]) == ("ok.test", "mx.ok.test", "127.0.0.2", False)
    assert network["source_ip"] in ("127.0.0.10", "127.0.0.11")
    assert (simulated["recipient_domain"], simulated["mx_host"], simulated["remote_ip"],
            simulated["tls"], simulated["duration"]) == (SIM, "simulator", "", False, 0.0)
    text = next(json.loads(line)["message"] for line in admin.relay.stderr().splitlines()
                if line.startswith("{") and f'"queue_id": "{network_id}"' in line)
    assert f"attempt {network_id} tenant=default domain=ok.test source_ip=" in text
    assert " mx_host=mx.ok.test remote_ip=127.0.0.2 tls=no delay=" in text
