"""[cluster]: the Redis URL forms (Sentinel parsed by relay), problems naming key, value and
what was expected; the local share and the reconciliation ledger (pure); and the promise
that a node without [cluster] never imports redis."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from relay.cluster.digests import differing
from relay.cluster.fallback import Ledger, Pending, local_share
from relay.config import ConfigError, loads
from relay.config.cluster import Cluster, parse_sentinel_url
from relay.testing.process import free_port


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "rediss://redis.example.net:6380", "unix:///run/redis.sock",
    "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/relay-main",
    "redis+sentinel://:secret@[::1]:26379/main/2", ""])
def test_accepted_redis_urls(url: str) -> None:
    cfg = loads(f'[cluster]\nredis_url = "{url}"\n').cluster
    assert cfg.redis_url == url
    assert cfg.enabled is bool(url)


def test_sentinel_url_is_parsed_into_sentinels_service_and_db() -> None:
    url = parse_sentinel_url("redis+sentinel://:p%40ss@[::1]:26379,s2:26380/main/2")
    assert url.hosts == [("::1", 26379), ("s2", 26380)]
    assert (url.service, url.db, url.password) == ("main", 2, "p@ss")


@pytest.mark.parametrize(("text", "expected"), [
    ('redis_url = "http://x:6379"', "redis_url = 'http://x:6379': expected a URL starting with"),
    ('redis_url = "redis+sentinel://h:26379"', "the service name is missing"),
    ('redis_url = "redis+sentinel://h/main"', "is not host:port"),
    ('redis_url = "redis://:6379"', "the host is missing"),
    ('node_id = "a b"', "node_id = 'a b': expected letters"),
    ('heartbeat = "10s"\nnode_ttl = "15s"', 'node_ttl = "15s": expected at least twice'),
    ('command_timeout = "0s"', "command_timeout = \"0s\": expected above 0"),
])
def test_bad_cluster_settings_name_key_value_and_expectation(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(f"[cluster]\n{text}\n")
    assert any(p.startswith("cluster:") and expected in p for p in e.value.problems), (
        e.value.problems)


def test_node_id_defaults_to_the_host_name() -> None:
    import platform
    assert Cluster().node_name() == (platform.node() or "relay")
    assert Cluster(node_id="n1").node_name() == "n1"


def test_local_share_is_what_was_left_divided_by_live_nodes_rounded_down() -> None:
    assert local_share(100, 0, 3) == 33
    assert local_share(100, 40, 3) == 20
    assert local_share(100, 120, 3) == 0  # already over: nothing more
    assert local_share(2, 0, 3) == 0  # smaller than the node count: hold, never exceed
    assert local_share(100, 0, 0) == 100  # no node list seen: this node alone
    assert local_share(0, 0, 2) == 0


def test_ledger_keeps_counts_until_confirmed_and_seals_batches_with_stable_ids() -> None:
    ledger = Ledger("n1")
    ledger.record(Pending("fixed", "k", 2, ttl_ms=1000))
    ledger.record(Pending("fixed", "k", 3, ttl_ms=1000))
    ledger.record(Pending("sliding", "s", 1, at_ms=1500, window_ms=10_000, bucket_ms=1000))
    ledger.record(Pending("sliding", "s", 1, at_ms=2500, window_ms=10_000, bucket_ms=1000))
    assert ledger.used("k") == 5 and ledger.used("s") == 2
    first = ledger.seal("e")
    assert sorted((b.pending.key, b.pending.n) for b in first) == [("k", 5), ("s", 1), ("s", 1)]
    ledger.record(Pending("fixed", "k", 1, ttl_ms=1000))  # counted during the retry
    again = ledger.seal("e")
    assert {b.batch_id for b in first} < {b.batch_id for b in again}  # same ids, plus one
    assert ledger.used("k") == 6
    for b in again:
        ledger.confirm(b.batch_id)
    assert len(ledger) == 0 and ledger.used("k") == 0


def test_differing_names_the_minority_copy() -> None:
    same = {"users.json": "1", "dkim": "d"}
    assert differing({"a": same, "b": same, "c": {"users.json": "2", "dkim": "d"}}) == {
        "c": ["users.json"]}
    assert differing({"a": same, "b": same}) == {}


def test_a_node_without_cluster_never_imports_redis() -> None:
    """The serve path (CLI, app, wiring, admin API, a started RelayApp) loads no redis."""
    port = free_port()
    code = textwrap.dedent(f"""
        import asyncio, sys, tempfile
        from pathlib import Path
        import relay.cli, relay.app, relay.admin.api.routes, relay.wiring
        from relay.cli import build_parser
        from relay.config import loads
        build_parser()
        state = tempfile.mkdtemp()
        cfg = loads(f'[server]\\nstate_dir = "{{state}}"\\nhostname = "relay.test"\\n'
                    '[admin]\\nenabled = true\\naddress = "127.0.0.1:{port}"\\n')
        async def main():
            app = relay.app.RelayApp(cfg)
            await app.start()
            await app.stop()
        asyncio.run(main())
        print(sorted(m for m in sys.modules if m == "redis" or m.startswith("redis.")))
        print("relay.cluster" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False"]
