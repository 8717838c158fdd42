"""Process life of `relay serve` as real processes: one relay per state dir, workers that
do not outlive their supervisor, and signals that arrive while the ports open.

- A second `relay serve` on the state dir of a running one exits 1 with one line naming
  the running one's pid (two relays on one queue deliver everything twice), while the
  CLI keeps working beside the running relay.
- `server.workers = 2`: a second relay is refused while the supervisor runs; after the
  supervisor is killed with -9 its workers drain and exit, the state dir stays locked
  while one of them lives (the refusal names it), and then a new relay starts on the
  state dir (before, the workers kept serving and a restart ran beside them).
- A SIGHUP sent the moment the submission port accepts reloads instead of ending the
  process (SIGHUP's default action) and the relay keeps serving.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_command,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.wait import wait_until

pytestmark = pytest.mark.slow

_WORKER_RE = re.compile(r"^relay: worker (\d+) of (\d+) ready \(pid (\d+)")
# Nothing is delivered in these tests: no DNS server is needed behind this address.
_NO_DNS = "127.0.0.1:9"


def _config(tmp: Path, name: str, state: Path, **server: Any) -> tuple[Path, int]:
    port = free_port()
    cfg = relay_config(state, _NO_DNS, 25, [listener_config(
        tls="none", auth="none", port=port, trusted_networks=["127.0.0.0/8"])])
    cfg["server"].update(server)
    return write_config(tmp / f"{name}.toml", cfg), port


def _lines_until(proc: subprocess.Popen[str], prefix: str, timeout: float) -> list[str]:
    """stdout lines up to the first starting with `prefix`, or all it printed before it
    exited or `timeout` passed."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout)
    return list(lines)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _refused(config: Path, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run a second `relay serve`; it must exit by itself (a relay that starts is killed
    and fails the test)."""
    proc = subprocess.Popen(relay_command("serve", config=config), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"a second relay started on the same state dir:\n{out}\n{err}")\
            from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_refused_naming(second: subprocess.CompletedProcess[str], state: Path,
                           pid: int) -> None:
    assert second.returncode == 1, second
    lines = [x for x in second.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"state dir {state} is in use by another relay (pid {pid})" in lines[0], lines
    assert "relay: ready" not in second.stdout


def test_second_relay_on_one_state_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first_cfg, port = _config(tmp_path, "first", state)
    second_cfg, _ = _config(tmp_path, "second", state)  # other ports: only the state is shared
    with RelayProcess(first_cfg, log_dir=tmp_path / "logs") as first:
        _assert_refused_naming(_refused(second_cfg), state, first.pid)
        # The CLI shares the state dir with the running relay as before.
        added = run_cli("user", "add", "app", "--password-stdin", config=first_cfg,
                        input="a long enough password\n")
        assert added.returncode == 0, added.stderr
        listed = run_cli("queue", "list", "--json", config=first_cfg)
        assert listed.returncode == 0, listed.stderr
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:  # still serving
            assert smtp.ehlo()[0] == 250
        assert first.running
    # Once the first has stopped, the state dir is free again.
    with RelayProcess(second_cfg, log_dir=tmp_path / "logs2"):
        pass


def test_workers_exit_when_their_supervisor_is_killed_with_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config, port = _config(tmp_path, "relay", state, workers=2, log_level="warning")
    other, _ = _config(tmp_path, "other", state)
    relay = RelayProcess(config, log_dir=tmp_path / "logs").start(timeout=60)
    workers: list[int] = []
    try:
        workers = [int(m.group(3)) for m in map(_WORKER_RE.match, relay.stdout_lines) if m]
        assert len(workers) == 2 and relay.pid not in workers, relay.output()
        # The supervisor's lock covers its workers: no second relay beside them.
        _assert_refused_naming(_refused(other), state, relay.pid)

        # Worker 1 is frozen when the supervisor dies; worker 0 runs on and must exit.
        os.kill(workers[1], signal.SIGSTOP)
        assert relay.kill() == -signal.SIGKILL
        wait_until(lambda: not _alive(workers[0]), 20,
                   f"worker {workers[0]} to exit after its supervisor was killed")
        # The lock went to the workers with the descriptor: while one still lives, no
        # new relay starts beside it, and the refusal names it.
        second = _refused(other)
        assert second.returncode == 1, second
        assert (f"(pid {relay.pid}, which has exited; its worker process(es) {workers[1]} "
                "still hold the lock)") in second.stderr, second.stderr
        os.kill(workers[1], signal.SIGCONT)
        wait_until(lambda: not _alive(workers[1]), 20,
                   f"worker {workers[1]} to exit after its supervisor was killed")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:  # on failure: leave no process behind
        relay.stop()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    # The state dir is free: a new relay starts on it (and stops cleanly).
    again = RelayProcess(config, log_dir=tmp_path / "logs-again").start(timeout=60)
    assert again.terminate(60) == 0, again.output()


def _the_moment_the_port_opens(proc: subprocess.Popen[str], port: int, timeout: float) -> None:
    """Return as soon as the relay's port on 127.0.0.1 accepts (polled every millisecond:
    a signal sent next must land in the moment the port opens)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the port never opened"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.001)


def test_sighup_as_the_port_opens_reloads_and_keeps_serving(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config, port = _config(tmp_path, "relay", state)
    proc = subprocess.Popen(relay_command("serve", config=config), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _the_moment_the_port_opens(proc, port, 30)
        proc.send_signal(signal.SIGHUP)
        lines = _lines_until(proc, "relay: reloaded", 20)
        assert proc.poll() is None, (proc.returncode, lines, proc.communicate()[1])
        assert any(x.startswith("relay: ready") for x in lines), lines
        assert lines[-1].startswith("relay: reloaded"), lines
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            assert smtp.ehlo()[0] == 250
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_sighup_to_the_supervisor_while_workers_start_keeps_every_worker(
        tmp_path: Path) -> None:
    """The supervisor passes a SIGHUP on only to workers that are ready (one still
    starting would die of it, and the supervisor then stopped everything)."""
    state = tmp_path / "state"
    config, port = _config(tmp_path, "relay", state, workers=2, log_level="warning")
    proc = subprocess.Popen(relay_command("serve", config=config), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # The first worker's port: the other may still be starting.
        _the_moment_the_port_opens(proc, port, 60)
        proc.send_signal(signal.SIGHUP)
        lines = _lines_until(proc, "relay: ready (2 workers", 60)
        assert proc.poll() is None, (proc.returncode, lines, proc.communicate()[1])
        assert lines and lines[-1].startswith("relay: ready (2 workers"), lines
        # Each worker started once: none was killed by the signal and started again.
        assert len([x for x in lines if _WORKER_RE.match(x)]) == 2, lines
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            assert smtp.ehlo()[0] == 250
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        err = proc.communicate()[1]
        assert "exited with" not in err and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
