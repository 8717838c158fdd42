"""relay against Postfix + OpenDKIM on the same machine: same dialogue, same work, same load
generator and sink, one run; the servers' own CPU per delivered message.

    .venv/bin/python bench/compare_postfix.py                 # 2 KB + 20 KB, 50 sessions
    .venv/bin/python bench/compare_postfix.py --messages 2000 --repeat 3 --workers2 --record
    make bench-compare

For every (size, connection mode) it runs, `--repeat` times, the servers alternating run by
run (relay, relay with `--workers2`, Postfix + OpenDKIM, the plain Postfix reference; so
drift on the shared machine falls on all of them alike), median reported:

- **relay** (bench/signedruns.py): bench/e2e.py's relay with a STARTTLS + AUTH listener,
  `sender.test` a verified identity, one RSA-2048 DKIM signature per message
  (`[dkim] key_type = "rsa"`), 250 after a synced LMDB commit;
- **Postfix + OpenDKIM** (bench/signedruns.py): a throwaway Postfix (Debian's) requiring
  STARTTLS + AUTH PLAIN before relaying (relay.testing.postfix.submission_config), OpenDKIM
  as its milter (relay.testing.opendkim: RSA-2048, relay's header list, relaxed/relaxed,
  milter_default_action = tempfail), default durability (cleanup fsyncs the queue file
  before 250);
- **Postfix, plain SMTP** (reference only, `--no-reference` to skip): the old baseline,
  plain SMTP from mynetworks and no signing: not the same work.

Every message that reaches the sink in the first two is DKIM-verified afterwards (dkimpy,
against the run's loopback DNS: bench/dkimaudit.py); a run with an unsigned or invalid
message is reported loudly, left out of the figures, and makes the exit status 1.

Figures: the server's CPU per delivered message (every process of it, from /proc, reaped
children included: bench/proctree.py; not the load generator, the sink or the audit),
end-to-end msgs/s (first connection → last message at the sink), accept msgs/s (first
connection → last 250), end-of-DATA → 250 latency; then the issue's targets, met or not.
The "ceiling" block compares relay single-process on its plain `trusted_networks` listener
with a bare aiosmtpd + uvloop no-op server (bench/noopserver.py), and with
`server.workers = 2` when `--workers2` is given, driven by Postfix's smtp-source when it is
installed (bench/smtpsource.py says why).

Bounded: message count per run, `--timeout` per run and `--budget` seconds for the whole
comparison (runs left when the budget is spent are skipped and marked). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import results as bench_results  # noqa: E402
import signedruns  # noqa: E402
import smtpsource  # noqa: E402
from e2e import (  # noqa: E402
    DOMAIN,
    SINK_HOST,
    Scenario,
    free_port,
    run_scenario,
    stop,
    wait_for_line,
)
from proctree import settled_cpu  # noqa: E402

from relay.testing import opendkim  # noqa: E402
from relay.testing.postfix import (  # noqa: E402
    instance_dir,
    postfix,
    submission_unavailable,
    write_config,
)

Run = dict[str, Any]
MODES = ("new", "new-resumed", "reuse")
LABEL = {"new": "new connection per message",
         "new-resumed": "new connection per message, TLS session resumed",
         "reuse": "connections reused"}


def _loadgen(port: int, size: int, messages: int, sessions: int, reuse: bool,
             timeout: float) -> Run:
    """bench/loadgen.py over plain SMTP, no AUTH; its JSON summary."""
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--host", "127.0.0.1", "--port", str(port),
           "--messages", str(messages), "--size", str(size), "--concurrency", str(sessions),
           "--timeout", str(timeout), "--domain", DOMAIN, "--tls", "none",
           "--reuse" if reuse else "--no-reuse"]
    done = subprocess.run(cmd, capture_output=True, timeout=timeout + 30, check=False)
    try:
        return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"loadgen failed: {done.stderr.decode()[-2000:]}") from None


def postfix_available() -> str | None:
    """None if a private Postfix can be used, else why not."""
    for prog in ("postfix", "postconf"):
        if shutil.which(prog) is None:
            return f"{prog} is not installed (Debian: apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (postfix start drops to user postfix)"
    return None


def signing_postfix_available() -> str | None:
    """None if Postfix + OpenDKIM with STARTTLS + AUTH can be used, else why not."""
    return postfix_available() or submission_unavailable() or opendkim.unavailable()


def run_postfix_plain(size: int, messages: int, sessions: int, reuse: bool,
                      timeout: float) -> Run:
    """The reference: a fresh Postfix taking plain SMTP from mynetworks, no signing; its
    instance dir is removed afterwards."""
    base = instance_dir()  # world-traversable: the daemons run as user postfix
    conf = base / "conf"
    conf.mkdir()
    sink: signedruns.StoringSink | None = None
    started = False
    try:
        sink = signedruns.StoringSink(base, messages, timeout, store=False)
        listen = free_port()
        write_config(conf, base, listen, "postfix.bench", [
            f"relay_domains = {DOMAIN}", f"relayhost = [{SINK_HOST}]:{sink.port}",
            "smtpd_peername_lookup = no"])
        (base / "queue").mkdir()
        done = postfix(conf, "start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start: {done.stderr}")
        started = True
        signedruns.wait_port(listen, 20)
        roots = [signedruns.postfix_master_pid(base)]
        cpu0 = settled_cpu(roots)
        load = _loadgen(listen, size, messages, sessions, reuse, timeout)
        at_sink = sink.summary(timeout + 30 if load["accepted"] == messages else 2.0)
        cpu = settled_cpu(roots) - cpu0
        return signedruns.row(load, at_sink, messages, cpu)
    finally:
        if started:
            signedruns.stop_postfix(conf)
        if sink is not None:
            sink.stop()
        shutil.rmtree(base, ignore_errors=True)


def run_relay_plain(size: int, messages: int, sessions: int, timeout: float, work: Path,
                    workers: int, client: str) -> Run:
    """relay on its plain trusted_networks listener (the ceiling block)."""
    r = run_scenario(Scenario(size, messages, sessions, "none", True, workers, client=client),
                     work, timeout)
    complete = r["accepted"] == messages
    return {"accept_rate": r["accept_rate"] if complete else 0.0,
            "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "failed": r["failed"]}


def run_noop(size: int, messages: int, sessions: int, timeout: float,
             work: Path, client: str = "loadgen") -> Run:
    work.mkdir(parents=True, exist_ok=True)
    out_path = work / "noop.out"
    with out_path.open("wb") as out:
        srv = subprocess.Popen([sys.executable, str(HERE / "noopserver.py"), "--port", "0",
                                "--timeout", str(timeout + 30)],
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        port = int(json.loads(wait_for_line(out_path, '"ready"', srv, 10))["port"])
        if client == "smtp-source":
            load = smtpsource.run("127.0.0.1", port, messages, size, sessions, timeout=timeout,
                                  domain=DOMAIN)
        else:
            load = _loadgen(port, size, messages, sessions, True, timeout)
        return {"accept_rate": float(load["msgs_per_s"]), "p50_ms": load["latency_ms"]["p50"],
                "p99_ms": load["latency_ms"]["p99"], "failed": load["failed"]}
    finally:
        stop(srv)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> bool:
        return time.monotonic() < self.deadline


def median_of(runs: list[Run], key: str) -> float | None:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(v: float | None, digits: int = 0) -> str:
    return "skipped" if v is None else f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}×"


class Comparison:
    """The runs of one comparison, by (server, size, mode), and the tables made of them."""

    def __init__(self, sizes: list[int], modes: list[str], workers2: bool) -> None:
        self.sizes, self.modes, self.workers2 = sizes, modes, workers2
        self.runs: dict[tuple[str, int, str], list[Run]] = {}
        self.dkim_failures: list[str] = []
        self.failures: dict[str, Any] = {}

    def add(self, key: tuple[str, int, str], run: Run) -> None:
        name = f"{key[0]} {key[1] // 1024} KB {key[2]}"
        if run.get("failed"):
            self.failures[name] = run["failed"]
        bad = run.get("dkim_failed", 0) or (
            "dkim_verified" in run and run["dkim_verified"] < run["delivered"])
        if bad:
            why = (f"{name}: {run.get('dkim_failed', 0)} of {run['delivered']} delivered "
                   f"messages unsigned or invalid: {run.get('dkim_failures')}")
            print(f"compare_postfix: DKIM CHECK FAILED, run left out: {why}", file=sys.stderr)
            self.dkim_failures.append(why)
            return
        self.runs.setdefault(key, []).append(run)

    def med(self, who: str, size: int, mode: str, key: str) -> float | None:
        return median_of(self.runs.get((who, size, mode), []), key)

    def worst(self, who: str, size: int, mode: str, key: str) -> float | None:
        values = [float(r[key]) for r in self.runs.get((who, size, mode), [])]
        return max(values) if values else None

    def relays(self) -> list[tuple[str, str]]:
        return [("relay", "relay, 1 process")] + (
            [("relay-w2", "relay, workers = 2")] if self.workers2 else [])

    def main_table(self, other: str, title: str, other_mode: Callable[[str], str]) -> str:
        """relay (one process, and workers = 2) against `other`'s runs of the same figures."""
        rel = self.relays()
        lines = ["| figure | " + " | ".join(t for _, t in rel) + f" | {title} | "
                 + " | ".join(f"ratio ({t.removeprefix('relay, ')})" for _, t in rel) + " |",
                 "|---|" + "---:|" * (2 * len(rel) + 1)]
        figures = (("cpu_ms_per_msg", "server CPU ms per delivered message", 3, True),
                   ("e2e_rate", "end-to-end msgs/s", 0, True),
                   ("accept_rate", "accept msgs/s", 0, True),
                   ("p50_ms", "p50 end-of-DATA → 250 ms", 1, False),
                   ("p99_ms", "p99 end-of-DATA → 250 ms", 1, False))
        for key, what, digits, ratios in figures:
            for size in self.sizes:
                for mode in self.modes:
                    b = self.med(other, size, other_mode(mode), key)
                    ours = [self.med(w, size, mode, key) for w, _ in rel]
                    lines.append(
                        f"| {what}, {size // 1024} KB, {LABEL[mode]} | "
                        + " | ".join(fmt(a, digits) for a in ours) + f" | {fmt(b, digits)} | "
                        + " | ".join(ratio(a, b) if ratios else "-" for a in ours) + " |")
        return "\n".join(lines)

    def targets(self, other: str) -> str:
        """The issue's targets against Postfix + OpenDKIM, met or not, with the ratios."""
        lines = ["| target | " + " | ".join(t for _, t in self.relays()) + " |",
                 "|---|" + "---|" * len(self.relays())]

        def verdict(value: float | None, limit: float, at_most: bool, unit: str = "×") -> str:
            if value is None:
                return "not measured"
            met = value <= limit if at_most else value >= limit
            return f"{'met' if met else 'NOT met'} ({value:.2f}{unit})"

        def cells(fn: Callable[[str], str]) -> str:
            return " | ".join(fn(w) for w, _ in self.relays())

        def rel(who: str, size: int, mode: str, key: str) -> float | None:
            a, b = self.med(who, size, mode, key), self.med(other, size, mode, key)
            return a / b if a is not None and b else None

        for size in self.sizes:
            for mode in (m for m in self.modes if m != "new-resumed"):
                where = f"{size // 1024} KB, {LABEL[mode]}"
                lines.append(f"| CPU per message ≤ 0.5× Postfix + OpenDKIM, {where} | " + cells(
                    lambda w, s=size, m=mode: verdict(rel(w, s, m, "cpu_ms_per_msg"), 0.5,
                                                      True)) + " |")
                need = 1.5 if mode == "new" else 2.0
                lines.append(f"| end to end ≥ {need}× Postfix + OpenDKIM, {where} | " + cells(
                    lambda w, s=size, m=mode, n=need: verdict(rel(w, s, m, "e2e_rate"), n,
                                                              False)) + " |")
                if mode == "new":
                    lines.append(f"| accept ≥ 2× Postfix + OpenDKIM, {where} | " + cells(
                        lambda w, s=size, m=mode: verdict(rel(w, s, m, "accept_rate"), 2.0,
                                                          False)) + " |")
                lines.append(f"| p99 end of DATA → 250 < 50 ms in every run, {where} | "
                             + cells(lambda w, s=size, m=mode: verdict(
                                 self.worst(w, s, m, "p99_ms"), 50.0, True, " ms worst"))
                             + " |")
        if 2048 in self.sizes and "reuse" in self.modes:
            lines.append("| relay's CPU ≤ 1.75 ms per message, 2 KB, connections reused | "
                         + cells(lambda w: verdict(self.med(w, 2048, "reuse", "cpu_ms_per_msg"),
                                                   1.75, True, " ms")) + " |")
        return "\n".join(lines)

    def reference_table(self) -> str:
        lines = ["| reference figure (not the same work) | Postfix, plain SMTP, no signing "
                 "| Postfix + OpenDKIM, STARTTLS + AUTH |", "|---|---:|---:|"]
        for key, what, digits in (("cpu_ms_per_msg", "server CPU ms per delivered message", 3),
                                  ("e2e_rate", "end-to-end msgs/s", 0),
                                  ("accept_rate", "accept msgs/s", 0)):
            for size in self.sizes:
                for mode in ("new", "reuse"):
                    if mode in self.modes:
                        lines.append(
                            f"| {what}, {size // 1024} KB, {LABEL[mode]} "
                            f"| {fmt(self.med('postfix-plain', size, mode, key), digits)} "
                            f"| {fmt(self.med('postfix-dkim', size, mode, key), digits)} |")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relay vs Postfix + OpenDKIM on loopback (same "
                                            "dialogue, same signing, same load, same sink)")
    p.add_argument("--messages", type=int, default=2000, help="messages per run")
    p.add_argument("--sizes", default="2048,20480")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (median reported)")
    p.add_argument("--modes", default="new,reuse",
                   help="connection modes: new (a connection per message), new-resumed (the "
                        "same, the loadgen resuming its TLS session as a smarthost's session "
                        "cache does), reuse")
    p.add_argument("--timeout", type=float, default=180.0, help="per run (s)")
    p.add_argument("--budget", type=float, default=3600.0, help="whole comparison (s)")
    p.add_argument("--no-postfix", action="store_true", help="relay and ceilings only")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure Postfix on plain SMTP without signing (the old "
                        "baseline, a reference only: not the same work)")
    p.add_argument("--workers2", action="store_true",
                   help="also run relay with server.workers = 2 (every figure, and the "
                        "plain-listener ceiling)")
    p.add_argument("--no-ceiling", action="store_true")
    p.add_argument("--ceiling-client", choices=["auto", "smtp-source", "loadgen"],
                   default="auto",
                   help="load generator of the plain-SMTP ceiling: Postfix's smtp-source (C; "
                        "auto: when installed) or bench/loadgen.py, whose own ~0.9 ms of CPU "
                        "per message caps it near the no-op server's rate")
    p.add_argument("--ceiling-messages", type=int, default=5000,
                   help="messages per ceiling run")
    p.add_argument("--ceiling-sessions", default="50,100",
                   help="comma-separated session counts for the ceiling")
    p.add_argument("--record", action="store_true", help="append the tables to RESULTS.md")
    args = p.parse_args(argv)
    if args.messages < 1 or args.repeat < 1 or args.repeat > 9:
        p.error("--messages >= 1 and 1 <= --repeat <= 9")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            p.error(f"--modes: {m!r} is not a mode; expected new, new-resumed or reuse")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    ceiling_sessions = [int(s) for s in args.ceiling_sessions.split(",") if s.strip()]

    why = "not asked for (--no-postfix)" if args.no_postfix else signing_postfix_available()
    if why is not None:
        print(f"compare_postfix: Postfix + OpenDKIM is not usable here: {why}; "
              "measuring relay only", file=sys.stderr)
    why_ref = why or ("not asked for (--no-reference)" if not args.reference else None)
    ceiling_client = args.ceiling_client
    if ceiling_client == "auto":
        ceiling_client = "smtp-source" if smtpsource.find() is not None else "loadgen"
    elif ceiling_client == "smtp-source" and smtpsource.find() is None:
        p.error("--ceiling-client smtp-source: smtp-source is not installed "
                "(Debian: apt-get install postfix)")
    if ceiling_client == "loadgen" and not args.no_ceiling:
        print("compare_postfix: smtp-source not found; the ceiling is measured with "
              "bench/loadgen.py, which caps it at its own rate", file=sys.stderr)

    budget = Budget(args.budget)
    tmp = Path(tempfile.mkdtemp(prefix="relay-compare-"))
    cmp = Comparison(sizes, modes, args.workers2)

    def once(key: tuple[str, int, str], i: int, fn: Callable[[], Run]) -> None:
        if not budget.left():
            print(f"compare_postfix: budget spent, skipping {key} run {i + 1}",
                  file=sys.stderr)
            return
        try:
            r = fn()
        except Exception as e:  # one failed run is reported, the rest still runs
            print(f"compare_postfix: {key} run {i + 1} failed: {e}", file=sys.stderr)
            return
        print(json.dumps({"figure": list(key), "run": i + 1, **r}), file=sys.stderr,
              flush=True)
        cmp.add(key, r)

    n, ss, timeout = args.messages, args.sessions, args.timeout
    try:
        for size in sizes:
            for mode in modes:
                reuse, resume = mode == "reuse", mode == "new-resumed"
                # The servers alternate run by run, so drift on the shared machine (other
                # people's tests) falls on all of them alike.
                for i in range(args.repeat):
                    once(("relay", size, mode), i, lambda s=size, r=reuse, m=mode, t=resume,
                         i=i: signedruns.run_relay(s, n, ss, r, timeout,
                                                   tmp / f"relay-{s}-{m}-{i}", tls_resume=t))
                    if args.workers2:
                        once(("relay-w2", size, mode), i, lambda s=size, r=reuse, m=mode,
                             t=resume, i=i: signedruns.run_relay(
                                 s, n, ss, r, timeout, tmp / f"relay2-{s}-{m}-{i}", workers=2,
                                 tls_resume=t))
                    if why is None:
                        once(("postfix-dkim", size, mode), i, lambda s=size, r=reuse,
                             t=resume: signedruns.run_postfix(s, n, ss, r, timeout,
                                                              tls_resume=t))
                    # Plain SMTP has no TLS session to resume: "new" serves both.
                    if why_ref is None and not resume:
                        once(("postfix-plain", size, mode), i, lambda s=size, r=reuse:
                             run_postfix_plain(s, n, ss, r, timeout))
        if not args.no_ceiling:
            size, cn, cc = sizes[0], args.ceiling_messages, ceiling_client
            for cs in ceiling_sessions:
                for i in range(args.repeat):
                    mode = f"reuse-{cs}"
                    once(("noop", size, mode), i, lambda i=i, cs=cs: run_noop(
                        size, cn, cs, timeout, tmp / f"noop-{cs}-{i}", cc))
                    once(("relay-plain", size, mode), i, lambda i=i, cs=cs: run_relay_plain(
                        size, cn, cs, timeout, tmp / f"plain-{cs}-{i}", 1, cc))
                    if args.workers2:
                        once(("relay-plain-w2", size, mode), i, lambda i=i, cs=cs:
                             run_relay_plain(size, cn, cs, timeout, tmp / f"plain2-{cs}-{i}",
                                             2, cc))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    out = ("relay against Postfix + OpenDKIM: the same dialogue (STARTTLS + AUTH PLAIN), "
           "the same signing (one RSA-2048 DKIM signature, relaxed/relaxed, the same "
           "header list), durable before 250, every delivered message's signature "
           "verified at the sink.\n\n"
           + cmp.main_table("postfix-dkim", "Postfix + OpenDKIM", lambda m: m)
           + "\n\nTargets (same run, medians; ratios relay / Postfix + OpenDKIM):\n\n"
           + cmp.targets("postfix-dkim"))
    if why_ref is None:
        out += "\n\n" + cmp.reference_table()
    if not args.no_ceiling:
        size = sizes[0]
        cl = [f"| ceiling figure (plain SMTP, connections reused, {ceiling_client}) "
              "| msgs/s | of no-op |", "|---|---:|---:|"]
        for cs in ceiling_sessions:
            mode = f"reuse-{cs}"
            noop = cmp.med("noop", size, mode, "accept_rate")
            plain = cmp.med("relay-plain", size, mode, "accept_rate")
            cl += [f"| aiosmtpd + uvloop no-op server, {size // 1024} KB, {cs} sessions "
                   f"| {fmt(noop)} | 1.00× |",
                   f"| relay, 1 process, trusted_networks listener, {size // 1024} KB, "
                   f"{cs} sessions | {fmt(plain)} | {ratio(plain, noop)} |"]
            if args.workers2:
                pw2 = cmp.med("relay-plain-w2", size, mode, "accept_rate")
                cl.append(f"| relay, server.workers = 2, {size // 1024} KB, {cs} sessions "
                          f"| {fmt(pw2)} | {ratio(pw2, noop)} |")
        out += "\n\n" + "\n".join(cl)
    note = (f"\n\nMedian of {args.repeat} runs of {args.messages} messages, "
            f"{args.sessions} sessions, the servers alternating run by run. Server CPU: "
            "utime + stime of every process of the server from /proc, reaped children "
            "included (relay: the process and its workers; Postfix: master and all it "
            "forks, with Postfix's default max_use/max_idle, plus opendkim), from the "
            "first connection until the last message is at the sink and the server is "
            "idle; the load generator, the sink and the DKIM audit are not counted. "
            "OpenDKIM: Debian's opendkim as a milter on a unix socket, Mode s, "
            "milter_default_action = tempfail. relay: [dkim] key_type = \"rsa\" (its "
            "default adds an Ed25519 signature). Postfix: cleanup fsyncs before 250.")
    if not args.no_ceiling:
        note += (f" Ceiling: median of {args.repeat} runs of {args.ceiling_messages} messages "
                 f"each, load from {ceiling_client}, the servers alternating.")
    if why is not None:
        note += f" Postfix + OpenDKIM not measured: {why}."
    if cmp.failures:
        note += f" Failed transactions: {json.dumps(cmp.failures)}."
    if cmp.dkim_failures:
        note += (" **DKIM CHECK FAILED (these runs are left out):** "
                 + "; ".join(cmp.dkim_failures) + ".")
    out += note
    print(out)
    if args.record:
        pf = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                            text=True, check=False).stdout.strip() if why is None else "-"
        odkim = subprocess.run(["opendkim", "-V"], capture_output=True, text=True,
                               check=False).stdout.splitlines()[:1] if why is None else []
        bench_results.record("relay vs Postfix + OpenDKIM", "bench/compare_postfix.py",
                             argv if argv is not None else sys.argv[1:], out,
                             machine_extra=", ".join([f"Postfix {pf}", *odkim]))
    return 1 if cmp.dkim_failures else 0


if __name__ == "__main__":
    sys.exit(main())
