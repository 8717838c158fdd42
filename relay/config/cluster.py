"""The [cluster] section: several relay nodes sharing their limits, flags and suppression
list through one Redis (relay/cluster/). No redis_url: a single node, and the redis client
library is never imported."""

from __future__ import annotations

import platform
import re
from urllib.parse import unquote, urlsplit

import msgspec

from relay.config.types import Duration, duration_text

URL_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")


class SentinelUrl(msgspec.Struct, frozen=True):
    """redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]"""

    hosts: list[tuple[str, int]]
    service: str
    db: int = 0
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The sentinels, service name and db of a redis+sentinel:// URL, or ValueError with
    what was expected (redis-py has no URL form for Sentinel)."""
    expected = ("expected redis+sentinel://host:port[,host:port...]/service_name[/db]")
    if not url.startswith("redis+sentinel://"):
        raise ValueError(expected)
    rest = url[len("redis+sentinel://"):]
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        password = unquote(auth.partition(":")[2] if ":" in auth else auth) or None
    hosts: list[tuple[str, int]] = []
    for part in netloc.split(","):
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", part.strip())
        if not m:
            raise ValueError(f"{expected} (sentinel {part!r} is not host:port)")
        host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if not 0 < int(port) < 65536:
            raise ValueError(f"{expected} (port {port} out of range)")
        hosts.append((host, int(port)))
    segments = [s for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError(f"{expected} (the service name is missing)")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(f"{expected} (db {segments[1]!r} is not a number)")
        db = int(segments[1])
    return SentinelUrl(hosts, unquote(segments[0]), db, password)


def url_problem(url: str) -> str | None:
    """Why `url` is not a Redis URL relay can use, or None."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        return (f"expected a URL starting with {', '.join(s + '://' for s in URL_SCHEMES)} "
                "or \"\" (no cluster)")
    if scheme == "redis+sentinel":
        try:
            parse_sentinel_url(url)
        except ValueError as e:
            return str(e)
    elif scheme == "unix":
        if not urlsplit(url).path:
            return "expected unix:///path/to/redis.sock"
    elif not urlsplit(url).hostname:
        return f"expected {scheme}://host:port[/db] (the host is missing)"
    return None


class Cluster(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The Redis every node shares: redis://host:port/db, rediss:// (TLS),
    # unix:///path, or redis+sentinel://host:port[,host:port]/service_name for Sentinel.
    # "": no cluster (one node, exactly as without this section; Redis is never used).
    redis_url: str = ""
    # This node's name in Redis (heartbeat, leases). "": the host name.
    node_id: str = ""
    # Every key relay writes starts with this (several clusters can share one Redis).
    key_prefix: str = "relay:"
    connect_timeout: Duration = Duration(2)
    # A Redis call slower than this counts as Redis unreachable (the local share is used).
    command_timeout: Duration = Duration(1)
    # Each node writes its heartbeat this often; it is gone from the live list after
    # node_ttl without one.
    heartbeat: Duration = Duration(5)
    node_ttl: Duration = Duration(20)
    # Each open connection to a provider's site with max_connections holds a lease in
    # Redis for this long, renewed every third of it; a killed node's leases expire.
    lease_ttl: Duration = Duration(60)
    # A new connection to a site whose leases are all held waits at most this long for
    # one; then its recipients are held and tried again a few seconds later.
    lease_wait: Duration = Duration(5)

    def __post_init__(self) -> None:
        problems = []
        if self.redis_url:
            why = url_problem(self.redis_url)
            if why:
                problems.append(f"redis_url = {self.redis_url!r}: {why}")
        if self.node_id and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.node_id):
            problems.append(f"node_id = {self.node_id!r}: expected letters, digits, '.', "
                            "'_' or '-' (at most 100), or \"\" for the host name")
        if not re.fullmatch(r"[A-Za-z0-9:._-]{0,64}", self.key_prefix):
            problems.append(f"key_prefix = {self.key_prefix!r}: expected at most 64 letters, "
                            "digits, ':', '.', '_' or '-'")
        for name in ("connect_timeout", "command_timeout", "heartbeat"):
            value = getattr(self, name)
            if value <= 0 or value > 300:
                problems.append(f"{name} = {duration_text(value)}: expected above 0 and at "
                                "most 5 minutes, like \"1s\"")
        if self.lease_ttl < 3 or self.lease_ttl > 3600:
            problems.append(f"lease_ttl = {duration_text(self.lease_ttl)}: expected at least "
                            "3 seconds and at most an hour, like \"60s\"")
        if self.lease_wait < 0 or self.lease_wait > 300:
            problems.append(f"lease_wait = {duration_text(self.lease_wait)}: expected 0 to 5 "
                            "minutes, like \"5s\"")
        if self.node_ttl < 2 * self.heartbeat:
            problems.append(f"node_ttl = {duration_text(self.node_ttl)}: expected at least "
                            f"twice heartbeat ({duration_text(self.heartbeat)}), so one late "
                            "heartbeat does not drop a live node")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)

    def node_name(self) -> str:
        return self.node_id or platform.node() or "relay"
