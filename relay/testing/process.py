"""Run relay as a real subprocess, the way systemd or `make run` does (end-to-end tests).

`RelayProcess(config_path)` starts `python -m relay serve --config FILE`, reads its
stdout in a thread until the "relay: ready" line, and can stop it gracefully
(SIGTERM, drain, exit code 0) or crash it (`kill -9`). It may be started again
with the same config and state dir; each run's stdout and stderr are kept in
`log_dir` (one file per run) so a failing test can show what relay said.

`write_config(path, data)` writes a config dict as TOML (the subset relay's config
uses: tables, arrays of tables, strings, numbers, booleans, lists and inline
tables). `free_port()` finds an unused loopback TCP port. `run_cli(...)` runs any
other `relay` sub-command and returns the completed process.

Must not: import relay internals (the process under test is the only relay).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

READY_MARKER = "relay: ready"
_PORT_RE = re.compile(r"^relay: listening on (\S+) \(tls=(\w+), auth=(\w+)\) port (\d+)$")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- TOML


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_str(value: str) -> str:
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return _toml_str(str(value))
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: object) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, Mapping) for v in value))


def to_toml(data: Mapping[str, Any]) -> str:
    """Top-level scalars first, then [section] tables and [[array]] tables (one level)."""
    lines: list[str] = []
    for key, value in data.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines += ["", f"[{_toml_key(key)}]"]
            lines += [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()]
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{_toml_key(key)}]]"]
                lines += [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- CLI


def relay_command(*args: str, config: Path | None = None) -> list[str]:
    base = [sys.executable, "-m", "relay"]
    if config is not None:
        base += ["--config", str(config)]
    return base + list(args)


def run_cli(*args: str, config: Path | None = None, input: str | None = None,
            env: Mapping[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `relay [--config FILE] ARGS...` to completion; never raises on a non-zero exit."""
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run(relay_command(*args, config=config), input=input, text=True,
                          capture_output=True, env=full_env, cwd=cwd, timeout=timeout,
                          check=False)


# ---------------------------------------------------------------------------- serve


class RelayNotReady(RuntimeError):
    """The process exited or stayed silent before printing the ready line."""


class RelayProcess:
    """One `relay serve` process at a time, restartable on the same config and state."""

    def __init__(self, config: Path | None, *, log_dir: Path, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.config = config
        self.log_dir = log_dir
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[str] | None = None
        self.runs = 0
        self.stdout_lines: list[str] = []   # this run's stdout, as read so far
        self.ports: dict[str, int] = {}     # listener address (as configured) -> bound port
        self.start_times: list[float] = []  # seconds from Popen to ready, per run
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._stderr_file: IO[str] | None = None

    # -- lifecycle

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("relay is not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> RelayProcess:
        if self.running:
            raise RuntimeError("relay is already running")
        self.runs += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        with self._lock:
            self.stdout_lines = []
            self.ports = {}
        args = ["serve", *self.extra_args]
        if self.config is not None:
            args += ["--config", str(self.config)]
        self._stderr_file = open(self.stderr_path(), "w", encoding="utf-8")  # noqa: SIM115
        began = time.monotonic()
        self.proc = subprocess.Popen(
            relay_command(*args), stdout=subprocess.PIPE, stderr=self._stderr_file,
            stdin=subprocess.DEVNULL, text=True, env=self.env, cwd=self.cwd,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read_stdout, args=(self.proc,),
                                        name=f"relay-stdout-{self.runs}", daemon=True)
        self._reader.start()
        deadline = began + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code = self.proc.poll()
                if code is None:
                    self.kill()
                raise RelayNotReady(
                    f"relay did not become ready (exit code {code}, after "
                    f"{time.monotonic() - began:.1f}s)\n{self.output()}")
        self.start_times.append(time.monotonic() - began)
        return self

    def _read_stdout(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with open(self.stdout_path(), "w", encoding="utf-8") as copy:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                copy.write(raw)
                copy.flush()
                with self._lock:
                    self.stdout_lines.append(line)
                    m = _PORT_RE.match(line)
                    if m:
                        self.ports[m.group(1)] = int(m.group(4))
                if line.startswith(READY_MARKER):
                    self._ready.set()

    def _reap(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        return code

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the drain; return the exit code (kill -9 after `timeout`)."""
        if self.proc is None:
            raise RuntimeError("relay was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self._reap(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> int:
        """kill -9: no drain, no cleanup; return the exit code (-9)."""
        if self.proc is None:
            raise RuntimeError("relay was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self._reap(30.0)

    def stop(self) -> None:
        """Best-effort end for fixtures: SIGTERM, then SIGKILL if it does not go."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._reap(5.0)
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.terminate(15.0)

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what it said

    def stdout_path(self, run: int | None = None) -> Path:
        return self.log_dir / f"relay-run{run or self.runs}.stdout"

    def stderr_path(self, run: int | None = None) -> Path:
        return self.log_dir / f"relay-run{run or self.runs}.stderr"

    def stdout(self, run: int | None = None) -> str:
        p = self.stdout_path(run)
        return p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""

    def stderr(self, run: int | None = None) -> str:
        p = self.stderr_path(run)
        return p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""

    def output(self, run: int | None = None, tail: int = 4000) -> str:
        """This run's stdout and stderr, for assertion messages (stderr's tail only)."""
        err = self.stderr(run)
        return (f"--- stdout (run {run or self.runs}) ---\n{self.stdout(run)}"
                f"--- stderr (last {tail} chars) ---\n{err[-tail:]}")

    def port(self, address: str) -> int:
        """The bound port of the listener configured with this address."""
        with self._lock:
            return self.ports[address]


# ---------------------------------------------------------------------------- configs


def listener_config(tls: str = "starttls", auth: str = "required", port: int | None = None,
                    **extra: Any) -> dict[str, Any]:
    """A `[[listener]]` table on 127.0.0.1 (a free port unless one is given)."""
    return {"address": f"127.0.0.1:{port or free_port()}", "tls": tls, "auth": auth, **extra}


def relay_config(state_dir: Path, nameserver: str, delivery_port: int,
                 listeners: Sequence[Mapping[str, Any]], **delivery: Any) -> dict[str, Any]:
    """A config dict for a relay that resolves through `nameserver` and delivers to
    `delivery_port` (the test sinks), retrying after 1 s; `delivery` overrides keys."""
    return {
        # No identity verification: these tests are about transport, queue and process
        # life, and send as app@example.com without publishing its DNS records.
        "server": {"hostname": "relay.test", "state_dir": str(state_dir),
                   "sender_authorization": "off"},
        "listener": [dict(x) for x in listeners],
        "dns": {"nameservers": [nameserver], "timeout": "2s"},
        "delivery": {"port": delivery_port, "retry_schedule": ["1s"], "retry_jitter": 0.0,
                     "connect_timeout": "5s", "command_timeout": "10s",
                     "data_timeout": "10s", **delivery},
    }
