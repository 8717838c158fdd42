"""Process life under real signals: SIGHUP reload under load (new certificate for new
handshakes, nothing dropped, an invalid config refused and logged), SIGTERM letting a
session in DATA finish, sd_notify READY/RELOADING/STOPPING through $NOTIFY_SOCKET, and
JSON log lines with one line per delivery attempt."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import ssl
import threading
import time
from pathlib import Path

import trustme
from adminkit import PASSWORD, make_admin_relay

from relay.testing.dnsserver import DnsServer
from relay.testing.process import write_config
from relay.testing.sink import Sink
from relay.testing.wait import wait_until

MSG = b"From: app@example.com\r\nTo: x@ok.test\r\nSubject: load\r\n\r\nbody\r\n"


def _peer_cert_issuer(port: int, ctx: ssl.SSLContext) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.starttls(context=ctx)
        cert = s.sock.getpeercert()  # type: ignore[union-attr]
    return str(cert["issuer"])


def test_sighup_reload_under_load(tmp_path: Path, dns: DnsServer,
                                  sinks: tuple[Sink, Sink]) -> None:
    a = make_admin_relay(tmp_path, dns, sinks)
    sinks[0].clear()
    try:
        accepted: list[str] = []
        errors: list[str] = []
        stop = threading.Event()

        def load() -> None:
            # One long session sending message after message across the reloads.
            try:
                with smtplib.SMTP("127.0.0.1", a.submit_port, timeout=10) as s:
                    s.starttls(context=a.tls.client)
                    s.login("app", PASSWORD)
                    for i in range(2000):
                        if stop.is_set():
                            break
                        s.mail("app@example.com")
                        s.rcpt(f"load{i}@ok.test")
                        code, reply = s.data(MSG)
                        if code != 250:
                            errors.append(reply.decode())
                        else:
                            accepted.append(reply.decode())
            except (smtplib.SMTPException, OSError) as e:
                errors.append(f"session broke: {e!r}")

        worker = threading.Thread(target=load)
        worker.start()
        wait_until(lambda: len(accepted) >= 5, 15, "load to start")
        # 1. A new certificate from another CA: new handshakes get it.
        ca2 = trustme.CA()
        cert = ca2.issue_cert("127.0.0.1", "localhost")
        cert_path, key_path = tmp_path / "cert2.pem", tmp_path / "key2.pem"
        cert_path.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        key_path.write_bytes(cert.private_key_pem.bytes())
        data = dict(a.data, tls={"cert": str(cert_path), "key": str(key_path)})
        write_config(a.config, data)
        os.kill(a.relay.pid, signal.SIGHUP)
        wait_until(lambda: any(ln.startswith("relay: reloaded") for ln in a.relay.stdout_lines),
                   10, "the reload")
        ctx2 = ssl.create_default_context()
        ca2.configure_trust(ctx2)
        assert "relay.test" not in _peer_cert_issuer(a.submit_port, ctx2)
        # 2. An invalid config is refused; the old one (and the new certificate) stays.
        a.config.write_text(a.config.read_text() + "\n[bogus]\nx = 1\n")
        os.kill(a.relay.pid, signal.SIGHUP)
        wait_until(lambda: any(ln.startswith("relay: reload refused")
                               for ln in a.relay.stdout_lines), 10, "the refusal")
        refused = next(ln for ln in a.relay.stdout_lines if "refused" in ln)
        assert "bogus" in refused
        _peer_cert_issuer(a.submit_port, ctx2)
        n = len(accepted)
        wait_until(lambda: len(accepted) >= n + 5, 15, "load to go on after the reloads")
        stop.set()
        worker.join(30)
        assert errors == []
        sinks[0].wait_for(len(accepted), timeout=30)
        assert "reload refused" in a.relay.stderr()
    finally:
        a.relay.stop()


def test_sigterm_lets_a_session_in_data_finish(tmp_path: Path, dns: DnsServer,
                                               sinks: tuple[Sink, Sink]) -> None:
    a = make_admin_relay(tmp_path, dns, sinks)
    s = smtplib.SMTP("127.0.0.1", a.submit_port, timeout=10)
    try:
        s.starttls(context=a.tls.client)
        s.login("app", PASSWORD)
        s.mail("app@example.com")
        s.rcpt("drain@busy.test")
        code, _ = s.docmd("DATA")
        assert code == 354
        s.send(MSG[:40])
        os.kill(a.relay.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert a.relay.running  # waiting for the session in DATA
        s.send(MSG[40:] + b".\r\n")
        code, reply = s.getreply()
        assert code == 250, reply
    finally:
        s.close()
    assert a.relay.terminate(30) == 0
    # Accepted means on disk: it is still queued after the stop.
    from relay.testing.process import run_cli
    listed = run_cli("queue", "list", "--json", config=a.config)
    assert "drain@busy.test" in listed.stdout


def test_sd_notify_and_json_logs(tmp_path: Path, dns: DnsServer,
                                 sinks: tuple[Sink, Sink]) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=str(path))
    a = make_admin_relay(tmp_path, dns, sinks, extra_args=("--log-format", "json"), env=env)
    try:
        got = [sock.recv(4096).decode()]
        assert got[0].startswith("READY=1")
        qid = a.send("logged@ok.test", "json logs")
        os.kill(a.relay.pid, signal.SIGHUP)
        got += [sock.recv(4096).decode(), sock.recv(4096).decode()]
        assert got[1].startswith("RELOADING=1") and "MONOTONIC_USEC=" in got[1]
        assert got[2] == "READY=1"

        def attempt_line() -> dict[str, object] | None:
            for line in a.relay.stderr().splitlines():
                rec = json.loads(line)  # every line is JSON
                if rec.get("queue_id") == qid:
                    return rec
            return None

        rec = wait_until(attempt_line, 15, "the attempt's log line")
        assert rec["recipient_domain"] == "ok.test"
        assert rec["source_ip"] in ("127.0.0.10", "127.0.0.11")
        assert str(rec["response"]).startswith("250")
        assert rec["level"] == "info" and rec["logger"] == "relay.delivery"
        assert a.relay.terminate(30) == 0
        assert sock.recv(4096).decode() == "STOPPING=1"
    finally:
        a.relay.stop()
        sock.close()
