"""A real redis-server for tests: on a free loopback port, in a temporary directory, with
no persistence (`--save "" --appendonly no`). `start()` waits for PING, `stop()` kills it;
it may be started again on the same port (the "Redis came back" half of an outage test).

- `persist=True`: an append-only file synced on every write (`--appendonly yes
  --appendfsync always`), so what Redis acknowledged survives `stop()`'s SIGKILL, as a
  production Redis's would: a crash, not a wipe.
- `replica_of`: a replica of another RedisServer (for a Sentinel failover).
- `RedisSentinel`: `redis-server --sentinel` with a generated config watching a master
  under a service name; `url(service)` is the relay's `redis+sentinel://` redis_url.

Tests call `require_program("redis-server")` first (Debian's redis-server, in .ci/run).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from relay.testing.process import free_port
from relay.testing.require import require_program

PROGRAM = "redis-server"


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class _Process:
    """A redis-server process (a server or a Sentinel) started on `port` in `dir`."""

    def __init__(self, directory: Path, port: int | None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _args(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> _Process:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}): "
                                   + (self.dir / "redis.log").read_text()[-2000:])
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Kill it (SIGKILL: an outage, not a shutdown) and wait for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


class RedisServer(_Process):
    def __init__(self, directory: Path, port: int | None = None, *, persist: bool = False,
                 replica_of: RedisServer | None = None) -> None:
        super().__init__(directory, port)
        self.persist = persist
        self.replica_of = replica_of

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [PROGRAM, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.dir), "--protected-mode", "no"]
        args += (["--appendonly", "yes", "--appendfsync", "always"] if self.persist
                 else ["--appendonly", "no"])
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        super().start(timeout)
        return self

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class RedisSentinel(_Process):
    """A Sentinel watching `master` as `service` (quorum 1: the only Sentinel decides;
    a failover may start 1 s after the master stops answering)."""

    def __init__(self, directory: Path, master: RedisServer, service: str = "relay",
                 port: int | None = None) -> None:
        super().__init__(directory, port)
        self.master = master
        self.service = service

    def url(self, db: int = 0) -> str:
        """The relay's [cluster] redis_url through this Sentinel."""
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/{db}"

    def _args(self) -> list[str]:
        # Sentinel rewrites its config file (the state it learns): one of its own.
        config = self.dir / "sentinel.conf"
        s = self.service
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
            f"sentinel monitor {s} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {s} 1000\n"
            f"sentinel failover-timeout {s} 5000\n"
            f"sentinel parallel-syncs {s} 1\n")
        return [PROGRAM, str(config), "--sentinel"]

    def start(self, timeout: float = 10.0) -> RedisSentinel:
        super().start(timeout)
        return self

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a loopback port, its data in the test's temp dir, no
    persistence; stopped after the test (the conftests of tests/integration and bench
    import it)."""
    require_program("redis-server")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
