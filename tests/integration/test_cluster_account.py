"""SentLast24Hours with [cluster]: SES's GetAccount (v2) and GetSendQuota (v1) on one node
count the recipients every node accepted (the tenant's rolling 24 h window in Redis), not
only its own; while Redis is unreachable the node answers with its own figure (what Redis
last told it and what it accepted since) rather than an error."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path
from typing import Any

import pytest
from clusterkit import api_key, node_config, start_all

from relay.testing.process import free_port
from relay.testing.redisserver import RedisServer


def test_sent_last_24_hours_counts_every_nodes_recipients(
        tmp_path: Path, redis_server: RedisServer) -> None:
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config as BotoConfig

    api_ports = {name: free_port() for name in ("node-a", "node-b")}
    configs = [node_config(tmp_path, name, redis_server.url, api_port=port,
                           tenants={"max_24h_send": 1000})
               for name, port in api_ports.items()]
    key = api_key(configs)
    procs = start_all(configs)
    try:
        def client(service: str, node: str) -> Any:
            return boto3.client(
                service, region_name="us-east-1",
                endpoint_url=f"http://127.0.0.1:{api_ports[node]}",
                aws_access_key_id=key["AccessKeyId"],
                aws_secret_access_key=key["SecretAccessKey"],
                config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=5,
                                  read_timeout=15))

        v2_b, v1_b, v2_a = client("sesv2", "node-b"), client("ses", "node-b"), \
            client("sesv2", "node-a")
        assert v2_b.get_account()["SendQuota"]["SentLast24Hours"] == 0.0
        # 7 recipients over SMTP to node A (the default tenant: a trusted network)
        smtp_port = next(iter(procs[0].ports.values()))
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as s:
            for n, batch in enumerate([2, 2, 3]):
                rcpts = [f"u{n}.{j}@ok.test" for j in range(batch)]
                s.sendmail("app@example.com", rcpts,
                           f"From: app@example.com\r\nSubject: {n}\r\n\r\nx\r\n".encode())
            # a recipient given back (RSET) is not counted
            s.mail("app@example.com")
            assert s.rcpt("rset@ok.test")[0] == 250
            s.rset()
        # (the RSET answers at once; its release reaches Redis just after)
        deadline = time.monotonic() + 5
        while (quota := v2_b.get_account()["SendQuota"])["SentLast24Hours"] != 7.0 \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert quota["SentLast24Hours"] == 7.0
        assert quota["Max24HourSend"] == 1000.0
        assert v1_b.get_send_quota()["SentLast24Hours"] == 7.0
        # one more through node B's SES API, seen from node A
        v2_b.send_email(FromEmailAddress="app@example.com",
                        Destination={"ToAddresses": ["api@ok.test"]},
                        Content={"Simple": {"Subject": {"Data": "s"},
                                            "Body": {"Text": {"Data": "x"}}}})
        assert v2_a.get_account()["SendQuota"]["SentLast24Hours"] == 8.0

        # Redis unreachable: node B's own figure (Redis last said 8), no error
        redis_server.stop()
        assert v2_b.get_account()["SendQuota"]["SentLast24Hours"] == 8.0
        assert v1_b.get_send_quota()["SentLast24Hours"] == 8.0
    finally:
        for p in procs:
            p.stop()
