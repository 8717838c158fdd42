"""End-to-end benchmark: loadgen → relay (subprocess) → bench sink, all on loopback.

    .venv/bin/python bench/e2e.py                      # 2 KB and 20 KB, 50 sessions, 5000 msgs
    .venv/bin/python bench/e2e.py --messages 2000 --sizes 2048 --record

For each message size it starts, fresh:
- a DNS server (relay.testing.dnsserver.DnsServer, in this process) with
  `bench.test MX 10 mx.bench.test` and `mx.bench.test A 127.0.0.2`;
- the bench sink (bench/sinkserver.py, a subprocess) on 127.0.0.2:PORT;
- relay (`python -m relay serve --config <tmp>/relay.toml`, a subprocess) with a
  STARTTLS + AUTH submission listener (user `bench` created with
  `relay --config F user add bench --password-stdin`) and a plain listener for
  127.0.0.0/8 as trusted network (`--tls none` uses it), delivering to port PORT;
- the load generator (bench/loadgen.py, a subprocess).

It reports (a) the accept rate: messages / (first connection → last 250), and (b) the
end-to-end rate: messages / (first connection → last message at the sink), with the
end-of-DATA → 250 latency. `--record` appends the table, the command, the date and the
machine to bench/RESULTS.md. Everything is bounded: message count, per-step timeouts,
and every child process is terminated (then killed) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import results as bench_results  # noqa: E402
import smtpsource  # noqa: E402

from relay.testing.dnsserver import DnsServer  # noqa: E402

DOMAIN = "bench.test"
SENDER_DOMAIN = "sender.test"   # loadgen sends as bench@sender.test
SINK_HOST = "127.0.0.2"
PASSWORD = "bench-password-not-secret"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen[bytes],
                  timeout: float) -> str:
    """Poll a child's stdout file until a line containing `needle` appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"no {needle!r} from {proc.args!r} within {timeout}s")


def stop(proc: subprocess.Popen[Any], timeout: float = 15.0) -> float:
    """SIGTERM, wait (kill -9 after `timeout`); the seconds it took."""
    t = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return time.monotonic() - t


def relay_config(state: Path, submit_port: int, plain_port: int, nameserver: str,
                 sink_port: int, workers: int = 1, extra: str = "",
                 commit_window: float | None = None, delivery_extra: str = "") -> str:
    return f"""\
[server]
hostname = "relay.bench"
state_dir = "{state}"
log_level = "warning"
{f"workers = {workers}" if workers != 1 else ""}
{f"commit_window = {commit_window}" if commit_window is not None else ""}

[[listener]]
address = "127.0.0.1:{submit_port}"
tls = "starttls"
auth = "required"
role = "submission"

[[listener]]
address = "127.0.0.1:{plain_port}"
tls = "none"
auth = "none"
role = "submission"
trusted_networks = ["127.0.0.0/8"]

[dns]
nameservers = ["{nameserver}"]

[delivery]
port = {sink_port}
tls = "opportunistic"
{delivery_extra}

[limits]
max_connections_per_ip = 200
{extra}"""


def _relay_cli(cfg: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "relay", "--config", str(cfg), *args],
                          input=stdin, cwd=ROOT, timeout=60, capture_output=True, check=False)


def setup_identity(cfg: Path, dns: DnsServer) -> None:
    """Make the bench sender's domain a verified identity (DKIM keys published in `dns`).

    Only verified identities may send; verification needs the active DKIM selector(s) in
    DNS. So: keygen, add, verify (prints the records to publish), publish them, verify.
    """
    keygen = _relay_cli(cfg, "dkim", "keygen", SENDER_DOMAIN)
    if keygen.returncode == 2 and b"invalid choice" in keygen.stderr:
        return  # a relay without identities/DKIM: nothing to set up
    if keygen.returncode != 0:
        raise RuntimeError(f"dkim keygen failed: {keygen.stderr.decode()[-1000:]}")
    added = _relay_cli(cfg, "identity", "add", SENDER_DOMAIN)
    if added.returncode != 0:
        raise RuntimeError(f"identity add failed: {added.stderr.decode()[-1000:]}")
    report = json.loads(_relay_cli(cfg, "identity", "verify", SENDER_DOMAIN, "--json").stdout)
    for rec in report["records"]:
        # DKIM selectors, and whatever else verification now wants in TXT (DMARC).
        if rec["expected"] and rec["rtype"] == "TXT" and rec["status"] != "ok":
            dns.add(rec["name"], "TXT", rec["expected"], 3600)
    verify = _relay_cli(cfg, "identity", "verify", SENDER_DOMAIN)
    if verify.returncode != 0:
        raise RuntimeError(f"identity verify failed:\n{verify.stdout.decode()[-2000:]}")


@dataclass
class Scenario:
    size: int
    messages: int
    sessions: int
    tls: str
    reuse: bool
    workers: int = 1
    profile: str = ""   # py-spy output file (raw collapsed stacks) for the relay process
    profile_args: tuple[str, ...] = ()  # more py-spy record flags (--native, --gil, --idle)
    extra: str = ""     # appended to the relay config (TOML)
    delivery_extra: str = ""  # keys added to its [delivery] table
    commit_window: float | None = None  # server.commit_window (s); None = the default
    client: str = "loadgen"  # or "smtp-source" (plain SMTP only; see bench/smtpsource.py)
    tls_resume: bool = False  # the loadgen resumes its TLS session on each new connection


def run_scenario(sc: Scenario, work: Path, timeout: float) -> dict[str, Any]:
    if sc.client == "smtp-source" and sc.tls != "none":
        raise ValueError("smtp-source speaks plain SMTP only: use tls = none with it")
    py = sys.executable
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    dns = DnsServer({DOMAIN: [("MX", f"10 mx.{DOMAIN}", 3600)],
                     f"mx.{DOMAIN}": [("A", SINK_HOST, 3600)]}).start()
    try:
        sink_out = work / "sink.out"
        with sink_out.open("wb") as out:
            sink = subprocess.Popen(
                [py, str(HERE / "sinkserver.py"), "--host", SINK_HOST, "--port", "0",
                 "--expect", str(sc.messages), "--timeout", str(timeout + 30)],
                stdout=out, stderr=subprocess.STDOUT)
        procs.append(sink)
        sink_port = int(json.loads(wait_for_line(sink_out, '"ready"', sink, 10))["port"])

        submit_port, plain_port = free_port(), free_port()
        cfg = work / "relay.toml"
        cfg.write_text(relay_config(work / "state", submit_port, plain_port, dns.nameserver,
                                    sink_port, sc.workers, sc.extra, sc.commit_window,
                                    sc.delivery_extra))
        subprocess.run([py, "-m", "relay", "--config", str(cfg), "user", "add", "bench",
                        "--password-stdin"], input=(PASSWORD + "\n").encode(), check=True,
                       cwd=ROOT, timeout=60, capture_output=True)
        setup_identity(cfg, dns)
        relay_out = work / "relay.out"
        with relay_out.open("wb") as out:
            relay = subprocess.Popen([py, "-m", "relay", "serve", "--config", str(cfg)],
                                     stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append(relay)
        wait_for_line(relay_out, "relay: ready", relay, 30)
        spy: subprocess.Popen[bytes] | None = None
        if sc.profile:
            # --native cannot sample without pausing the process: blocking then.
            nonblocking = [] if "--native" in sc.profile_args else ["--nonblocking"]
            spy = subprocess.Popen(
                [str(Path(py).with_name("py-spy")), "record", "-p", str(relay.pid), "-r", "200",
                 "-f", "raw", "-o", sc.profile, *nonblocking, "--subprocesses",
                 "--threads", *sc.profile_args],
                stdout=subprocess.DEVNULL, stderr=(work / "py-spy.err").open("wb"))
            time.sleep(1.0)

        lg = [py, str(HERE / "loadgen.py"), "--host", "127.0.0.1",
              "--messages", str(sc.messages), "--size", str(sc.size),
              "--concurrency", str(sc.sessions), "--timeout", str(timeout),
              "--domain", DOMAIN, "--reuse" if sc.reuse else "--no-reuse"]
        if sc.tls == "none":
            lg += ["--port", str(plain_port), "--tls", "none"]
        else:
            lg += ["--port", str(submit_port), "--tls", sc.tls, "--user", "bench",
                   "--password", PASSWORD]
            if sc.tls_resume:
                lg.append("--tls-resume")
        cpu0 = process_tree_cpu(relay.pid)
        threads0 = thread_cpu(relay.pid)
        if sc.client == "smtp-source":
            load = smtpsource.run("127.0.0.1", plain_port, sc.messages, sc.size, sc.sessions,
                                  reuse=sc.reuse, timeout=timeout, domain=DOMAIN)
        else:
            done = subprocess.run(lg, capture_output=True, timeout=timeout + 30, check=False)
            try:
                load = json.loads(done.stdout.decode().strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                raise RuntimeError(f"loadgen failed: {done.stderr.decode()[-2000:]}") from None

        accept_cpu = process_tree_cpu(relay.pid) - cpu0
        # The sink exits by itself once it has every message (or at its own timeout).
        try:
            sink.wait(timeout + 30)
        except subprocess.TimeoutExpired:
            stop(sink)
        relay_cpu = process_tree_cpu(relay.pid) - cpu0
        threads = thread_cpu_delta(threads0, thread_cpu(relay.pid))
        thread_names = thread_names_of(relay.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        summary = [json.loads(x) for x in sink_out.read_text().splitlines()
                   if x.startswith("{") and '"summary"' in x]
        at_sink = summary[-1] if summary else {"messages": 0, "last_at": 0.0}
        start = float(load["first_connect_at"])
        e2e_elapsed = at_sink["last_at"] - start if at_sink["messages"] else 0.0
        return {
            "size": sc.size, "sessions": sc.sessions, "tls": sc.tls, "reuse": sc.reuse,
            "messages": sc.messages, "accepted": load["accepted"], "failed": load["failed"],
            "errors": load.get("errors", []),
            "accept_elapsed": load["elapsed"], "accept_rate": load["msgs_per_s"],
            "p50_ms": load["latency_ms"]["p50"], "p99_ms": load["latency_ms"]["p99"],
            "client": sc.client, "loadgen_cpu_s": load.get("cpu_s", 0.0),
            "tls_resumed": load.get("tls_resumed", 0),
            "delivered": at_sink["messages"], "e2e_elapsed": round(e2e_elapsed, 3),
            "e2e_rate": round(at_sink["messages"] / e2e_elapsed, 1) if e2e_elapsed > 0 else 0.0,
            "sink_connections": at_sink.get("connections", 0),
            # CPU (user + system) relay used from the first connection until the last
            # message was at the sink, per message: steadier than the rates on a shared
            # machine, so the measure for A/B runs of a change to relay's own work.
            "relay_cpu_ms_per_msg": round(relay_cpu * 1000 / max(1, at_sink["messages"]), 2),
            # The same until the last 250 only (delivery runs meanwhile, held or not).
            "relay_accept_cpu_ms_per_msg": round(
                accept_cpu * 1000 / max(1, load["accepted"]), 2),
            # The same CPU by thread of the relay process (workers = 1): the event loop,
            # the group committer's writer, the executor (signing) threads.
            "thread_cpu_ms_per_msg": {
                thread_names.get(tid, "MainThread" if tid == relay.pid else f"thread-{tid}"):
                    round(s * 1000 / max(1, at_sink["messages"]), 3)
                for tid, s in sorted(threads.items(), key=lambda kv: -kv[1])},
        }
    finally:
        for p in reversed(procs):
            stop(p)
        dns.stop()


def run_ceiling(size: int, messages: int, sessions: int, timeout: float,
                work: Path) -> dict[str, Any]:
    """loadgen straight into the bench sink (no relay): the harness's own ceiling."""
    py = sys.executable
    work.mkdir(parents=True, exist_ok=True)
    sink_out = work / "sink.out"
    with sink_out.open("wb") as out:
        sink = subprocess.Popen(
            [py, str(HERE / "sinkserver.py"), "--host", SINK_HOST, "--port", "0",
             "--expect", str(messages), "--timeout", str(timeout + 10)],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        port = int(json.loads(wait_for_line(sink_out, '"ready"', sink, 10))["port"])
        done = subprocess.run(
            [py, str(HERE / "loadgen.py"), "--host", SINK_HOST, "--port", str(port),
             "--messages", str(messages), "--size", str(size), "--concurrency", str(sessions),
             "--tls", "none", "--timeout", str(timeout)],
            capture_output=True, timeout=timeout + 30, check=False)
        load = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return {"size": size, "rate": load["msgs_per_s"], "p50_ms": load["latency_ms"]["p50"],
                "p99_ms": load["latency_ms"]["p99"], "accepted": load["accepted"]}
    finally:
        stop(sink)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its children (the workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        # After the command: state, ppid, ..., utime (14th field of the line), stime.
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, from /proc/PID/task."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for stat in Path(f"/proc/{pid}/task").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_cpu_delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """Per thread, the CPU used between two `thread_cpu` readings (new threads whole)."""
    return {tid: s - before.get(tid, 0.0) for tid, s in after.items()}


def thread_names_of(pid: int) -> dict[int, str]:
    """The Python names of `pid`'s threads by thread id (py-spy dump), {} without py-spy."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return {}
    try:
        dump = subprocess.run([str(spy), "dump", "--pid", str(pid), "--nonblocking"],
                              capture_output=True, timeout=30, check=False).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names: dict[int, str] = {}
    for line in dump.splitlines():
        m = re.match(r'Thread (\d+) \(\w+\): "([^"]*)"', line)  # Thread 4242 (idle): "x"
        if m:
            names[int(m.group(1))] = m.group(2)
    return names


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"   # smtp-source reports no latency


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| size | sessions | tls | msgs | accepted | accept msgs/s | p50 ms | p99 ms "
            "| at sink | e2e msgs/s | relay CPU ms/msg | failed |")
    sep = "|" + "---|" * 12
    lines = [head, sep]
    for r in rows:
        failed = ", ".join(f"{k}: {v}" for k, v in r["failed"].items()) or "-"
        lines.append(
            f"| {r['size'] // 1024} KB | {r['sessions']} | {r['tls']}"
            f"{' (smtp-source)' if r.get('client') == 'smtp-source' else ''}"
            f"{'' if r['reuse'] else ' (new conn/msg)'} | {r['messages']} | {r['accepted']} "
            f"| {r['accept_rate']:.0f} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} "
            f"| {r['delivered']} | {r['e2e_rate']:.0f} "
            f"| {r.get('relay_cpu_ms_per_msg', 0):.2f} | {failed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relay end-to-end benchmark (loopback only)")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--sizes", default="2048,20480", help="comma-separated message sizes")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--tls", choices=["starttls", "implicit", "none"], default="starttls",
                   help="none: the trusted-network plain listener, no AUTH")
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--timeout", type=float, default=180.0, help="per-scenario limit (s)")
    p.add_argument("--ceiling", action="store_true",
                   help="also measure loadgen → sink without relay (harness ceiling)")
    p.add_argument("--record", action="store_true", help="append the results to RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, state)")
    p.add_argument("--profile", default="",
                   help="py-spy the relay process into PREFIX-<size>.txt (raw stacks)")
    p.add_argument("--profile-args", default="",
                   help="more py-spy record flags, space-separated, e.g. \"--native\" or "
                        "\"--gil\" (samples carry the thread: --threads)")
    p.add_argument("--config-extra", default="",
                   help='TOML appended to the relay config, e.g. "[dkim]\\nsign_processes = 0"')
    p.add_argument("--delivery-extra", default="",
                   help='keys added to [delivery], e.g. \'accept_first_max_hold = "0s"\'')
    p.add_argument("--commit-window", type=float, default=None,
                   help="server.commit_window in seconds (default: relay's)")
    p.add_argument("--workers", type=int, default=1, help="server.workers")
    p.add_argument("--tls-resume", action="store_true",
                   help="the loadgen resumes its TLS session on each new connection "
                        "(with --no-reuse: what a smarthost's session cache does)")
    p.add_argument("--client", choices=["loadgen", "smtp-source"], default="loadgen",
                   help="load generator: bench/loadgen.py, or Postfix's smtp-source "
                        "(C, cheaper; plain SMTP only, so with --tls none)")
    p.add_argument("--history", action=argparse.BooleanOptionalAction, default=True,
                   help="[history] enabled (--no-history: relay records no message "
                        "history or sending statistics; for A/B runs of its cost)")
    args = p.parse_args(argv)
    if args.tls == "implicit":
        p.error("the generated config has no implicit-TLS listener; use starttls or none")
    if args.client == "smtp-source" and args.tls != "none":
        p.error("--client smtp-source speaks plain SMTP only: add --tls none")
    if args.client == "smtp-source" and smtpsource.find() is None:
        p.error("--client smtp-source: smtp-source is not installed "
                "(Debian: apt-get install postfix)")

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    rows: list[dict[str, Any]] = []
    ceilings: list[dict[str, Any]] = []
    for size in sizes:
        sc = Scenario(size, args.messages, args.sessions, args.tls, args.reuse,
                      workers=args.workers,
                      profile=f"{args.profile}-{size}.txt" if args.profile else "",
                      profile_args=tuple(args.profile_args.split()),
                      extra=args.config_extra.replace("\\n", "\n") + (
                          "" if args.history else "\n[history]\nenabled = false\n"),
                      delivery_extra=args.delivery_extra.replace("\\n", "\n"),
                      commit_window=args.commit_window, client=args.client,
                      tls_resume=args.tls_resume)
        row = run_scenario(sc, tmp / f"run-{size}", args.timeout)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.ceiling:
            ceilings.append(run_ceiling(size, args.messages, args.sessions, args.timeout,
                                        tmp / f"ceiling-{size}"))
    out = table(rows)
    if ceilings:
        out += "\n\nHarness ceiling (loadgen → bench sink, no relay, plain SMTP):\n\n"
        out += "| size | msgs/s | p50 ms | p99 ms |\n|---|---|---|---|\n"
        out += "\n".join(f"| {c['size'] // 1024} KB | {c['rate']:.0f} | {c['p50_ms']:.1f} "
                         f"| {c['p99_ms']:.1f} |" for c in ceilings)
    print(out)
    if args.record:
        bench_results.record("End-to-end", "bench/e2e.py",
                       argv if argv is not None else sys.argv[1:], out)
    if not args.keep:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}", file=sys.stderr)
    ok = all(r["accepted"] == r["messages"] and r["delivered"] >= r["messages"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
