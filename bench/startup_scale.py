"""Whole-process start-up at scale: `relay serve` on a deep spool, from spawn to serving.

Issue #7 "Scale": with 1,000,000 queued recipients over 10,000 domains, `relay serve` must
go from start to serving (the SMTP listener answering EHLO) in ≤ 10 s, with RSS ≤ 300 MB,
and keep serving while it starts delivering. bench/scheduler_scale.py timed the store part
only (open + recovery); this runs the real process:

- a spool built by bench/queue_fixture.py (or reused with --spool): `queued` recipients, one
  per message, over `domains` domains, every one due, `inflight` of them left INFLIGHT as a
  crash leaves them;
- a loopback DNS server (relay.testing.dnsserver, in this process): every `dN.test` (and
  `probe.test`) MX 10 `mx.sink.test`, A 127.0.0.2;
- a counting sink on 127.0.0.2 (a subprocess: bench/sinkserver.py's protocol, accepting
  everything), printing its message count twice a second;
- `python -m relay serve` on that spool with one plain submission listener (trusted
  127.0.0.0/8, no AUTH), delivering to the sink's port.

Measured: seconds from spawn to the "relay: ready" line and to a 250 reply to EHLO on the
listener; RSS (VmRSS with its anonymous and file-backed parts, and VmHWM, from /proc) at
serving and over the next `--window` seconds while it delivers; deliveries/s at the sink;
and, every 2 s during the window, a probe session on the listener (connect + EHLO, and
MAIL..DATA to the 250). Then SIGTERM and the drain time. Everything is bounded (per-step
timeouts, a fixed window, every child terminated then killed); the temp dir (and a spool
built there) is removed unless --keep. Traffic stays on loopback.

    .venv/bin/python bench/startup_scale.py --queued 1000                 # quick, ~10 s
    .venv/bin/python bench/startup_scale.py --queued 1000000 --record     # builds ~465 MiB
    .venv/bin/python bench/startup_scale.py --queued 1000000 --spool /tmp/q1m --keep
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import dns.name  # noqa: E402
import results as bench_results  # noqa: E402
from e2e import stop  # noqa: E402

from relay.testing.dnsserver import DnsServer  # noqa: E402
from relay.testing.process import free_port, relay_command, write_config  # noqa: E402

SINK_HOST = "127.0.0.2"
MX_HOST = "mx.sink.test"
PROBE_DOMAIN = "probe.test"
TARGET_START_S = 10.0
TARGET_RSS_MIB = 300 * 1e6 / 2**20   # 300 MB


@dataclass
class Options:
    queued: int = 1_000_000
    domains: int = 10_000
    inflight: int = 200
    window: float = 30.0          # seconds of delivery watched after serving
    probe_every: float = 2.0
    start_timeout: float = 120.0
    spool: Path | None = None     # an existing spool (built there if missing); kept
    keep: bool = False
    workdir: Path | None = None   # default: a new dir under /tmp
    profile: str = ""             # py-spy record the relay from spawn into this file
    tracemalloc: str = ""         # the relay's Python allocations, by line, into this file
    extra: dict[str, Any] = field(default_factory=dict)   # config sections merged in


# ---------------------------------------------------------------------------- sink child


def sink_child(host: str, seconds: float) -> int:
    """The counting sink (bench/sinkserver.py's protocol), reporting progress each 0.5 s."""
    import asyncio

    import uvloop
    from sinkserver import SinkProtocol, SinkStats

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stats = SinkStats()
        server = await loop.create_server(lambda: SinkProtocol(stats), host=host, port=0,
                                          reuse_address=True, backlog=1024)
        port = int(server.sockets[0].getsockname()[1])
        print(json.dumps({"event": "ready", "port": port}), flush=True)
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        deadline = loop.time() + seconds
        while not done.is_set() and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)
            print(json.dumps({"t": time.time(), "messages": stats.messages,
                              "connections": stats.connections}), flush=True)
        server.close()

    uvloop.run(run())
    return 0


class SinkProcess:
    def __init__(self, work: Path, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_sink", SINK_HOST, str(seconds)],
            stdout=subprocess.PIPE, stderr=(work / "sink.err").open("wb"), text=True)
        self.samples: list[tuple[float, int, int]] = []   # (wall time, messages, connections)
        self.port = 0
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                d = json.loads(line)
                if d.get("event") == "ready":
                    self.port = int(d["port"])
                    ready.set()
                else:
                    self.samples.append((float(d["t"]), int(d["messages"]),
                                         int(d["connections"])))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(15):
            stop(self.proc)
            raise RuntimeError("the sink did not start: "
                               + (work / "sink.err").read_text(errors="replace")[-2000:])

    def messages(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def close(self) -> None:
        stop(self.proc)
        self._reader.join(5)


def traced_child(path: str, argv: list[str]) -> int:
    """`relay ARGV` in this process with tracemalloc on: every 30 s, the allocations still
    held, by line, go to `path` (the largest, and the largest growth since the first
    report). Allocation tracing slows the relay down: for where memory goes, not for the
    figures."""
    import tracemalloc

    from relay.cli import main as relay_main

    tracemalloc.start(1)

    def report() -> None:
        first: tracemalloc.Snapshot | None = None
        n = 0
        while True:
            time.sleep(30.0)
            n += 1
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])
            with open(path, "a") as f:
                traced, peak = tracemalloc.get_traced_memory()
                f.write(f"== report {n} at {30 * n} s: traced {traced / 2**20:.1f} MiB "
                        f"(peak {peak / 2**20:.1f})\n")
                for st in snap.statistics("lineno")[:25]:
                    f.write(f"{st.size / 2**20:8.2f} MiB {st.count:9,} {st.traceback}\n")
                if first is not None:
                    f.write("-- growth since the first report\n")
                    for d in snap.compare_to(first, "lineno")[:25]:
                        f.write(f"{d.size_diff / 2**20:+8.2f} MiB {d.count_diff:+9,} "
                                f"{d.traceback}\n")
                else:
                    first = snap
    threading.Thread(target=report, daemon=True).start()
    return relay_main(argv)


# ---------------------------------------------------------------------------- measuring


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile, VmHWM of a process, in MiB ({} once it is gone)."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    with contextlib.suppress(OSError):
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._halt_event = threading.Event()

    def run(self) -> None:
        while not self._halt_event.is_set():
            m = proc_memory(self.pid)
            if m:
                self.samples.append((time.monotonic(), m))
            self._halt_event.wait(self.every)

    def halt(self) -> None:
        self._halt_event.set()
        self.join(5)

    def series(self, since: float, every: float = 5.0) -> list[tuple[float, float, float]]:
        """(seconds since `since`, VmRSS MiB, open fds) every `every` seconds."""
        out: list[tuple[float, float, float]] = []
        for t, m in self.samples:
            if t >= since + len(out) * every:
                out.append((round(t - since, 1), round(m.get("VmRSS", 0.0), 1),
                            m.get("fds", 0.0)))
        return out

    def peak(self, key: str, since: float = 0.0) -> float:
        return max((m.get(key, 0.0) for t, m in self.samples if t >= since), default=0.0)


def memory_by_delivered(sampler: MemorySampler, sink: SinkProcess, since: float,
                        wall_offset: float, every: float = 30.0) -> list[dict[str, float]]:
    """Every `every` seconds of the window: messages at the sink then, VmRSS and its
    anonymous and file-backed parts (MiB), so runs delivering at different rates on a
    noisy machine compare at the same count delivered."""
    out: list[dict[str, float]] = []
    for t, m in sampler.samples:
        if t < since + len(out) * every:
            continue
        wall = t + wall_offset
        delivered = max((n for w, n, _ in sink.samples if w <= wall), default=0)
        out.append({"s": round(t - since, 1), "delivered": delivered,
                    "rss": round(m.get("VmRSS", 0.0), 1),
                    "anon": round(m.get("RssAnon", 0.0), 1),
                    "file": round(m.get("RssFile", 0.0), 1)})
    return out


def ehlo_once(port: int, timeout: float) -> float:
    """Connect, read the greeting, EHLO: the seconds to the 250 (raises if not served)."""
    t = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as s:
        code, _ = s.ehlo("startup.bench")
        if code != 250:
            raise smtplib.SMTPResponseException(code, b"EHLO refused")
        return time.perf_counter() - t


def wait_serving(port: int, proc: subprocess.Popen[Any], timeout: float) -> float:
    """Poll the listener until EHLO gets 250; monotonic time of that 250."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited with {proc.returncode} before serving")
        try:
            ehlo_once(port, timeout=5.0)
            return time.monotonic()
        except (OSError, smtplib.SMTPException):
            time.sleep(0.01)
    raise TimeoutError(f"relay did not answer EHLO within {timeout:.0f} s")


def probe(port: int, n: int) -> tuple[float, float]:
    """One submission: (connect + EHLO seconds, MAIL..end of DATA → 250 seconds)."""
    t = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=15.0) as s:
        s.ehlo("probe.bench")
        t1 = time.perf_counter()
        s.sendmail("probe@example.com", [f"p{n}@{PROBE_DOMAIN}"],
                   f"Subject: probe {n}\r\n\r\nprobe\r\n".encode())
        return t1 - t, time.perf_counter() - t1


def wait_line(path: Path, needle: str, timeout: float) -> float | None:
    """Monotonic time a line containing `needle` was first seen in `path` (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return time.monotonic()
        time.sleep(0.02)
    return None


# ---------------------------------------------------------------------------- one run


class ZoneDns(DnsServer):
    """DnsServer for a large, fixed zone. Its `_exists` (NXDOMAIN vs an empty non-terminal)
    walks every owner name per miss: with 10,000 domains each `_mta-sts.dN.test` lookup
    cost ~10 ms of this process's CPU, so the bench's DNS, not relay, set the pace. Here
    the ancestors of every owner are computed once (the zone does not change in a run)."""

    def start(self) -> ZoneDns:
        self._interior = {parent for name in self._records
                          for parent in _ancestors(name)}
        super().start()
        return self

    def _exists(self, name: dns.name.Name) -> bool:
        return name in self._records or name in self._interior


def _ancestors(name: dns.name.Name) -> list[dns.name.Name]:
    out = []
    while name != dns.name.root:
        name = name.parent()
        out.append(name)
    return out


def zone(domains: int) -> dict[str, list[tuple[str, str, int]]]:
    z: dict[str, list[tuple[str, str, int]]] = {
        f"d{i}.test": [("MX", f"10 {MX_HOST}", 3600)] for i in range(domains)}
    z[PROBE_DOMAIN] = [("MX", f"10 {MX_HOST}", 3600)]
    z[MX_HOST] = [("A", SINK_HOST, 3600)]
    return z


def config(state: Path, port: int, nameserver: str, sink_port: int,
           extra: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server": {"hostname": "relay.bench", "state_dir": str(state), "log_level": "warning",
                   "sender_authorization": "off", "queue_map_size": "8GiB"},
        "listener": [{"address": f"127.0.0.1:{port}", "tls": "none", "auth": "none",
                      "role": "submission", "trusted_networks": ["127.0.0.0/8"]}],
        "dns": {"nameservers": [nameserver], "timeout": "2s"},
        "delivery": {"port": sink_port, "tls": "opportunistic"},
        "limits": {"max_connections_per_ip": 200},
    }
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def run(opt: Options) -> dict[str, Any]:
    from queue_fixture import build

    work = opt.workdir or Path(tempfile.mkdtemp(prefix="relay-bench-start-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    state.mkdir(exist_ok=True)
    spool = opt.spool or state / "queue"
    r: dict[str, Any] = {"queued": opt.queued, "domains": opt.domains,
                         "inflight": opt.inflight, "window_s": opt.window}
    procs: list[subprocess.Popen[Any]] = []
    dns_server: ZoneDns | None = None
    sink: SinkProcess | None = None
    sampler: MemorySampler | None = None
    try:
        if not (spool / "data.mdb").exists():
            # Received over the hour before now: every recipient is due at once.
            r["build_s"] = build(spool, opt.queued, opt.domains, inflight=opt.inflight,
                                 now=time.time() - 1.0)
        else:
            r["build_s"] = 0.0
        r["spool_mib"] = (spool / "data.mdb").stat().st_size / 2**20
        if spool != state / "queue":
            (state / "queue").symlink_to(spool.resolve(), target_is_directory=True)

        dns_server = ZoneDns(zone(min(opt.domains, opt.queued))).start()
        sink = SinkProcess(work, opt.start_timeout + opt.window + 120)
        port = free_port()
        cfg = write_config(work / "relay.toml",
                           config(state, port, dns_server.nameserver, sink.port, opt.extra))
        out = work / "relay.out"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        command = relay_command("serve", config=cfg)
        if opt.tracemalloc:
            command = [sys.executable, str(Path(__file__).resolve()), "_traced",
                       opt.tracemalloc, *command[3:]]
        with out.open("wb") as f:
            wall0, t0 = time.time(), time.monotonic()
            relay = subprocess.Popen(command, stdout=f,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=ROOT, env=env, start_new_session=True)
        procs.append(relay)
        if opt.profile:
            procs.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(relay.pid),
                 "-r", "200", "-f", "raw", "-o", opt.profile, "--nonblocking", "-s"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sampler = MemorySampler(relay.pid)
        sampler.start()
        served = wait_serving(port, relay, opt.start_timeout)
        r["serving_s"] = served - t0
        ready = wait_line(out, "relay: ready", 5.0)
        r["ready_s"] = (ready - t0) if ready is not None else float("nan")
        m = re.search(r"relay: ready \(.*recovered (\d+)\)", out.read_text(errors="replace"))
        r["recovered"] = int(m.group(1)) if m else -1
        at_serving = proc_memory(relay.pid)
        r["rss_serving_mib"] = at_serving.get("VmRSS", 0.0)
        r["anon_serving_mib"] = at_serving.get("RssAnon", 0.0)
        r["file_serving_mib"] = at_serving.get("RssFile", 0.0)
        r["hwm_serving_mib"] = at_serving.get("VmHWM", 0.0)
        r["delivered_at_serving"] = sink.messages()

        # The window: deliveries at the sink, RSS, and a probe session every probe_every.
        ehlo_s: list[float] = []
        submit_s: list[float] = []
        failures: list[str] = []
        end = served + opt.window
        n = 0
        while time.monotonic() < end and relay.poll() is None:
            n += 1
            try:
                e, s = probe(port, n)
                ehlo_s.append(e)
                submit_s.append(s)
            except (OSError, smtplib.SMTPException) as ex:
                failures.append(f"{type(ex).__name__}: {ex}")
            time.sleep(max(0.0, min(opt.probe_every, end - time.monotonic())))
        time.sleep(0.6)  # the sink's last progress line
        window_end_wall = time.time()
        r["probes"], r["probe_failures"] = n, failures
        r["probe_ehlo_ms"] = _ms(ehlo_s)
        r["probe_250_ms"] = _ms(submit_s)
        r["rss_peak_mib"] = sampler.peak("VmRSS", served)
        r["anon_peak_mib"] = sampler.peak("RssAnon", served)
        r["file_peak_mib"] = sampler.peak("RssFile", served)
        r["hwm_mib"] = sampler.peak("VmHWM")
        r["fds_peak"] = sampler.peak("fds", served)
        r["rss_series"] = sampler.series(served)
        r["memory_by_delivered"] = memory_by_delivered(sampler, sink, served, wall0 - t0)
        r["relay_exited"] = relay.poll()

        samples = [(t, m) for t, m, _ in sink.samples if t <= window_end_wall]
        delivered = samples[-1][1] if samples else 0
        r["delivered"] = delivered
        r["sink_connections"] = sink.samples[-1][2] if sink.samples else 0
        first = next((t for t, m in samples if m > 0), None)
        r["first_delivery_s"] = (first - wall0) if first is not None else float("nan")
        # Until the spool's share is in (a small spool runs dry before the window ends;
        # the probes' own messages trickle in after that).
        bulk = delivered - (n - len(failures))
        last = next((t for t, m in samples if m >= bulk), window_end_wall)
        span = (last - first) if first is not None else 0.0
        r["deliveries_per_s"] = delivered / span if span > 0 else 0.0
        r["peak_per_s"] = max(((m2 - m1) / (t2 - t1) for (t1, m1), (t2, m2)
                               in itertools.pairwise(samples) if t2 > t1),
                              default=0.0)
        r["stop_s"] = stop(relay, 60.0)
        r["exit_code"] = relay.returncode
        return r
    finally:
        for p in reversed(procs):
            stop(p)
        if sampler is not None:
            sampler.halt()
        if sink is not None:
            sink.close()
        if dns_server is not None:
            r["dns_queries"] = len(dns_server.queries)
            dns_server.stop()
        r["workdir"] = str(work)
        if not opt.keep and opt.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _ms(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "max": float("nan")}
    return {"p50": statistics.median(xs) * 1000, "max": max(xs) * 1000}


# ---------------------------------------------------------------------------- report


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| queued | domains | in flight | spawn → EHLO 250 | spawn → ready line "
            "| RSS at serving (anon + file) | RSS peak in window (anon + file) | VmHWM "
            "| first delivery | delivered in window | deliveries/s (peak 0.5 s) "
            "| open fds peak | probe EHLO p50 / max | probe 250 p50 / max | failed probes "
            "| stop |")
    lines = [head, "|" + "---:|" * 16]
    for r in rows:
        lines.append(
            f"| {r['queued']:,} | {r['domains']:,} | {r['inflight']} ({r['recovered']} recovered) "
            f"| {r['serving_s']:.2f} s | {r['ready_s']:.2f} s "
            f"| {r['rss_serving_mib']:.0f} MiB ({r['anon_serving_mib']:.0f} + "
            f"{r['file_serving_mib']:.0f}) "
            f"| {r['rss_peak_mib']:.0f} MiB ({r['anon_peak_mib']:.0f} + "
            f"{r['file_peak_mib']:.0f}) | {r['hwm_mib']:.0f} MiB "
            f"| {r['first_delivery_s']:.2f} s | {r['delivered']:,} in {r['window_s']:.0f} s "
            f"| {r['deliveries_per_s']:,.0f} ({r['peak_per_s']:,.0f}) | {r['fds_peak']:,.0f} "
            f"| {r['probe_ehlo_ms']['p50']:.1f} / {r['probe_ehlo_ms']['max']:.1f} ms "
            f"| {r['probe_250_ms']['p50']:.1f} / {r['probe_250_ms']['max']:.1f} ms "
            f"| {len(r['probe_failures'])} of {r['probes']} | {r['stop_s']:.1f} s |")
    return "\n".join(lines)


def verdict(r: dict[str, Any]) -> str:
    ok_start = r["serving_s"] <= TARGET_START_S
    rss = max(r["rss_serving_mib"], r["rss_peak_mib"])
    ok_rss = rss <= TARGET_RSS_MIB
    ok_serving = not r["probe_failures"] and r["delivered"] > 0
    return (f"{r['queued']:,} queued: start-up {r['serving_s']:.2f} s "
            f"({'meets' if ok_start else 'MISSES'} ≤ {TARGET_START_S:.0f} s), RSS max "
            f"{rss:.0f} MiB ({'meets' if ok_rss else 'MISSES'} ≤ 300 MB = "
            f"{TARGET_RSS_MIB:.0f} MiB), serving while delivering: "
            f"{'yes' if ok_serving else 'NO'}{_trend(r)}")


def _trend(r: dict[str, Any]) -> str:
    """RSS and open-descriptor growth over the window (after its first 10 s)."""
    pts = [p for p in r.get("rss_series", []) if p[0] >= 10.0]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return ""
    minutes = (pts[-1][0] - pts[0][0]) / 60
    return (f"; in the window RSS {(pts[-1][1] - pts[0][1]) / minutes:+.0f} MiB/min, "
            f"open fds {(pts[-1][2] - pts[0][2]) / minutes:+,.0f}/min")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_sink"]:
        return sink_child(argv[1], float(argv[2]))
    if argv[:1] == ["_traced"]:
        return traced_child(argv[1], argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queued", type=int, action="append",
                   help="recipients in the spool (repeatable; default 1,000,000)")
    p.add_argument("--domains", type=int, default=10_000)
    p.add_argument("--inflight", type=int, default=200)
    p.add_argument("--window", type=float, default=30.0,
                   help="seconds to watch delivery after serving")
    p.add_argument("--spool", type=Path,
                   help="an existing spool (built there if missing; kept; each run consumes "
                        "what it delivers)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, state)")
    p.add_argument("--profile", default="",
                   help="py-spy record the relay process from spawn (raw stacks to FILE)")
    p.add_argument("--no-history", action="store_true",
                   help="[history] enabled = false: no message history written (A/B of its "
                        "memory: the LMDB pages its writes map)")
    p.add_argument("--tracemalloc", default="", metavar="FILE",
                   help="trace the relay's Python allocations; every 30 s the largest (and "
                        "their growth) by line to FILE (slows the relay: not for figures)")
    p.add_argument("--record", action="store_true", help="append the results to RESULTS.md")
    a = p.parse_args(argv)
    sizes = a.queued or [1_000_000]
    if a.spool is not None and len(sizes) > 1:
        p.error("--spool takes one --queued size")
    rows = []
    for queued in sizes:
        r = run(Options(queued=queued, domains=a.domains, inflight=a.inflight,
                        window=a.window, spool=a.spool, keep=a.keep, profile=a.profile,
                        tracemalloc=a.tracemalloc,
                        extra={"history": {"enabled": False}} if a.no_history else {}))
        print(json.dumps(r), file=sys.stderr, flush=True)
        if a.keep:
            print(f"kept {r['workdir']}", file=sys.stderr)
        rows.append(r)
    out = table(rows) + "\n\n" + "\n".join(verdict(r) for r in rows)
    print(out)
    if a.record:
        bench_results.record("Whole-process start-up on a deep spool (issue 7)",
                       "bench/startup_scale.py", argv, out)
    return 0 if all(not r["probe_failures"] and r["delivered"] > 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
