"""Jepsen-style crash safety of the whole relay process: nothing accepted is lost (a 250
after DATA is a promise, RFC 5321 §6.1), checked with client and sink ledgers.

Several SMTP clients inject a few thousand small messages, each carrying a unique
token in its Subject, into a relay subprocess while the test `kill -9`s it at
random moments and restarts it on the same state dir. The client ledger records
what relay answered for every token (250 with the queue id, 4xx, 5xx, or a
connection error with no answer); the sinks record what reached them.

Invariants checked at the end, after the last instance had time to deliver:
- every token answered 250 reached a sink at least once (lost = 0);
- no token answered 4xx/5xx reached a sink (relay refused it, so it must not send it);
- duplicates (a token received more than once) stay within what can be delivered
  but not yet settled at the kills: kills x destinations x
  max_connections_per_destination x 2, because a delivery worker sends the next
  transaction while the previous one's settle commits (Scheduler._worker: one pending
  settle per worker), so two of its transactions can be at the sink and still
  INFLIGHT in the queue;
- the queue is empty (`relay queue list --json` prints nothing);
- the last instance stops cleanly on SIGTERM (exit code 0).

Tokens without an answer (connection cut by the kill) are allowed either way.
"""

from __future__ import annotations

import os
import random
import re
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay.testing.dnsserver import DnsServer
from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.sink import Sink

TOTAL = 2400                      # messages to inject
CLIENTS = 8                       # concurrent SMTP clients
KILLS = 4                         # kill -9 + restart during the injection
DOMAINS = ("a.test", "b.test", "c.test")
MAX_CONN_PER_DEST = 4
INJECT_DEADLINE = 45.0            # seconds for the whole injection, kills included
DELIVER_DEADLINE = 30.0           # seconds for the last instance to deliver everything
SENDER = "app@example.com"

_TOKEN_RE = re.compile(rb"^Subject: (tok-\d+)\r?$", re.MULTILINE)
_QUEUED_RE = re.compile(r"queued as (\S+)")

pytestmark = pytest.mark.slow


@dataclass
class Ledger:
    """token -> ("250", queue id) | ("4xx", reply) | ("5xx", reply) | ("err", exception)."""

    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, token: str, kind: str, detail: str) -> None:
        with self.lock:
            assert token not in self.outcomes, f"{token} recorded twice"
            self.outcomes[token] = (kind, detail)

    def done(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def tokens(self, kind: str) -> set[str]:
        with self.lock:
            return {t for t, (k, _) in self.outcomes.items() if k == kind}


def _classify(code: int, reply: bytes | str) -> tuple[str, str]:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    if code == 250:
        m = _QUEUED_RE.search(text)
        return "250", m.group(1) if m else text
    return ("4xx" if 400 <= code < 500 else "5xx"), f"{code} {text}"


def _message(token: str, rcpt: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@example.com>\r\n\r\n"
            f"crash-safety payload {token}\r\n").encode()


class Injector(threading.Thread):
    """One SMTP client: sends its tokens one by one, reconnecting after every error."""

    def __init__(self, n: int, port: int, tokens: list[str], ledger: Ledger,
                 deadline: float) -> None:
        super().__init__(name=f"injector-{n}", daemon=True)
        self.port = port
        self.tokens = tokens
        self.ledger = ledger
        self.deadline = deadline
        self.reconnects = 0

    def _connect(self) -> smtplib.SMTP | None:
        while time.monotonic() < self.deadline:
            try:
                client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="injector.test",
                                      timeout=10)
                code, _ = client.ehlo()
                if code == 250:
                    return client
                client.close()
            except (OSError, smtplib.SMTPException):
                pass
            self.reconnects += 1
            time.sleep(0.05)
        return None

    def run(self) -> None:
        client: smtplib.SMTP | None = None
        for i, token in enumerate(self.tokens):
            rcpt = f"user{i}@{DOMAINS[int(token[4:]) % len(DOMAINS)]}"
            if client is None:
                client = self._connect()
                if client is None:
                    self.ledger.record(token, "err", "relay unreachable until the deadline")
                    continue
            reply: bytes | str
            try:
                code, reply = client.mail(SENDER)
                if code == 250:
                    code, reply = client.rcpt(rcpt)
                if code == 250:
                    try:
                        code, reply = client.data(_message(token, rcpt))
                    except smtplib.SMTPDataError as e:  # DATA itself refused (no 354)
                        code, reply = e.smtp_code, e.smtp_error
            except (OSError, smtplib.SMTPException) as e:
                self.ledger.record(token, "err", f"{type(e).__name__}: {e}")
                client.close()
                client = None
                continue
            kind, detail = _classify(code, reply)
            self.ledger.record(token, kind, detail)
            if kind != "250":
                try:
                    client.rset()
                except (OSError, smtplib.SMTPException):
                    client.close()
                    client = None
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


def _received_tokens(sinks: tuple[Sink, ...]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for sink in sinks:
        for msg in sink.messages:
            m = _TOKEN_RE.search(msg.data)
            assert m is not None, f"a sink got a message without a token: {msg.data[:300]!r}"
            counts[m.group(1).decode()] += 1
    return counts


def test_kill_9_during_injection_loses_nothing(
        tmp_path: Path, dns_server: DnsServer, sinks: tuple[Sink, Sink]) -> None:
    seed = int(os.environ.get("RELAY_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    began = time.monotonic()
    port = free_port()
    config = write_config(tmp_path / "relay.toml", relay_config(
        tmp_path / "state", dns_server.nameserver, sinks[0].port,
        [listener_config(tls="none", auth="none", port=port, trusted_networks=["127.0.0.0/8"])],
        max_connections_per_destination=MAX_CONN_PER_DEST))
    relay = RelayProcess(config, log_dir=tmp_path / "logs")
    relay.start()
    try:
        ledger = Ledger()
        tokens = [f"tok-{i:06d}" for i in range(TOTAL)]
        deadline = time.monotonic() + INJECT_DEADLINE
        injectors = [Injector(n, port, tokens[n::CLIENTS], ledger, deadline)
                     for n in range(CLIENTS)]
        for inj in injectors:
            inj.start()

        # Kill points: spread over the injection, each at a random share of the tokens.
        kill_at = sorted(int(TOTAL * (k + rng.uniform(0.3, 0.9)) / (KILLS + 1))
                         for k in range(KILLS))
        kills: list[dict[str, float]] = []
        for point in kill_at:
            while ledger.done() < point and time.monotonic() < deadline \
                    and any(i.is_alive() for i in injectors):
                time.sleep(0.005)
            if time.monotonic() >= deadline:
                break
            time.sleep(rng.uniform(0.0, 0.05))
            accepted_before = len(ledger.tokens("250"))
            delivered_before = sum(s.message_count for s in sinks)
            code = relay.kill()
            assert code == -9, relay.output()
            down = time.monotonic()
            relay.start()
            kills.append({"at_token": ledger.done(), "accepted": accepted_before,
                          "delivered": delivered_before,
                          "restart_s": round(time.monotonic() - down, 2)})
        for inj in injectors:
            inj.join(max(0.1, deadline - time.monotonic() + 5))
        assert not any(i.is_alive() for i in injectors), "injection did not finish in time"
        injected_s = time.monotonic() - began
        assert len(kills) == KILLS, f"only {len(kills)} kills before the deadline"
        assert ledger.done() == TOTAL

        accepted = ledger.tokens("250")
        refused = ledger.tokens("4xx") | ledger.tokens("5xx")
        unanswered = ledger.tokens("err")
        # The last instance delivers everything (bounded wait).
        wait_until = time.monotonic() + DELIVER_DEADLINE
        received = _received_tokens(sinks)
        while not accepted <= set(received) and time.monotonic() < wait_until:
            time.sleep(0.2)
            received = _received_tokens(sinks)
        time.sleep(1.5)  # whatever else is still in flight (unanswered tokens) lands too
        received = _received_tokens(sinks)

        exit_code = relay.terminate(30.0)
        lost = sorted(accepted - set(received))
        duplicates = {t: n for t, n in received.items() if n > 1}
        duplicate_copies = sum(duplicates.values()) - len(duplicates)
        refused_but_sent = sorted(refused & set(received))
        unknown_tokens = set(received) - set(tokens)
        figures: dict[str, object] = {
            "seed": seed, "injected": TOTAL, "accepted_250": len(accepted),
            "refused_4xx_5xx": len(refused), "unanswered": len(unanswered),
            "kills": len(kills), "delivered_distinct": len(received),
            "delivered_total": sum(received.values()),
            "unanswered_but_delivered": len(unanswered & set(received)),
            "duplicates": len(duplicates), "duplicate_copies": duplicate_copies,
            "lost": len(lost), "injection_s": round(injected_s, 1),
            "total_s": round(time.monotonic() - began, 1),
            "relay_start_s": [round(s, 2) for s in relay.start_times],
            "reconnects": sum(i.reconnects for i in injectors),
        }
        print(f"\ncrash-safety figures: {figures}")
        print(f"kills: {kills}")
        if refused:
            print("refusals (first 5):",
                  [ledger.outcomes[t] for t in sorted(refused)[:5]])

        assert not lost, (f"{len(lost)} accepted messages never reached a sink, e.g. "
                          f"{[(t, ledger.outcomes[t]) for t in lost[:10]]}; {figures}")
        assert not unknown_tokens, unknown_tokens
        assert not refused_but_sent, f"refused yet delivered: {refused_but_sent[:10]}"
        # Per delivery worker: the transaction whose settle is committing and the one
        # being sent meanwhile (see the module docstring).
        bound = len(kills) * len(DOMAINS) * MAX_CONN_PER_DEST * 2
        assert duplicate_copies <= bound, (duplicates, figures)
        # Most of the load was accepted: the kills cut a few sessions, not the run.
        assert len(accepted) >= TOTAL * 0.8, figures
        assert exit_code == 0, relay.output()

        queue = run_cli("queue", "list", "--json", config=config)
        assert queue.returncode == 0, queue.stderr
        assert queue.stdout.strip() == "", f"queue not empty:\n{queue.stdout[:2000]}"
        # Each run recovered what the previous kill left in flight, and said so.
        assert all("relay: ready" in relay.stdout(run) for run in range(1, relay.runs + 1))
    finally:
        relay.stop()
