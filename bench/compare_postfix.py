"""relay against Postfix on the same machine, same load generator, same sink, one run.

    .venv/bin/python bench/compare_postfix.py                 # 2 KB + 20 KB, 50 sessions
    .venv/bin/python bench/compare_postfix.py --messages 2000 --repeat 3 --record
    make bench-compare

For every (size, connection mode) it runs, `--repeat` times each (median reported):

- **relay**: `bench/e2e.py`'s scenario — a DNS server, the bench sink on 127.0.0.2, relay as
  a subprocess with a STARTTLS + AUTH listener, `sender.test` a verified identity whose
  messages are DKIM-signed (RSA-2048) on the way out; the load generator speaks STARTTLS
  and AUTH PLAIN.
- **Postfix**: a throwaway instance (Debian's postfix) in /tmp/relay-postfix-* with its own
  main.cf/master.cf/queue, listening on 127.0.0.1, relaying `bench.test` to the same bench
  sink on 127.0.0.2 (`relayhost`), default durability (cleanup fsyncs the queue file
  before 250), no signing; the load generator speaks plain SMTP from `mynetworks`, as the
  issue's targets are set.
- **Postfix, same dialogue** (`--postfix-tls`, on when Cyrus SASL's tools are installed): the
  same instance, but with STARTTLS and AUTH PLAIN required before relaying, like relay's
  submission listener (relay.testing.postfix.submission_config); the load generator then
  speaks STARTTLS + AUTH to both, and a second table compares relay with it.

Figures: accept msgs/s (first connection → last 250), end-to-end msgs/s (first connection →
last message at the sink), end-of-DATA → 250 latency. The "ceiling" block compares relay
single-process on its plain `trusted_networks` listener with a bare aiosmtpd + uvloop no-op
server (bench/noopserver.py), and with `server.workers = 2` when `--workers2` is given,
driven by Postfix's smtp-source when it is installed (bench/smtpsource.py says why: the
Python load generator's own CPU caps a plain-SMTP run near the no-op server's rate).

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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import results as bench_results  # noqa: E402
import smtpsource  # noqa: E402
from e2e import (  # noqa: E402
    DOMAIN,
    SINK_HOST,
    Scenario,
    run_scenario,
    stop,
    wait_for_line,
)

from relay.testing.postfix import (  # noqa: E402
    instance_dir,
    postfix,
    submission_config,
    submission_unavailable,
    write_config,
)

USER, PASSWORD = "bench", "bench-password-1"  # the Postfix submission instance's login


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loadgen(port: int, size: int, messages: int, sessions: int, reuse: bool, timeout: float,
             tls: str = "none", host: str = "127.0.0.1", login: tuple[str, str] | None = None,
             tls_resume: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--host", host, "--port", str(port),
           "--messages", str(messages), "--size", str(size), "--concurrency", str(sessions),
           "--timeout", str(timeout), "--domain", DOMAIN, "--tls", tls,
           "--reuse" if reuse else "--no-reuse"]
    if login is not None:
        cmd += ["--user", login[0], "--password", login[1]]
    if tls_resume:
        cmd.append("--tls-resume")
    done = subprocess.run(cmd, capture_output=True, timeout=timeout + 30, check=False)
    try:
        return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"loadgen failed: {done.stderr.decode()[-2000:]}") from None


def _start_sink(work: Path, messages: int, timeout: float) -> tuple[subprocess.Popen[bytes],
                                                                      Path, int]:
    out_path = work / "sink.out"
    with out_path.open("wb") as out:
        sink = subprocess.Popen(
            [sys.executable, str(HERE / "sinkserver.py"), "--host", SINK_HOST, "--port", "0",
             "--expect", str(messages), "--timeout", str(timeout + 30)],
            stdout=out, stderr=subprocess.STDOUT)
    port = int(json.loads(wait_for_line(out_path, '"ready"', sink, 10))["port"])
    return sink, out_path, port


def _sink_summary(sink: subprocess.Popen[bytes], out_path: Path,
                  timeout: float) -> dict[str, Any]:
    try:
        sink.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(sink)
    lines = [json.loads(x) for x in out_path.read_text().splitlines()
             if x.startswith("{") and '"summary"' in x]
    return lines[-1] if lines else {"messages": 0, "last_at": 0.0}


def postfix_available() -> str | None:
    """None if Postfix can be used, else why not."""
    for prog in ("postfix", "postconf"):
        if shutil.which(prog) is None:
            return f"{prog} is not installed (Debian: apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (postfix start drops to user postfix)"
    return None


def run_postfix(size: int, messages: int, sessions: int, reuse: bool, timeout: float,
                submission: bool = False, tls_resume: bool = False) -> dict[str, Any]:
    """One run against a fresh Postfix instance; removed afterwards. `submission`: STARTTLS
    and AUTH required (the dialogue relay's listener has), else plain SMTP from mynetworks."""
    base = instance_dir()  # world-traversable: the daemons run as user postfix
    conf = base / "conf"
    conf.mkdir()
    sink: subprocess.Popen[bytes] | None = None
    started = False
    try:
        sink, sink_out, sink_port = _start_sink(base, messages, timeout)
        listen = _free_port()
        extra = submission_config(conf, base, "postfix.bench", USER, PASSWORD) \
            if submission else []
        write_config(conf, base, listen, "postfix.bench", [
            f"relay_domains = {DOMAIN}",
            f"relayhost = [{SINK_HOST}]:{sink_port}",
            "smtpd_peername_lookup = no",
            *extra,
        ])
        (base / "queue").mkdir()
        checked = postfix(conf, "check")
        if checked.returncode != 0:
            raise RuntimeError(f"postfix check: {checked.stderr}")
        st = postfix(conf, "start")
        if st.returncode != 0:
            raise RuntimeError(f"postfix start: {st.stderr}")
        started = True
        _wait_port(listen, 20)
        load = (_loadgen(listen, size, messages, sessions, reuse, timeout, tls="starttls",
                         login=(USER, PASSWORD), tls_resume=tls_resume) if submission
                else _loadgen(listen, size, messages, sessions, reuse, timeout))
        at_sink = _sink_summary(sink, sink_out,
                                timeout + 30 if load["accepted"] == messages else 2.0)
        return _row(load, at_sink, messages)
    finally:
        if started:
            postfix(conf, "stop")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and postfix(conf, "status").returncode == 0:
                time.sleep(0.2)
        if sink is not None:
            stop(sink)
        shutil.rmtree(base, ignore_errors=True)


def _wait_port(port: int, timeout: float) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def _row(load: dict[str, Any], at_sink: dict[str, Any], messages: int) -> dict[str, Any]:
    start = float(load["first_connect_at"])
    e2e = at_sink["last_at"] - start if at_sink.get("messages") else 0.0
    complete = load["accepted"] == messages and at_sink.get("messages", 0) >= messages
    return {"accept_rate": float(load["msgs_per_s"]) if load["accepted"] == messages else 0.0,
            "e2e_rate": round(at_sink["messages"] / e2e, 1) if complete and e2e > 0 else 0.0,
            "p50_ms": load["latency_ms"]["p50"], "p99_ms": load["latency_ms"]["p99"],
            "failed": load["failed"]}


def run_relay(size: int, messages: int, sessions: int, reuse: bool, timeout: float,
              work: Path, tls: str = "starttls", workers: int = 1,
              client: str = "loadgen", tls_resume: bool = False) -> dict[str, Any]:
    r = run_scenario(Scenario(size, messages, sessions, tls, reuse, workers, client=client,
                              tls_resume=tls_resume), work, timeout)
    complete = r["accepted"] == messages
    return {"accept_rate": r["accept_rate"] if complete else 0.0,
            "e2e_rate": r["e2e_rate"] if complete and r["delivered"] >= messages else 0.0,
            "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "failed": r["failed"]}


def run_noop(size: int, messages: int, sessions: int, timeout: float,
             work: Path, client: str = "loadgen") -> dict[str, Any]:
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


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(v: float | None, digits: int = 0) -> str:
    return "skipped" if v is None else f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}×"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relay vs Postfix on loopback (same load, same sink)")
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
    p.add_argument("--no-ceiling", action="store_true")
    p.add_argument("--postfix-tls", choices=["auto", "yes", "no"], default="auto",
                   help="also measure Postfix with STARTTLS + AUTH required, the dialogue "
                        "relay is driven with (auto: when Cyrus SASL's saslpasswd2 is "
                        "installed); a second table compares relay with it")
    p.add_argument("--workers2", action="store_true",
                   help="also run relay with server.workers = 2 (every figure, and the "
                        "plain-listener ceiling)")
    p.add_argument("--ceiling-client", choices=["auto", "smtp-source", "loadgen"],
                   default="auto",
                   help="load generator of the plain-SMTP ceiling: Postfix's smtp-source (C; "
                        "auto: when installed) or bench/loadgen.py, whose own ~0.9 ms of CPU "
                        "per message caps it near the no-op server's rate")
    p.add_argument("--ceiling-messages", type=int, default=5000,
                   help="messages per ceiling run")
    p.add_argument("--ceiling-sessions", default="50,100",
                   help="comma-separated session counts for the ceiling")
    p.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = p.parse_args(argv)
    if args.messages < 1 or args.repeat < 1 or args.repeat > 9:
        p.error("--messages >= 1 and 1 <= --repeat <= 9")

    why = "not asked for (--no-postfix)" if args.no_postfix else postfix_available()
    if why is not None:
        print(f"compare_postfix: Postfix is not usable here: {why}; "
              "measuring relay only", file=sys.stderr)
    why_tls = why or ("not asked for (--postfix-tls no)" if args.postfix_tls == "no"
                      else submission_unavailable())
    if why_tls is not None and args.postfix_tls == "yes":
        p.error(f"--postfix-tls yes: {why_tls}")
    if why is None and why_tls is not None:
        print(f"compare_postfix: Postfix with STARTTLS + AUTH not measured: {why_tls}",
              file=sys.stderr)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    ceiling_sessions = [int(s) for s in args.ceiling_sessions.split(",") if s.strip()]
    ceiling_client = args.ceiling_client
    if ceiling_client == "auto":
        ceiling_client = "smtp-source" if smtpsource.find() is not None else "loadgen"
    elif ceiling_client == "smtp-source" and smtpsource.find() is None:
        p.error("--ceiling-client smtp-source: smtp-source is not installed "
                "(Debian: apt-get install postfix)")
    if ceiling_client == "loadgen" and not args.no_ceiling:
        print("compare_postfix: smtp-source not found; the ceiling is measured with "
              "bench/loadgen.py, which caps it at its own rate", file=sys.stderr)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("new", "new-resumed", "reuse"):
            p.error(f"--modes: {m!r} is not a mode; expected new, new-resumed or reuse")
    budget = Budget(args.budget)
    tmp = Path(tempfile.mkdtemp(prefix="relay-compare-"))
    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}

    def record(key: tuple[str, int, str], fn: Any, which: range | None = None) -> None:
        runs = results.setdefault(key, [])
        for i in range(args.repeat) if which is None else which:
            if not budget.left():
                print(f"compare_postfix: budget spent, skipping {key} run {i + 1}",
                      file=sys.stderr)
                return
            try:
                r = fn(i)
            except Exception as e:  # one failed run is reported, the rest still runs
                print(f"compare_postfix: {key} run {i + 1} failed: {e}", file=sys.stderr)
                continue
            runs.append(r)
            print(json.dumps({"figure": list(key), "run": i + 1, **r}), file=sys.stderr,
                  flush=True)

    try:
        for size in sizes:
            for mode in modes:
                reuse, resume = mode == "reuse", mode == "new-resumed"
                record(("relay", size, mode), lambda i, s=size, r=reuse, m=mode, t=resume:
                       run_relay(s, args.messages, args.sessions, r, args.timeout,
                                 tmp / f"relay-{s}-{m}-{i}", tls_resume=t))
                if args.workers2:
                    record(("relay-w2", size, mode), lambda i, s=size, r=reuse, m=mode,
                           t=resume: run_relay(s, args.messages, args.sessions, r,
                                               args.timeout, tmp / f"relay2-{s}-{m}-{i}",
                                               workers=2, tls_resume=t))
                # Postfix takes plain SMTP: resuming TLS changes nothing there, so the
                # resumed mode is compared with its "new" runs.
                if why is None and not (resume and "new" in modes):
                    pf_mode = "new" if resume else mode
                    record(("postfix", size, pf_mode), lambda i, s=size, r=reuse: run_postfix(
                        s, args.messages, args.sessions, r, args.timeout))
                if why_tls is None:
                    record(("postfix-tls", size, mode), lambda i, s=size, r=reuse, t=resume:
                           run_postfix(s, args.messages, args.sessions, r, args.timeout,
                                       submission=True, tls_resume=t))
        if not args.no_ceiling:
            size, n, cc = sizes[0], args.ceiling_messages, ceiling_client
            for ss in ceiling_sessions:
                # The three alternate run by run, so drift on the shared machine falls on
                # all of them alike.
                for i in range(args.repeat):
                    record(("noop", size, f"reuse-{ss}"), lambda _, i=i, ss=ss: run_noop(
                        size, n, ss, args.timeout, tmp / f"noop-{ss}-{i}", cc), range(i, i + 1))
                    record(("relay-plain", size, f"reuse-{ss}"),
                           lambda _, i=i, ss=ss: run_relay(
                               size, n, ss, True, args.timeout, tmp / f"plain-{ss}-{i}",
                               tls="none", client=cc), range(i, i + 1))
                    if args.workers2:
                        record(("relay-plain-w2", size, f"reuse-{ss}"),
                               lambda _, i=i, ss=ss: run_relay(
                                   size, n, ss, True, args.timeout,
                                   tmp / f"plain2-{ss}-{i}", tls="none", workers=2,
                                   client=cc), range(i, i + 1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(who: str, size: int, mode: str, key: str) -> float | None:
        return median_of(results.get((who, size, mode), []), key)

    def postfix_mode(mode: str) -> str:
        return "new" if mode == "new-resumed" else mode   # Postfix's runs for the mode

    label = {"new": "new connection per message",
             "new-resumed": "new connection per message, TLS session resumed",
             "reuse": "connections reused"}
    w2 = args.workers2

    def table(other: str, other_mode: Any, title: str) -> str:
        """relay (one process, and workers = 2) against `other`'s runs of the same figures;
        `other_mode` maps a relay mode to the mode `other` was measured in."""
        if w2:
            lines = [f"| figure | relay, 1 process | relay, workers = 2 | {title} "
                     "| ratio (1 process) | ratio (workers = 2) |",
                     "|---|---:|---:|---:|---:|---:|"]
        else:
            lines = [f"| figure | relay | {title} | ratio |", "|---|---:|---:|---:|"]

        def row(what: str, a: float | None, a2: float | None, b: float | None, digits: int,
                ratios: bool) -> str:
            if w2:
                return (f"| {what} | {fmt(a, digits)} | {fmt(a2, digits)} | {fmt(b, digits)} "
                        f"| {ratio(a, b) if ratios else '-'} "
                        f"| {ratio(a2, b) if ratios else '-'} |")
            return f"| {what} | {fmt(a, digits)} | {fmt(b, digits)} | " \
                   f"{ratio(a, b) if ratios else '-'} |"

        for key, what in (("accept_rate", "accept msgs/s"), ("e2e_rate", "end-to-end msgs/s")):
            for size in sizes:
                for mode in modes:
                    lines.append(row(f"{what}, {size // 1024} KB, {label.get(mode, mode)}",
                                     med("relay", size, mode, key),
                                     med("relay-w2", size, mode, key),
                                     med(other, size, other_mode(mode), key), 0, True))
        for size in sizes:
            for mode in modes:
                for q in ("p50_ms", "p99_ms"):
                    lines.append(row(f"{q[:3]} end-of-DATA → 250 ms, {size // 1024} KB, "
                                     f"{label.get(mode, mode)}", med("relay", size, mode, q),
                                     med("relay-w2", size, mode, q),
                                     med(other, size, other_mode(mode), q), 1, False))
        return "\n".join(lines)

    out = table("postfix", postfix_mode, "Postfix")
    if why_tls is None:
        out += ("\n\nThe same dialogue: Postfix with STARTTLS + AUTH PLAIN required (Cyrus "
                "SASL, sasldb), driven exactly as relay is.\n\n"
                + table("postfix-tls", lambda m: m, "Postfix, STARTTLS + AUTH"))
    if not args.no_ceiling:
        size = sizes[0]
        cl = [f"| ceiling figure (plain SMTP, connections reused, {ceiling_client}) "
              "| msgs/s | of no-op |", "|---|---:|---:|"]
        for ss in ceiling_sessions:
            mode = f"reuse-{ss}"
            noop = med("noop", size, mode, "accept_rate")
            plain = med("relay-plain", size, mode, "accept_rate")
            cl += [f"| aiosmtpd + uvloop no-op server, {size // 1024} KB, {ss} sessions "
                   f"| {fmt(noop)} | 1.00× |",
                   f"| relay, 1 process, trusted_networks listener, {size // 1024} KB, "
                   f"{ss} sessions | {fmt(plain)} | {ratio(plain, noop)} |"]
            if args.workers2:
                pw2 = med("relay-plain-w2", size, mode, "accept_rate")
                cl.append(f"| relay, server.workers = 2, {size // 1024} KB, {ss} sessions "
                          f"| {fmt(pw2)} | {ratio(pw2, noop)} |")
        out += "\n\n" + "\n".join(cl)
    failures = {f"{k[0]} {k[1] // 1024} KB {k[2]}": r["failed"]
                for k, runs in results.items() for r in runs if r.get("failed")}
    note = (f"\n\nMedian of {args.repeat} runs of {args.messages} messages, "
            f"{args.sessions} sessions. relay: STARTTLS + AUTH, DKIM RSA-2048 on every "
            "message, 250 after a synced LMDB commit. Postfix: plain SMTP from mynetworks, "
            "no signing, default durability.")
    if why_tls is None:
        note += (" Postfix, STARTTLS + AUTH: the same instance with "
                 "smtpd_tls_security_level = may, smtpd_tls_auth_only = yes and "
                 "smtpd_relay_restrictions = permit_sasl_authenticated, reject; "
                 "its certificate is a self-signed P-256 one like relay's.")
    if not args.no_ceiling:
        note += (f" Ceiling: median of {args.repeat} runs of {args.ceiling_messages} messages "
                 f"each, load from {ceiling_client}, the three servers alternating.")
    if why is not None:
        note += f" Postfix not measured: {why}."
    if failures:
        note += f" Failed transactions: {json.dumps(failures)}."
    out += note
    print(out)
    if args.record:
        pf = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                            text=True, check=False).stdout.strip() if why is None else "-"
        bench_results.record("relay vs Postfix", "bench/compare_postfix.py",
                       argv if argv is not None else sys.argv[1:], out,
                       machine_extra=f"Postfix {pf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
