"""Two real relay processes sharing one real redis-server: each publishes its heartbeat,
`relay cluster status` (and /api/cluster on a node's admin API) lists both with their
queue depth and names the node whose credential files differ; relay_cluster_redis_up is
1 on a node's /metrics. Without [cluster], a clear "not configured"."""

from __future__ import annotations

import json
import shutil
import smtplib
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.redisserver import RedisServer


def _node(tmp: Path, name: str, redis_url: str, admin_port: int | None = None) -> Path:
    listener = listener_config("none", "none", trusted_networks=["127.0.0.0/8"])
    data: dict[str, Any] = relay_config(tmp / name / "state", "127.0.0.1:1", free_port(),
                                        [listener])
    data["cluster"] = {"redis_url": redis_url, "node_id": name, "heartbeat": "200ms",
                       "node_ttl": "5s"}
    if admin_port is not None:
        data["admin"] = {"enabled": True, "address": f"127.0.0.1:{admin_port}"}
    return write_config(tmp / name / "relay.toml", data)


def _status(config: Path) -> tuple[int, dict[str, Any]]:
    done = run_cli("cluster", "status", "--json", config=config)
    return done.returncode, json.loads(done.stdout)


def test_cluster_status_lists_both_nodes_and_the_one_whose_files_differ(
        tmp_path: Path, redis_server: RedisServer) -> None:
    admin_port = free_port()
    a = _node(tmp_path, "node-a", redis_server.url, admin_port)
    b = _node(tmp_path, "node-b", redis_server.url)
    token = run_cli("admin", "token", "add", "tests", config=a).stdout.strip()
    procs = [RelayProcess(a, log_dir=tmp_path / "node-a" / "logs").start()]
    try:
        # The deployment distributes node-a's files to node-b (the VERP key node-a made
        # at its start, the admin tokens)...
        (tmp_path / "node-b" / "state").mkdir(parents=True)
        for name in ("verp.key", "admin_tokens.json"):
            shutil.copy2(tmp_path / "node-a" / "state" / name,
                         tmp_path / "node-b" / "state" / name)
        # ...but an SMTP user is added on node-b alone: its users.json differs
        added = run_cli("user", "add", "app", "--password-stdin", config=b,
                        input="pw-123456789\n")
        assert added.returncode == 0, added.stderr
        procs.append(RelayProcess(b, log_dir=tmp_path / "node-b" / "logs").start())
        deadline = time.monotonic() + 10
        while True:
            code, data = _status(a)
            if len(data.get("nodes", [])) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert data["configured"] and data["redis_up"], data
        assert [n["node_id"] for n in data["nodes"]] == ["node-a", "node-b"]
        assert all(n["queue_depth"] == 0 and n["pid"] > 0 for n in data["nodes"])
        assert data["differing"] == {"node-b": ["users.json"]}
        assert code == 1  # a node's files differ: a deployment check fails on it

        text = run_cli("cluster", "status", config=b)
        assert "2 live node(s)" in text.stdout and "differs: users.json" in text.stdout

        def get(path: str) -> bytes:
            req = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}",
                                         headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                body: bytes = resp.read()
                return body

        api = json.loads(get("/api/cluster"))
        assert [n["node_id"] for n in api["nodes"]] == ["node-a", "node-b"]
        assert api["differing"] == {"node-b": ["users.json"]}
        assert b"relay_cluster_redis_up 1.0" in get("/metrics")
        spec = json.loads(get("/openapi.json"))
        assert "/api/cluster" in spec["paths"]
    finally:
        for p in procs:
            p.stop()
    # a node that stopped leaves the live list at once
    _code, data = _status(a)
    assert data["nodes"] == []


def test_without_cluster_status_says_not_configured(tmp_path: Path) -> None:
    listener = listener_config("none", "none", trusted_networks=["127.0.0.0/8"])
    data = relay_config(tmp_path / "state", "127.0.0.1:1", free_port(), [listener])
    config = write_config(tmp_path / "relay.toml", data)
    code, answer = _status(config)
    assert code == 0
    assert answer["configured"] is False and "not configured" in answer["message"]
    text = run_cli("cluster", "status", config=config)
    assert text.returncode == 0 and "not configured" in text.stdout


def test_cluster_status_with_redis_unreachable_says_so_without_a_traceback(
        tmp_path: Path) -> None:
    config = _node(tmp_path, "node-a", f"redis://127.0.0.1:{free_port()}/0")
    done = run_cli("cluster", "status", config=config)
    assert done.returncode == 1
    assert "redis unreachable" in done.stderr and "Traceback" not in done.stderr


def _mail_from_reply(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.test")
        return s.mail("app@example.com")


def test_a_tenant_pause_on_one_node_stops_acceptance_on_the_other(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """`relay tenant pause` run against node B: node A refuses the tenant's mail (554
    5.7.1, as SES) soon after; `relay tenant resume` against node A undoes it on both."""
    a = _node(tmp_path, "node-a", redis_server.url)
    b = _node(tmp_path, "node-b", redis_server.url)
    procs = [RelayProcess(c, log_dir=tmp_path / c.parent.name / "logs").start() for c in (a, b)]
    try:
        port_a, port_b = (next(iter(p.ports.values())) for p in procs)
        assert _mail_from_reply(port_a)[0] == 250
        paused = run_cli("tenant", "pause", "default", "--reason", "audit", config=b)
        assert paused.returncode == 0, paused.stderr
        assert "reaches every node" in paused.stdout
        deadline = time.monotonic() + 5  # within a second in the flags test; CI is slow
        while _mail_from_reply(port_a)[0] == 250 and time.monotonic() < deadline:
            time.sleep(0.05)
        code, text = _mail_from_reply(port_a)
        assert (code, b"5.7.1" in text) == (554, True), text
        assert _mail_from_reply(port_b)[0] == 554
        resumed = run_cli("tenant", "resume", "default", config=a)
        assert resumed.returncode == 0, resumed.stderr
        deadline = time.monotonic() + 5
        while _mail_from_reply(port_b)[0] != 250 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _mail_from_reply(port_b)[0] == 250  # node B's own pause record is older
        assert _mail_from_reply(port_a)[0] == 250
    finally:
        for p in procs:
            p.stop()


def test_a_daily_quota_holds_across_two_nodes_over_smtp(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """[tenants] max_24h_send = 100 on two nodes sharing one Redis: recipients submitted
    over SMTP alternating between them get exactly 100 250s, then SES's 454 at RCPT
    from either node (each node alone would take 100)."""
    configs = []
    for name in ("node-a", "node-b"):
        listener = listener_config("none", "none", trusted_networks=["127.0.0.0/8"])
        data: dict[str, Any] = relay_config(tmp_path / name / "state", "127.0.0.1:1",
                                            free_port(), [listener])
        data["cluster"] = {"redis_url": redis_server.url, "node_id": name}
        data["tenants"] = {"max_24h_send": 100}
        configs.append(write_config(tmp_path / name / "relay.toml", data))
    procs = [RelayProcess(c, log_dir=tmp_path / c.parent.name / "logs").start() for c in configs]
    try:
        ports = [next(iter(p.ports.values())) for p in procs]
        answers = []
        for i in range(104):
            with smtplib.SMTP("127.0.0.1", ports[i % 2], timeout=10) as s:
                s.ehlo("client.test")
                s.mail("app@example.com")
                code, text = s.rcpt(f"user{i}@ok.test")
                if code == 250:  # counted once the message is accepted (a RSET gives back)
                    code, text = s.data(f"From: app@example.com\r\nTo: user{i}@ok.test\r\n"
                                        f"Subject: quota {i}\r\n\r\nx\r\n".encode())
                answers.append((code, text.decode()))
        assert [c for c, _ in answers[:100]] == [250] * 100
        assert [c for c, _ in answers[100:]] == [454] * 4, answers[100:]
        assert all("Daily message quota exceeded" in t for _, t in answers[100:])
    finally:
        for p in procs:
            p.stop()


def test_a_daily_quota_holds_across_two_nodes_of_the_ses_api(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """[tenants] max_24h_send = 50 on two nodes sharing one Redis: SendEmail requests
    alternating between them get exactly 50 accepted (each node alone would take 50),
    then SES's refusal (Daily message quota exceeded, LimitExceededException) from either
    node. (50, not 100: the test stays within its time budget; the in-process test of
    the gate runs 100.)"""
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config as BotoConfig

    api_ports = {}
    configs = []
    for name in ("node-a", "node-b"):
        api_ports[name] = free_port()
        listener = listener_config("none", "none", trusted_networks=["127.0.0.0/8"])
        data: dict[str, Any] = relay_config(tmp_path / name / "state", "127.0.0.1:1",
                                            free_port(), [listener])
        data["cluster"] = {"redis_url": redis_server.url, "node_id": name}
        data["tenants"] = {"max_24h_send": 50}
        data["api"] = {"enabled": True, "address": f"127.0.0.1:{api_ports[name]}"}
        configs.append(write_config(tmp_path / name / "relay.toml", data))
    a = configs[0]
    assert run_cli("user", "add", "app", "--password-stdin", config=a,
                   input="pw-123456789\n").returncode == 0
    made = run_cli("user", "keys", "create", "app", "--json", config=a)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    # the deployment distributes the credential files to node-b
    (tmp_path / "node-b" / "state").mkdir(parents=True)
    for name in ("users.json", "api_keys.json", "api_keys.key"):
        shutil.copy2(tmp_path / "node-a" / "state" / name, tmp_path / "node-b" / "state" / name)
    procs = [RelayProcess(c, log_dir=tmp_path / c.parent.name / "logs").start() for c in configs]
    try:
        clients = [boto3.client(
            "sesv2", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=5,
                              read_timeout=15)) for port in api_ports.values()]
        accepted, refused = 0, []
        for i in range(56):
            ses = clients[i % 2]
            try:
                ses.send_email(FromEmailAddress="app@example.com",
                               Destination={"ToAddresses": [f"user{i}@ok.test"]},
                               Content={"Simple": {"Subject": {"Data": f"quota {i}"},
                                                   "Body": {"Text": {"Data": "x"}}}})
                accepted += 1
            except ses.exceptions.LimitExceededException as e:
                refused.append((i, str(e)))
        assert accepted == 50
        assert [i for i, _ in refused] == list(range(50, 56))
        assert all("Daily message quota exceeded" in text for _, text in refused)
    finally:
        for p in procs:
            p.stop()


def test_an_operator_suppression_on_one_node_reaches_the_others_copy(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """`relay suppression add` against node B: node A's own copy of the list (what its
    scheduler reads) has the address soon after; `relay suppression remove` against node
    A takes it off node B's."""
    a = _node(tmp_path, "node-a", redis_server.url)
    b = _node(tmp_path, "node-b", redis_server.url)
    procs = [RelayProcess(c, log_dir=tmp_path / c.parent.name / "logs").start() for c in (a, b)]

    def listed(config: Path) -> list[str]:
        done = run_cli("suppression", "list", "--json", config=config)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["address"] for line in done.stdout.splitlines() if line]

    try:
        added = run_cli("suppression", "add", "Gone@Example.net", config=b)
        assert added.returncode == 0, added.stderr
        deadline = time.monotonic() + 5
        while listed(a) != ["gone@example.net"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listed(a) == ["gone@example.net"]
        removed = run_cli("suppression", "remove", "gone@example.net", config=a)
        assert removed.returncode == 0, removed.stderr
        deadline = time.monotonic() + 5
        while listed(b) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listed(b) == []
    finally:
        for p in procs:
            p.stop()


def test_a_node_of_two_workers_is_one_node_in_the_cluster(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """server.workers = 2: one heartbeat (the first worker's), both workers up; stopping
    the node takes it off the live list."""
    config = _node(tmp_path, "node-w", redis_server.url)
    text = config.read_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)
    config.write_text(text)
    proc = RelayProcess(config, log_dir=tmp_path / "logs").start()
    try:
        deadline = time.monotonic() + 10
        while True:
            _code, data = _status(config)
            if data.get("nodes") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [n["node_id"] for n in data["nodes"]] == ["node-w"]
    finally:
        proc.stop()
    assert _status(config)[1]["nodes"] == []
