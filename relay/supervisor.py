"""Multi-process mode (`server.workers = N`): a supervisor and N worker processes.

Each worker is a fresh interpreter (`python -m relay serve`, with $RELAY_WORKER = "i/N"):
its own event loop and its own LMDB environment (nothing is shared across fork, which
LMDB forbids). Workers bind the listening ports with SO_REUSEPORT, so the kernel spreads
connections over them. Delivery is split by message: the id of a message accepted by
worker i carries i (relay.queue.keys.shard_of), and worker i leases only recipients of
such messages, so no two processes ever deliver the same recipient, each delivers what it
accepted (one hot destination such as gmail.com keeps every core busy, which splitting
by destination did not), and at start worker i recovers only its own in-flight
recipients (a worker restarted after kill -9 recovers what it had leased while the others
keep going). LMDB serialises write transactions across processes with its own lock.

Because every worker may send to every destination, each enforces its share of every
per-destination and per-IP limit (relay/workers.py: `worker_share`, `split`): connections
per destination and per provider site, site rates, and warm-up caps (relay/warmup/gate.py),
so the workers together stay within the configured figures. What holds an IP back is the IP's,
not a worker's: a warm-up freeze or a backoff pause one worker's traffic earned reaches
the others through the spool within `ShapedSender.sync_interval`, and the reputation
rates count every worker's sends, bounces and complaints (relay/delivery/shaper.py).
Feedback (complaints, late bounces) arrives at worker 0, which finds the delivering IP
in the spool (relay/delivery/sentfrom.py).

The supervisor prepares what workers would otherwise race on (state dir, self-signed
certificate, the development credential), starts the workers, reports ready once all are
ready (stdout, and sd_notify under systemd), restarts a worker that exits unexpectedly
(with a growing delay if it keeps dying), forwards SIGHUP (to a worker still starting,
once it is ready), and on SIGTERM/SIGINT forwards the stop and waits for every worker to
drain. Worker 0 also runs the admin API and the feedback listener.

The supervisor holds the state dir's lock (relay/statedir.py) and passes the descriptor
to every worker, so the state dir stays locked while any of them runs. Should the
supervisor die without stopping them (kill -9, OOM killer), each worker sees end of file
on a pipe only the supervisor could write to, drains and exits (`watch_supervisor`), and
with the last of them the lock is released for the next relay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay import sdnotify
from relay.backoff import doubling
from relay.config import Config
from relay.signals import EarlySignals
from relay.statedir import record_holders
from relay.tlsutil import ensure_self_signed
from relay.users import DEV_USER, UserStore
from relay.workers import WORKER_ENV

log = logging.getLogger("relay.supervisor")

READY_ENV = "RELAY_READY_FD"
# The read end of a pipe whose only write end the supervisor holds: a worker sees end of
# file on it when the supervisor is gone, however it ended (kill -9 included).
SUPERVISOR_ENV = "RELAY_SUPERVISOR_FD"
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 90.0


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int = -1
    started_at: float = 0.0
    restarts: int = 0
    ready: bool = False
    hangup: bool = False  # a SIGHUP to pass on once it is ready


def _prepare(cfg: Config) -> None:
    """What every worker would otherwise do at once at its first start."""
    state = cfg.state_path
    state.mkdir(parents=True, exist_ok=True)
    if any(lst.tls != "none" for lst in cfg.listener) and not cfg.tls.cert:
        ensure_self_signed(state, cfg.server.hostname)
    if cfg.server.dev_credential:
        users = UserStore(state / "users.json")
        if not users.names():
            password = secrets.token_urlsafe(18)
            users.add(DEV_USER, password)
            print(f"relay: development credential (shown once): user {DEV_USER!r} "
                  f"password {password!r}", flush=True)


class Supervisor:
    """`lock_fd`: the state dir's lock (relay/statedir.py), passed on to every worker so
    the state dir stays locked until the last of them has exited. `early`: signals that
    arrived before run() installed its handlers."""

    def __init__(self, cfg: Config, config_file: Path, extra_args: list[str], *,
                 lock_fd: int = -1, early: EarlySignals | None = None) -> None:
        self.cfg = cfg
        self.count = cfg.server.workers
        self.config_file = config_file
        self.extra_args = extra_args
        self.lock_fd = lock_fd
        self.workers = [_Worker(i) for i in range(self.count)]
        self._stop = early.stop if early is not None else False
        self._hup = False
        # Workers stop when the supervisor dies (watch_supervisor below). A pipe rather
        # than prctl(PR_SET_PDEATHSIG): it is seen whatever ends the supervisor, with no
        # window between fork and the worker's setup (a supervisor already gone shows as
        # end of file at once), it is not tied to the thread that forked, and the worker
        # learns it on its event loop, so it drains (finishes transactions, commits)
        # instead of being killed mid-commit.
        self._alive_r, self._alive_w = os.pipe()  # neither is inherited by default

    def _spawn(self, w: _Worker) -> None:
        r, wfd = os.pipe()
        env = dict(os.environ)
        env[WORKER_ENV] = f"{w.index}/{self.count}"
        env[READY_ENV] = str(wfd)
        env[SUPERVISOR_ENV] = str(self._alive_r)
        env.pop("NOTIFY_SOCKET", None)  # readiness to systemd is the supervisor's
        fds = (wfd, self._alive_r) + ((self.lock_fd,) if self.lock_fd >= 0 else ())
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(self.config_file),
             *self.extra_args], env=env, pass_fds=fds)
        os.close(wfd)
        os.set_blocking(r, False)
        if self.lock_fd >= 0:  # who holds the state dir, for a relay refused start
            record_holders(self.lock_fd, [os.getpid(), *(
                x.proc.pid for x in self.workers if x.proc is not None)])
        # A new process reads the config as it is now: no reload owed to it.
        w.ready_fd, w.ready, w.hangup, w.started_at = r, False, False, time.monotonic()

    def _poll_ready(self, w: _Worker) -> None:
        if w.ready or w.ready_fd < 0:
            return
        try:
            data = os.read(w.ready_fd, 16)
        except BlockingIOError:
            return
        if data:
            w.ready = True
        os.close(w.ready_fd)
        w.ready_fd = -1
        if w.ready and w.hangup and w.proc is not None:
            w.hangup = False
            w.proc.send_signal(signal.SIGHUP)

    def _signal(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(sig)

    def _hangup(self) -> None:
        """SIGHUP to every ready worker; one still starting gets it once ready (until
        its loop handles SIGHUP, the signal would end it, or be lost)."""
        for w in self.workers:
            if w.proc is None or w.proc.poll() is not None:
                continue
            if w.ready:
                w.proc.send_signal(signal.SIGHUP)
            else:
                w.hangup = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stop", True))
        # A SIGHUP before the workers start needs no passing on: they read the config.
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_hup", True))
        if self._stop:
            return 0
        _prepare(self.cfg)
        for w in self.workers:
            self._spawn(w)
        announced = False
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._stop:
            for w in self.workers:
                self._poll_ready(w)
                assert w.proc is not None
                code = w.proc.poll()
                if code is None:
                    continue
                if w.ready_fd >= 0:
                    os.close(w.ready_fd)
                    w.ready_fd = -1
                if not announced and not w.ready and w.restarts == 0:
                    log.error("worker %d exited with %s before it was ready; stopping",
                              w.index, code)
                    self._stop = True
                    break
                # Died while serving (kill -9, crash): start it again. Its in-flight
                # recipients are recovered by the new process before it delivers.
                quick = time.monotonic() - w.started_at < 10
                w.restarts += 1
                delay = doubling(w.restarts + 1, 0.2, 5.0) if quick else 0.2
                log.warning("worker %d (pid %d) exited with %s; restarting in %.1fs",
                            w.index, w.proc.pid, code, delay)
                time.sleep(delay)
                self._spawn(w)
            if self._hup:
                self._hup = False
                self._hangup()
            if not announced and all(w.ready for w in self.workers):
                announced = True
                print(f"relay: ready ({self.count} workers, pids "
                      f"{' '.join(str(w.proc.pid) for w in self.workers if w.proc)}, "
                      f"state {self.cfg.state_path})", flush=True)
                sdnotify.notify("READY=1", f"STATUS=serving, {self.count} workers")
            if not announced and time.monotonic() > deadline:
                log.error("workers not ready within %.0fs; stopping", READY_TIMEOUT)
                self._stop = True
            time.sleep(0.05)
        sdnotify.notify("STOPPING=1")
        print("relay: stopping (draining workers)", file=sys.stderr, flush=True)
        self._signal(signal.SIGTERM)
        end = time.monotonic() + STOP_TIMEOUT
        failed = not announced
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                code = w.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                code = w.proc.wait(10)
            if code not in (0, -signal.SIGTERM):
                failed = True
            if w.ready_fd >= 0:
                os.close(w.ready_fd)
        return 1 if failed else 0


def supervise(cfg: Config, config_file: Path, extra_args: list[str], *,
              lock_fd: int = -1, early: EarlySignals | None = None) -> int:
    return Supervisor(cfg, config_file, extra_args, lock_fd=lock_fd, early=early).run()


def watch_supervisor(loop: asyncio.AbstractEventLoop, on_gone: Callable[[], None]) -> None:
    """In a worker: call `on_gone` once the supervisor has exited (end of file on the
    pipe named by $RELAY_SUPERVISOR_FD; nothing is ever written to it)."""
    raw = os.environ.pop(SUPERVISOR_ENV, "")
    if not raw.isdigit():
        return
    fd = int(raw)
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            if os.read(fd, 64):
                return  # not expected; only end of file means anything
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(fd)
        os.close(fd)
        on_gone()

    loop.add_reader(fd, readable)
