"""Digests of the files a deployment distributes to every node of a cluster: the state
files that hold credentials (SMTP users, SES access keys and their key, identities, DKIM
keys, admin tokens, the VERP key). The config file is not among them: it names the node
(node_id, its addresses), so it differs legitimately. Each node publishes them in its
heartbeat; `relay cluster status` names any node whose copy differs from the others'.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Relative to the state dir; a directory is digested whole (names and contents).
SHARED_STATE = ("users.json", "api_keys.json", "api_keys.key", "identities.json",
                "admin_tokens.json", "verp.key", "dkim")


def _digest_path(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(sub.relative_to(path)).encode() + b"\0")
            h.update(sub.read_bytes() + b"\0")
    elif path.is_file():
        h.update(path.read_bytes())
    else:
        return "absent"
    return h.hexdigest()[:16]


def file_digests(state_dir: Path) -> dict[str, str]:
    """{name: digest} of the shared files ("absent" for a missing one)."""
    out = {}
    for name in SHARED_STATE:
        try:
            out[name] = _digest_path(state_dir / name)
        except OSError:
            out[name] = "unreadable"
    return out


def differing(nodes: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """{node: [file names whose digest differs from most nodes' copy]} (only nodes with
    a difference). On a tie the node named first keeps the reference copy."""
    names = sorted({f for digests in nodes.values() for f in digests})
    out: dict[str, list[str]] = {}
    for name in names:
        votes: dict[str, int] = {}
        for node in sorted(nodes):
            d = nodes[node].get(name, "absent")
            votes[d] = votes.get(d, 0) + 1
        reference = max(votes, key=lambda d: votes[d])
        for node in sorted(nodes):
            if nodes[node].get(name, "absent") != reference:
                out.setdefault(node, []).append(name)
    return out
