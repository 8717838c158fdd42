"""One run of the fair comparison (bench/compare_postfix.py): a server that takes STARTTLS +
AUTH PLAIN and DKIM-signs every message with RSA-2048, the same load generator and bench
sink, and the server's own CPU per delivered message.

- `run_relay(...)`: bench/e2e.py's relay (a subprocess, `sender.test` a verified identity)
  with `[dkim] key_type = "rsa"`: one RSA-2048 signature per message, as OpenDKIM makes
  (relay's default also adds an Ed25519 one).
- `run_postfix(...)`: a private Postfix (relay.testing.postfix) requiring STARTTLS + AUTH
  (submission_config), with OpenDKIM as its milter (relay.testing.opendkim: same header
  list, relaxed/relaxed, milter_default_action = tempfail), relaying to the sink.

Both: the loopback DNS server holds the signing keys (relay's selectors, OpenDKIM's
`odkim`), the sink stores every message, and after the run every one is DKIM-verified
(bench/dkimaudit.py). CPU: the server's process tree (relay and its workers; Postfix's
master and everything it forked, plus opendkim) from /proc before the load starts and
after the last message is at the sink and the tree has gone quiet, reaped children
included (bench/proctree.py). The load generator, the sink and the audit are not counted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dkimaudit import audit
from e2e import (
    DOMAIN,
    PASSWORD,
    SENDER_DOMAIN,
    SINK_HOST,
    free_port,
    relay_config,
    stop,
    wait_for_line,
)
from proctree import settled_cpu

from relay.testing.dnsserver import DnsServer
from relay.testing.opendkim import OpenDkimSigner
from relay.testing.postfix import instance_dir, postfix, submission_config, write_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POSTFIX_USER, POSTFIX_PASSWORD = "bench", "bench-password-1"
RSA_ONLY = '\n[dkim]\nkey_type = "rsa"\n'

# Runs several `relay` CLI commands in one interpreter (each `python -m relay ...` costs a
# second or two of start-up on a loaded machine): JSON [[argv, stdin], ...] on stdin, JSON
# [[exit status, stdout, stderr], ...] on stdout.
_CLI_BATCH = """
import contextlib, io, json, sys
from relay.cli import main
done = []
for argv, stdin in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    sys.stdin = io.StringIO(stdin)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    done.append([rc, out.getvalue(), err.getvalue()])
sys.stdout.write(json.dumps(done))
"""


def relay_cli(cfg: Path, *commands: tuple[list[str], str]) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each `relay --config CFG ARGV` (with its stdin)."""
    batch = [[["--config", str(cfg), *argv], stdin] for argv, stdin in commands]
    done = subprocess.run([sys.executable, "-c", _CLI_BATCH], input=json.dumps(batch).encode(),
                          cwd=ROOT, timeout=120, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"relay CLI batch failed: {done.stderr.decode()[-2000:]}")
    return [(int(rc), out, err) for rc, out, err in json.loads(done.stdout)]


def setup_relay(cfg: Path, dns: DnsServer) -> None:
    """User `bench` (PASSWORD), and `sender.test` a verified identity whose DKIM keys are
    published in `dns`: what bench/e2e.py's set-up does, in two interpreters instead of
    five."""
    made = relay_cli(cfg, (["user", "add", "bench", "--password-stdin"], PASSWORD + "\n"),
                     (["dkim", "keygen", SENDER_DOMAIN], ""),
                     (["identity", "add", SENDER_DOMAIN], ""),
                     (["identity", "verify", SENDER_DOMAIN, "--json"], ""))
    for (rc, _, err), what in zip(made[:3], ("user add", "dkim keygen", "identity add"),
                                  strict=True):
        if rc != 0:
            raise RuntimeError(f"relay {what} failed: {err[-1000:]}")
    for rec in json.loads(made[3][1])["records"]:
        # The DKIM selectors, and whatever else verification wants in TXT (DMARC).
        if rec["expected"] and rec["rtype"] == "TXT" and rec["status"] != "ok":
            dns.add(rec["name"], "TXT", rec["expected"], 3600)
    rc, out, err = relay_cli(cfg, (["identity", "verify", SENDER_DOMAIN], ""))[0]
    if rc != 0:
        raise RuntimeError(f"relay identity verify failed:\n{out[-2000:]}{err[-1000:]}")


def loadgen(port: int, size: int, messages: int, sessions: int, reuse: bool, timeout: float,
            user: str, password: str, tls_resume: bool = False) -> dict[str, Any]:
    """bench/loadgen.py over STARTTLS + AUTH PLAIN; its JSON summary. `tls_resume`: a new
    connection resumes the previous TLS session (as a smarthost's session cache does)."""
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--host", "127.0.0.1", "--port", str(port),
           "--messages", str(messages), "--size", str(size), "--concurrency", str(sessions),
           "--timeout", str(timeout), "--domain", DOMAIN, "--tls", "starttls",
           "--user", user, "--password", password, "--reuse" if reuse else "--no-reuse"]
    if tls_resume:
        cmd.append("--tls-resume")
    done = subprocess.run(cmd, capture_output=True, timeout=timeout + 30, check=False)
    try:
        return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"loadgen failed: {done.stderr.decode()[-2000:]}") from None


class StoringSink:
    """bench/sinkserver.py on 127.0.0.2: counts (and with `store`, keeps) every message."""

    def __init__(self, work: Path, messages: int, timeout: float, store: bool = True) -> None:
        self.out = work / "sink.out"
        self.store = work / "sink.messages"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "sinkserver.py"), "--host", SINK_HOST, "--port", "0",
                 "--expect", str(messages), "--timeout", str(timeout + 30),
                 *(["--store", str(self.store)] if store else [])],
                stdout=out, stderr=subprocess.STDOUT)
        self.port = int(json.loads(wait_for_line(self.out, '"ready"', self.proc, 10))["port"])

    def summary(self, timeout: float) -> dict[str, Any]:
        """Its summary once it has every message (or after `timeout` s, or stopped)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop(self.proc)
        lines = [json.loads(x) for x in self.out.read_text().splitlines()
                 if x.startswith("{") and '"summary"' in x]
        return lines[-1] if lines else {"messages": 0, "last_at": 0.0}

    def stop(self) -> None:
        stop(self.proc)


def row(load: dict[str, Any], at_sink: dict[str, Any], messages: int,
        cpu_s: float) -> dict[str, Any]:
    """The run's figures."""
    start = float(load["first_connect_at"])
    delivered = int(at_sink.get("messages", 0))
    e2e = at_sink["last_at"] - start if delivered else 0.0
    complete = load["accepted"] == messages and delivered >= messages
    return {
        "accept_rate": float(load["msgs_per_s"]) if load["accepted"] == messages else 0.0,
        "e2e_rate": round(delivered / e2e, 1) if complete and e2e > 0 else 0.0,
        "p50_ms": load["latency_ms"]["p50"], "p99_ms": load["latency_ms"]["p99"],
        "failed": load["failed"], "delivered": delivered,
        "cpu_ms_per_msg": round(cpu_s * 1000 / delivered, 3) if delivered else None,
    }


def signed_row(load: dict[str, Any], at_sink: dict[str, Any], messages: int, cpu_s: float,
               sink: StoringSink, dns: DnsServer, domain: str) -> dict[str, Any]:
    """The run's figures and the DKIM audit of every message that reached the sink."""
    checked = audit(sink.store, dns, domain) if sink.store.exists() else None
    return {**row(load, at_sink, messages, cpu_s),
            "dkim_verified": checked.verified if checked else 0,
            "dkim_failed": checked.failed if checked else 0,
            "dkim_failures": checked.failures if checked else ["the sink stored nothing"]}


def run_relay(size: int, messages: int, sessions: int, reuse: bool, timeout: float,
              work: Path, workers: int = 1, tls_resume: bool = False) -> dict[str, Any]:
    """relay, STARTTLS + AUTH, RSA-2048 DKIM on every message (see the module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    dns = DnsServer({DOMAIN: [("MX", f"10 mx.{DOMAIN}", 3600)],
                     f"mx.{DOMAIN}": [("A", SINK_HOST, 3600)]}).start()
    sink: StoringSink | None = None
    relay: subprocess.Popen[bytes] | None = None
    try:
        sink = StoringSink(work, messages, timeout)
        submit_port, plain_port = free_port(), free_port()
        cfg = work / "relay.toml"
        cfg.write_text(relay_config(work / "state", submit_port, plain_port, dns.nameserver,
                                    sink.port, workers, RSA_ONLY))
        setup_relay(cfg, dns)
        relay_out = work / "relay.out"
        with relay_out.open("wb") as out:
            relay = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--config", str(cfg)],
                                     stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for_line(relay_out, "relay: ready", relay, 30)
        cpu0 = settled_cpu([relay.pid])  # workers done starting: only the run counts
        load = loadgen(submit_port, size, messages, sessions, reuse, timeout, "bench", PASSWORD,
                       tls_resume)
        at_sink = sink.summary(timeout + 30 if load["accepted"] == messages else 2.0)
        cpu = settled_cpu([relay.pid]) - cpu0
        return signed_row(load, at_sink, messages, cpu, sink, dns, SENDER_DOMAIN)
    finally:
        if relay is not None:
            stop(relay)
        if sink is not None:
            sink.stop()
        dns.stop()


def postfix_master_pid(base: Path) -> int:
    """The pid of the master of the instance in `base` (every other Postfix process is
    forked by it)."""
    pid_file = base / "queue" / "pid" / "master.pid"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.1)
    raise RuntimeError(f"no Postfix master pid in {pid_file}")


def run_postfix(size: int, messages: int, sessions: int, reuse: bool, timeout: float,
                tls_resume: bool = False) -> dict[str, Any]:
    """Postfix + OpenDKIM, STARTTLS + AUTH (see the module docstring); its instance dir
    is removed afterwards."""
    base = instance_dir()  # world-traversable: the daemons run as user postfix
    conf = base / "conf"
    conf.mkdir()
    dns = DnsServer().start()
    signer = OpenDkimSigner(base, SENDER_DOMAIN)
    sink: StoringSink | None = None
    started = False
    try:
        signer.start()
        dns.set(signer.record_name, "TXT", [signer.txt_record])
        sink = StoringSink(base, messages, timeout)
        listen = free_port()
        write_config(conf, base, listen, "postfix.bench", [
            f"relay_domains = {DOMAIN}",
            f"relayhost = [{SINK_HOST}]:{sink.port}",
            "smtpd_peername_lookup = no",
            *submission_config(conf, base, "postfix.bench", POSTFIX_USER, POSTFIX_PASSWORD),
            *signer.milter_config(),
        ])
        (base / "queue").mkdir()
        # No `postfix check` first (3 s of permission scans): start reports a bad config.
        st = postfix(conf, "start")
        if st.returncode != 0:
            raise RuntimeError(f"postfix start: {st.stderr}")
        started = True
        wait_port(listen, 20)
        roots = [postfix_master_pid(base), signer.pid]
        cpu0 = settled_cpu(roots)
        load = loadgen(listen, size, messages, sessions, reuse, timeout, POSTFIX_USER,
                       POSTFIX_PASSWORD, tls_resume)
        at_sink = sink.summary(timeout + 30 if load["accepted"] == messages else 2.0)
        cpu = settled_cpu(roots) - cpu0
        return signed_row(load, at_sink, messages, cpu, sink, dns, SENDER_DOMAIN)
    finally:
        if started:
            stop_postfix(conf)
        signer.stop()
        if sink is not None:
            sink.stop()
        dns.stop()
        shutil.rmtree(base, ignore_errors=True)


def stop_postfix(conf: Path) -> None:
    """`postfix stop`, then wait (bounded) until the instance is gone."""
    postfix(conf, "stop")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and postfix(conf, "status").returncode == 0:
        time.sleep(0.2)


def wait_port(port: int, timeout: float) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")
