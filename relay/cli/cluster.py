"""`relay cluster status [--json]`: the cluster as Redis sees it, read directly (any node's
config will do; no running relay needed): live nodes with their queue depth, version and
last heartbeat, this machine's Redis round trip, which node holds which connection
leases, and the nodes whose distributed files (config, credentials, keys) differ.

Exit codes: 0 answered (also "not configured"), 1 Redis unreachable or a node's files
differ from the others' (so a deployment check can fail on it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from relay.cli import CliError, load_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "cluster", help="the nodes sharing one Redis ([cluster])",
        description="Cluster commands: `relay cluster status`.")
    csub = p.add_subparsers(dest="cluster_command", metavar="COMMAND")
    s: argparse.ArgumentParser = csub.add_parser(
        "status", help="live nodes, queue depths, Redis latency, leases, differing files")
    s.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config file (default: $RELAY_CONFIG or the embedded dev config)")
    s.add_argument("--json", action="store_true", help="print the raw JSON")
    s.set_defaults(func=run_status)
    def usage(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)


def run_status(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if not cfg.cluster.enabled:
        data: dict[str, Any] = {"configured": False,
                                "message": "cluster not configured (no [cluster] redis_url): "
                                           "a single node"}
    else:
        from relay.cluster.status import status_from_config
        data = asyncio.run(status_from_config(cfg.cluster))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print(data)
    if data.get("configured") and not data.get("redis_up"):
        if not args.json:
            raise CliError(f"redis unreachable: {data.get('error', '')}")
        return 1
    return 1 if data.get("differing") else 0


def _print(data: dict[str, Any]) -> None:
    if not data.get("configured"):
        print(f"relay: {data['message']}")
        return
    if not data.get("redis_up"):
        return
    nodes = data["nodes"]
    print(f"cluster: {len(nodes)} live node(s); redis round trip "
          f"{data['redis_latency_ms']:.1f} ms (from {data['node_id']})")
    print(f"  {'NODE':24} {'PID':>7} {'VERSION':9} {'QUEUE':>8} {'LEASES':>6} "
          f"{'LAST SEEN':>10}  FILES")
    now = time.time()
    for n in nodes:
        files = ("differs: " + ", ".join(n["differs"])) if n["differs"] else "same"
        print(f"  {n['node_id']:24} {n['pid']:>7} {n['version']:9} {n['queue_depth']:>8} "
              f"{n['leases']:>6} {max(0.0, now - n['last_seen']):>8.1f} s  {files}")
    if data["leases"]:
        print(f"  {'SITE':32} {'NODE':24} LEASE")
        for lease in data["leases"]:
            print(f"  {lease['site']:32} {lease['node']:24} {lease['lease']}")
