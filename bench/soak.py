"""Soak: the long version of the reliability suite (crashes and misbehaving destinations).

Mixed load for a bounded duration against a relay subprocess that is `kill -9`ed and
restarted at random every 20-40 s, while destinations misbehave:

    .venv/bin/python bench/soak.py                    # 5 minutes
    .venv/bin/python bench/soak.py --minutes 30       # the long one
    .venv/bin/python bench/soak.py --seconds 12 --kill-every 4,7 --fault-period 3,5  # smoke

Destinations (one DNS server, one sink thread listening on one port on several loopback
addresses, the way relay delivers to every MX on one configured port):

- ok1.test → 127.0.0.2, ok2.test → 127.0.0.3: healthy.
- flaky.test → 127.0.0.4: answers 451 at end of DATA to a share of attempts (retried).
- bounce.test → 127.0.0.5: 550 5.1.1 at RCPT for local parts starting with "nouser"
  (those recipients must end as Bounce events in events.jsonl, never at a sink).
- dnsflip.test → 127.0.0.6: its MX name flips to SERVFAIL (or TIMEOUT) for a while.
- hostile.test → 127.0.0.7: for a while it drops the connection right after 354.

Several client threads submit messages of 1 KB-100 KB (log-uniform), one or two
recipients each, each with a unique token in its Subject; most go through the plain
trusted listener, one client through STARTTLS + AUTH. Every answer goes into the client
ledger (token → 250 id | 4xx | 5xx | err); the sink records (token, recipient) per
accepted DATA; Bounce events are read from <state>/events.jsonl.

At the end: load stops, faults heal, and the soak waits (bounded) until every recipient of
every 250'd message is delivered or bounced. Reported: accepted, delivered, bounced,
lost (accepted, neither delivered nor bounced: must be 0), misbounced (healthy recipients
that bounced: must be 0), refused_but_delivered (must be 0), duplicates, unanswered
(cut by a kill), queue left after SIGTERM, peak RSS of the relay process (VmHWM sampled
every second across all restarts). Prints a JSON summary (last stdout line) and a markdown
row; exit 1 when any must-be-0 figure is not, or the relay fails to (re)start.

Everything is loopback-only, bounded in count (--rate) and time (--minutes + --drain-timeout),
and stops by itself. The work dir (config, state, relay logs per run) is kept on failure
or with --keep. --seed makes the schedule (kills, faults, load) reproducible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import smtplib
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relay.testing.dnsserver import DnsServer, Failure  # noqa: E402
from relay.testing.process import (  # noqa: E402
    RelayNotReady,
    RelayProcess,
    free_port,
    run_cli,
    write_config,
)

SENDER = "app@example.com"
USER, PASSWORD = "soak", "soak-password-not-secret"
MAX_CONN_PER_DEST = 4
DNS_TTL = 5  # short, so a SERVFAIL phase outlives relay's cached answer

HOSTS = {"ok1": "127.0.0.2", "ok2": "127.0.0.3", "flaky": "127.0.0.4",
         "bounce": "127.0.0.5", "dnsflip": "127.0.0.6", "hostile": "127.0.0.7"}
# How recipients are spread over the destinations (weights).
DOMAIN_WEIGHTS = {"ok1": 30, "ok2": 25, "flaky": 15, "bounce": 10, "dnsflip": 10, "hostile": 10}
NOUSER_SHARE = 0.4  # of bounce.test recipients: these get 550 5.1.1

_TOKEN_RE = re.compile(rb"^Subject: (tok-\d+)\r?$", re.MULTILINE)
_QUEUED_RE = re.compile(r"queued as (\S+)")
_ADDR_RE = re.compile(rb"<([^>]*)>")


def domain(key: str) -> str:
    return f"{key}.test"


def zone() -> dict[str, list[tuple[str, str, int]]]:
    z: dict[str, list[tuple[str, str, int]]] = {}
    for key, ip in HOSTS.items():
        z[domain(key)] = [("MX", f"10 mx.{domain(key)}", DNS_TTL)]
        z[f"mx.{domain(key)}"] = [("A", ip, DNS_TTL)]
    return z


# ---------------------------------------------------------------------------- the sink


@dataclass
class Behaviour:
    """What one destination address does; changed at run time from the main thread."""

    temp_fail_rate: float = 0.0      # share of DATA attempts answered 451
    nouser_prefix: str = ""          # RCPT local parts with this prefix get 550 5.1.1
    drop_in_data: bool = False       # close the connection right after 354


@dataclass
class SinkLedger:
    """(token, recipient) → copies received; plus counters. Guarded by `lock`."""

    received: Counter[tuple[str, str]] = field(default_factory=Counter)
    refused_rcpts: set[str] = field(default_factory=set)  # answered 550 (unique addresses)
    untokened: int = 0
    connections: int = 0
    temp_failed: int = 0
    rcpt_refused: int = 0
    dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> Counter[tuple[str, str]]:
        with self.lock:
            return Counter(self.received)


_EHLO_REPLY = (b"250-sink.soak\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
               b"250-SIZE 104857600\r\n250 ENHANCEDSTATUSCODES\r\n")
_END = b"\r\n.\r\n"


class SoakSinkProtocol(asyncio.Protocol):
    """A fast SMTP server (pipelining, no STARTTLS) that obeys the Behaviour of the
    address it was reached on and records tokens only (never whole messages)."""

    def __init__(self, behaviours: dict[str, Behaviour], ledger: SinkLedger,
                 rng: random.Random) -> None:
        self.behaviours = behaviours
        self.ledger = ledger
        self.rng = rng
        self.behaviour = Behaviour()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.in_data = False
        self.scan_from = 0
        self.rcpts: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        local = transport.get_extra_info("sockname")
        self.behaviour = self.behaviours.get(local[0] if local else "", Behaviour())
        with self.ledger.lock:
            self.ledger.connections += 1
        self.transport.write(b"220 sink.soak ESMTP soak sink\r\n")

    def _end_of_data(self, payload: bytes) -> bytes:
        b = self.behaviour
        rcpts, self.rcpts = self.rcpts, []
        if not rcpts:
            return b"554 5.5.1 no valid recipients\r\n"
        if b.temp_fail_rate and self.rng.random() < b.temp_fail_rate:
            with self.ledger.lock:
                self.ledger.temp_failed += 1
            return b"451 4.3.0 soak: try again later\r\n"
        m = _TOKEN_RE.search(payload, 0, 65536)
        with self.ledger.lock:
            if m is None:
                self.ledger.untokened += 1
            else:
                token = m.group(1).decode()
                for r in rcpts:
                    self.ledger.received[(token, r)] += 1
        return b"250 2.0.0 queued\r\n"

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        closing = False
        while self.buf:
            if self.in_data:
                if self.behaviour.drop_in_data:
                    with self.ledger.lock:
                        self.ledger.dropped += 1
                    if self.transport is not None:
                        self.transport.abort()
                    self.buf.clear()
                    return
                pos = self.buf.find(_END, max(0, self.scan_from - 4))
                if pos < 0:
                    self.scan_from = len(self.buf)
                    break
                payload = bytes(self.buf[:pos])
                del self.buf[: pos + len(_END)]
                self.in_data = False
                self.scan_from = 0
                out.append(self._end_of_data(payload))
                continue
            nl = self.buf.find(b"\n")
            if nl < 0:
                closing = len(self.buf) > 4096
                break
            line = bytes(self.buf[:nl]).rstrip(b"\r")
            del self.buf[: nl + 1]
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                out.append(_EHLO_REPLY if verb == b"EHLO" else b"250 sink.soak\r\n")
            elif verb == b"MAIL" or verb == b"RSET":
                self.rcpts = []
                out.append(b"250 2.0.0 ok\r\n")
            elif verb == b"RCPT":
                m = _ADDR_RE.search(line)
                addr = m.group(1).decode("utf-8", "replace").lower() if m else ""
                prefix = self.behaviour.nouser_prefix
                if prefix and addr.startswith(prefix):
                    with self.ledger.lock:
                        self.ledger.rcpt_refused += 1
                        self.ledger.refused_rcpts.add(addr)
                    out.append(b"550 5.1.1 soak: no such user\r\n")
                else:
                    self.rcpts.append(addr)
                    out.append(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                if not self.rcpts:
                    out.append(b"554 5.5.1 no valid recipients\r\n")
                else:
                    out.append(b"354 go ahead\r\n")
                    self.in_data = True
                    self.buf[0:0] = b"\r\n"
                    self.scan_from = 0
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 bye\r\n")
                closing = True
                break
            else:
                out.append(b"250 2.0.0 ok\r\n")
        if self.transport is not None:
            if out:
                self.transport.write(b"".join(out))
            if closing:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class SoakSink:
    """All destination addresses on one port, served by one thread with its own loop."""

    def __init__(self, behaviours: dict[str, Behaviour], seed: int) -> None:
        self.behaviours = behaviours
        self.ledger = SinkLedger()
        self.rng = random.Random(seed)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        self._loop = loop
        servers: list[asyncio.Server] = []

        def factory() -> SoakSinkProtocol:
            return SoakSinkProtocol(self.behaviours, self.ledger, self.rng)

        try:
            for ip in self.behaviours:
                # The first bind picks the port, the others share its number.
                srv = cast(asyncio.Server, loop.run_until_complete(loop.create_server(
                    factory, host=ip, port=self.port, reuse_address=True, backlog=512)))
                self.port = int(srv.sockets[0].getsockname()[1])
                servers.append(srv)
        except BaseException as e:
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for srv in servers:
                srv.close()
            loop.close()

    def start(self) -> SoakSink:
        self._thread = threading.Thread(target=self._run, name="soak-sink", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


# ---------------------------------------------------------------------------- clients


@dataclass
class Ledger:
    """token → (kind, detail, recipients); kind is 250 | 4xx | 5xx | err."""

    outcomes: dict[str, tuple[str, str, tuple[str, ...]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, token: str, kind: str, detail: str, rcpts: tuple[str, ...]) -> None:
        with self.lock:
            if token in self.outcomes:
                raise AssertionError(f"{token} recorded twice")
            self.outcomes[token] = (kind, detail, rcpts)

    def done(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def items(self) -> list[tuple[str, tuple[str, str, tuple[str, ...]]]]:
        with self.lock:
            return list(self.outcomes.items())


def make_message(token: str, rcpts: tuple[str, ...], size: int) -> bytes:
    head = (f"From: {SENDER}\r\nTo: {', '.join(rcpts)}\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@example.com>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = (token + " soak payload ").encode()
    line = (line * (76 // len(line) + 1))[:76] + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


class Client(threading.Thread):
    """One submitting SMTP client: paced, reconnects after every error, records every token."""

    def __init__(self, n: int, port: int, tls: bool, ledger: Ledger, counter: Counter[str],
                 counter_lock: threading.Lock, stop: threading.Event, rate: float,
                 seed: int) -> None:
        super().__init__(name=f"soak-client-{n}", daemon=True)
        self.n = n
        self.port = port
        self.tls = tls
        self.ledger = ledger
        self.counter = counter
        self.counter_lock = counter_lock
        self.stop_event = stop
        self.interval = 1.0 / rate
        self.rng = random.Random(seed)
        self.reconnects = 0
        self.sent = 0
        self.bytes = 0
        self.tls_ctx = ssl.create_default_context()
        self.tls_ctx.check_hostname = False
        self.tls_ctx.verify_mode = ssl.CERT_NONE  # relay's self-signed cert, loopback

    def _next_token(self) -> str:
        with self.counter_lock:
            self.counter["n"] += 1
            return f"tok-{self.counter['n']:07d}"

    def _recipients(self, token: str) -> tuple[str, ...]:
        keys = list(DOMAIN_WEIGHTS)
        weights = list(DOMAIN_WEIGHTS.values())
        count = 1 if self.rng.random() < 0.8 else 2
        out: list[str] = []
        for j in range(count):
            key = self.rng.choices(keys, weights)[0]
            local = "nouser" if key == "bounce" and self.rng.random() < NOUSER_SHARE else "u"
            out.append(f"{local}-{token[4:]}-{j}@{domain(key)}")
        return tuple(out)

    def _size(self) -> int:
        return int(math.exp(self.rng.uniform(math.log(1024), math.log(100 * 1024))))

    def _connect(self) -> smtplib.SMTP | None:
        while not self.stop_event.is_set():
            client: smtplib.SMTP | None = None
            try:
                client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="soak.test",
                                      timeout=20)
                code, _ = client.ehlo()
                if code == 250 and self.tls:
                    client.starttls(context=self.tls_ctx)
                    client.ehlo()
                    client.login(USER, PASSWORD)
                if code == 250:
                    return client
                client.close()
            except (OSError, smtplib.SMTPException):
                if client is not None:
                    client.close()
            self.reconnects += 1
            self.stop_event.wait(0.1)
        return None

    def run(self) -> None:
        client: smtplib.SMTP | None = None
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            next_at = max(next_at + self.interval, time.monotonic() - 5 * self.interval)
            if client is None:
                client = self._connect()
                if client is None:
                    break
            token = self._next_token()
            rcpts = self._recipients(token)
            data = make_message(token, rcpts, self._size())
            self.sent += 1
            self.bytes += len(data)
            reply: bytes | str = b""
            code = 0
            try:
                code, reply = client.mail(SENDER)
                for r in rcpts:
                    if code != 250:
                        break
                    code, reply = client.rcpt(r)
                if code == 250:
                    try:
                        code, reply = client.data(data)
                    except smtplib.SMTPDataError as e:
                        code, reply = e.smtp_code, e.smtp_error
            except (OSError, smtplib.SMTPException) as e:
                self.ledger.record(token, "err", f"{type(e).__name__}: {e}", rcpts)
                client.close()
                client = None
                continue
            text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
            if code == 250:
                m = _QUEUED_RE.search(text)
                self.ledger.record(token, "250", m.group(1) if m else text, rcpts)
            else:
                kind = "4xx" if 400 <= code < 500 else "5xx"
                self.ledger.record(token, kind, f"{code} {text}", rcpts)
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


# ---------------------------------------------------------------------------- relay side


class EventReader:
    """Reads <state>/events.jsonl incrementally (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.bounced: Counter[tuple[str, str]] = Counter()   # (token, rcpt) Permanent
        self.delivered: Counter[tuple[str, str]] = Counter()  # (token, rcpt) Delivery
        self.transient: int = 0
        self.types: Counter[str] = Counter()
        self.bad_lines = 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for line in chunk[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                # A torn line from a kill -9 is followed by the next run's appends.
                self.bad_lines += 1
                continue
            etype = str(ev.get("eventType", ""))
            self.types[etype] += 1
            subject = str(((ev.get("mail") or {}).get("commonHeaders") or {}).get("subject", ""))
            if etype == "Delivery":
                for r in (ev.get("delivery") or {}).get("recipients") or []:
                    self.delivered[(subject, str(r).lower())] += 1
            if etype != "Bounce":
                continue
            bounce = ev.get("bounce") or {}
            if bounce.get("bounceType") != "Permanent":
                self.transient += 1
                continue
            for r in bounce.get("bouncedRecipients") or []:
                self.bounced[(subject, str(r.get("emailAddress", "")).lower())] += 1


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of one process in kB; (0, 0) if it is gone."""
    hwm = rss = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError):
        return 0, 0
    return hwm, rss


def relay_config(state: Path, nameserver: str, sink_port: int, plain_port: int,
                 tls_port: int, max_delivery: str) -> dict[str, Any]:
    return {
        "server": {"hostname": "relay.soak", "state_dir": str(state), "log_level": "warning",
                   "sender_authorization": "off"},
        "listener": [
            {"address": f"127.0.0.1:{plain_port}", "tls": "none", "auth": "none",
             "trusted_networks": ["127.0.0.0/8"]},
            {"address": f"127.0.0.1:{tls_port}", "tls": "starttls", "auth": "required"},
        ],
        "dns": {"nameservers": [nameserver], "timeout": "2s", "max_cache_ttl": "5s",
                "negative_cache_ttl": "5s"},
        "delivery": {"port": sink_port, "retry_schedule": ["2s", "5s"], "retry_jitter": 0.0,
                     "max_delivery_time": max_delivery, "connect_timeout": "5s",
                     "command_timeout": "10s", "data_timeout": "10s",
                     "max_connections_per_destination": MAX_CONN_PER_DEST},
        "limits": {"max_connections_per_ip": 200},
    }


def pick(rng: random.Random, bounds: tuple[float, float]) -> float:
    return rng.uniform(bounds[0], bounds[1])


def parse_range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    a = float(lo)
    b = float(hi) if hi else a
    if a <= 0 or b < a:
        raise argparse.ArgumentTypeError(f"expected LO,HI with 0 < LO <= HI, got {text!r}")
    return a, b


# ---------------------------------------------------------------------------- the run


@dataclass
class Options:
    seconds: float
    seed: int
    clients: int
    rate: float
    kill_every: tuple[float, float]
    fault_period: tuple[float, float]
    drain_timeout: float
    workdir: Path | None
    keep: bool


def soak(o: Options, log: Any = sys.stderr) -> dict[str, Any]:
    rng = random.Random(o.seed)
    began_wall = time.time()
    work = o.workdir or Path(tempfile.mkdtemp(prefix="relay-soak-"))
    work.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(f"[soak {time.time() - began_wall:7.1f}s] {msg}", file=log, flush=True)

    behaviours = {ip: Behaviour() for ip in HOSTS.values()}
    behaviours[HOSTS["flaky"]].temp_fail_rate = 0.3
    behaviours[HOSTS["bounce"]].nouser_prefix = "nouser"
    sink = SoakSink(behaviours, rng.randrange(1 << 30)).start()
    dns = DnsServer(zone()).start()
    relay: RelayProcess | None = None
    failures: list[str] = []
    kills: list[dict[str, float]] = []
    faults: list[str] = []
    peak_hwm = peak_rss = 0
    rss_samples = 0
    clients: list[Client] = []
    ledger = Ledger()
    try:
        plain_port, tls_port = free_port(), free_port()
        total_guess = o.seconds + o.drain_timeout + 3600
        config = write_config(work / "relay.toml", relay_config(
            work / "state", dns.nameserver, sink.port, plain_port, tls_port,
            f"{int(total_guess)}s"))
        added = run_cli("user", "add", USER, "--password-stdin", config=config,
                        input=PASSWORD + "\n")
        if added.returncode != 0:
            raise RuntimeError(f"relay user add failed: {added.stderr[-2000:]}")
        relay = RelayProcess(config, log_dir=work / "logs", cwd=ROOT)
        relay.start()
        say(f"relay up (pid {relay.pid}), sink port {sink.port}, work dir {work}")

        stop = threading.Event()
        counter: Counter[str] = Counter()
        counter_lock = threading.Lock()
        per_client = o.rate / o.clients
        for n in range(o.clients):
            clients.append(Client(n, tls_port if n == 0 else plain_port, n == 0, ledger,
                                  counter, counter_lock, stop, per_client,
                                  rng.randrange(1 << 30)))
        load_began = time.monotonic()
        for c in clients:
            c.start()
        end_at = load_began + o.seconds
        next_kill = load_began + pick(rng, o.kill_every)
        # Fault phases: (when the phase ends, on?) for the DNS flip and the hostile MX.
        dns_on, dns_next = False, load_began + pick(rng, o.fault_period)
        hostile_on, hostile_next = False, load_began + pick(rng, o.fault_period)
        next_sample = 0.0
        while True:
            now = time.monotonic()
            if now >= end_at:
                break
            if now >= next_sample and relay.proc is not None:
                hwm, rss = rss_kb(relay.proc.pid)
                peak_hwm, peak_rss = max(peak_hwm, hwm), max(peak_rss, rss)
                rss_samples += 1
                next_sample = now + 1.0
            if now >= dns_next:
                dns_on = not dns_on
                mode: Failure = "SERVFAIL" if rng.random() < 0.75 else "TIMEOUT"
                dns.fail(f"mx.{domain('dnsflip')}", mode if dns_on else None)
                dns.fail(domain("dnsflip"), mode if dns_on else None)
                faults.append(f"{now - load_began:.0f}s dns {mode if dns_on else 'healed'}")
                dns_next = now + pick(rng, o.fault_period)
            if now >= hostile_next:
                hostile_on = not hostile_on
                behaviours[HOSTS["hostile"]].drop_in_data = hostile_on
                faults.append(f"{now - load_began:.0f}s hostile "
                              f"{'drop_in_data' if hostile_on else 'healed'}")
                hostile_next = now + pick(rng, o.fault_period)
            if now >= next_kill:
                hwm, _ = rss_kb(relay.pid)
                peak_hwm = max(peak_hwm, hwm)
                accepted_before = sum(1 for _, v in ledger.items() if v[0] == "250")
                code = relay.kill()
                if code != -9:
                    failures.append(f"kill -9 returned {code} (relay had exited by itself)")
                down = time.monotonic()
                try:
                    relay.start()
                except RelayNotReady as e:
                    failures.append(f"restart after kill {len(kills) + 1} failed: {e}")
                    say(failures[-1])
                    break
                kills.append({"at_s": round(down - load_began, 1),
                              "accepted_before": accepted_before,
                              "restart_s": round(time.monotonic() - down, 2)})
                say(f"kill -9 #{len(kills)} at {down - load_began:.0f}s, back in "
                    f"{kills[-1]['restart_s']}s; ledger {ledger.done()}")
                next_kill = time.monotonic() + pick(rng, o.kill_every)
            time.sleep(0.1)

        # Stop the load, heal every fault, drain.
        stop.set()
        for c in clients:
            c.join(30)
        load_s = time.monotonic() - load_began
        dns.heal()
        for b in behaviours.values():
            b.temp_fail_rate = 0.0
            b.drop_in_data = False
        faults.append(f"{load_s:.0f}s all healed")
        say(f"load stopped after {load_s:.0f}s: {ledger.done()} tokens; draining")

        events = EventReader(work / "state" / "events.jsonl")
        outcomes = ledger.items()
        accepted = {(t, r) for t, (k, _, rs) in outcomes if k == "250" for r in rs}
        drain_began = time.monotonic()
        pending: set[tuple[str, str]] = set(accepted)
        while relay.running:
            events.poll()
            received = sink.ledger.snapshot()
            pending = {p for p in pending if p not in received and p not in events.bounced}
            if not pending or time.monotonic() - drain_began > o.drain_timeout:
                break
            if relay.proc is not None:
                hwm, rss = rss_kb(relay.proc.pid)
                peak_hwm, peak_rss = max(peak_hwm, hwm), max(peak_rss, rss)
            time.sleep(0.5)
        drain_s = time.monotonic() - drain_began
        if not relay.running:
            failures.append(f"relay exited by itself during the drain:\n{relay.output()}")
        time.sleep(2.0)  # unanswered tokens still in flight land too
        hwm, _ = rss_kb(relay.pid) if relay.running else (0, 0)
        peak_hwm = max(peak_hwm, hwm)
        exit_code: int | None = None
        if relay.running:
            exit_code = relay.terminate(60.0)
        elif relay.proc is not None:
            exit_code = relay.proc.returncode
        events.poll()
        received = sink.ledger.snapshot()
        queue = run_cli("queue", "list", "--json", "--limit", "100000", config=config)
        queue_rows = [json.loads(x) for x in queue.stdout.splitlines() if x.strip()]

        # ---- the verdict
        refused = {(t, r) for t, (k, _, rs) in outcomes if k in ("4xx", "5xx") for r in rs}
        unanswered = {(t, r) for t, (k, _, rs) in outcomes if k == "err" for r in rs}
        delivered = set(received)
        bounced = set(events.bounced)
        lost = sorted(accepted - delivered - bounced)
        misbounced = sorted(p for p in bounced & accepted if not p[1].startswith("nouser"))
        refused_but_delivered = sorted(refused & delivered)
        dup = {p: n for p, n in received.items() if n > 1}
        by_token = {t: v for t, v in outcomes}
        with sink.ledger.lock:
            refused_at_sink = set(sink.ledger.refused_rcpts)
        queued_rcpts = {str(r.get("address", "")).lower()
                        for row in queue_rows for r in row.get("recipients", [])}
        # Lost with the mail's fate decided: the sink said 550 and relay no longer holds it,
        # yet no Bounce event was written (the event, not the message, went missing).
        lost_event_only = [p for p in lost if p[1] in refused_at_sink
                           and p[1] not in queued_rcpts]
        summary: dict[str, Any] = {
            "seed": o.seed,
            "date": dt.datetime.fromtimestamp(began_wall, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(),
            "load_s": round(load_s, 1), "drain_s": round(drain_s, 1),
            "clients": o.clients, "rate_target": o.rate,
            "messages_sent": sum(c.sent for c in clients),
            "mbytes_sent": round(sum(c.bytes for c in clients) / 1e6, 1),
            "messages_accepted": sum(1 for _, (k, _, _) in outcomes if k == "250"),
            "recipients_accepted": len(accepted),
            "refused_4xx": sum(1 for _, (k, _, _) in outcomes if k == "4xx"),
            "refused_5xx": sum(1 for _, (k, _, _) in outcomes if k == "5xx"),
            "unanswered": sum(1 for _, (k, _, _) in outcomes if k == "err"),
            "delivered": len(delivered & accepted),
            "bounced": len(bounced & accepted),
            "bounce_expected": sum(1 for p in accepted if p[1].startswith("nouser")),
            "lost": len(lost),
            "lost_bounce_event_only": len(lost_event_only),
            "misbounced": len(misbounced),
            "refused_but_delivered": len(refused_but_delivered),
            "unanswered_delivered_or_bounced": len(unanswered & (delivered | bounced)),
            # Reported, not judged: events are written after the queue commit, unsynced.
            "delivered_without_delivery_event": len((delivered & accepted)
                                                    - set(events.delivered)),
            "duplicates": len(dup),
            "duplicate_copies": sum(dup.values()) - len(dup),
            "kills": len(kills),
            "restart_s_max": max((k["restart_s"] for k in kills), default=0.0),
            "peak_rss_mb": round(peak_hwm / 1024, 1),
            "peak_vmrss_sampled_mb": round(peak_rss / 1024, 1),
            "rss_samples": rss_samples,
            "queue_left": len(queue_rows),
            "final_exit_code": exit_code,
            "sink": {"connections": sink.ledger.connections,
                     "temp_failed_451": sink.ledger.temp_failed,
                     "rcpt_refused_550": sink.ledger.rcpt_refused,
                     "dropped_in_data": sink.ledger.dropped,
                     "untokened": sink.ledger.untokened},
            "events": dict(events.types), "events_torn_lines": events.bad_lines,
            "reconnects": sum(c.reconnects for c in clients),
            "kill_log": kills, "fault_log": faults,
            "work_dir": str(work),
        }
        if lost:
            failures.append(f"{len(lost)} accepted recipients neither delivered nor bounced "
                            f"({len(lost_event_only)} of them 550'd at the sink and out of the "
                            f"queue, but with no Bounce event), e.g. "
                            f"{[(p, by_token[p[0]][1]) for p in lost[:10]]}")
        if misbounced:
            failures.append(f"{len(misbounced)} healthy recipients bounced, e.g. {misbounced[:5]}")
        if refused_but_delivered:
            failures.append(f"refused at submission yet delivered: {refused_but_delivered[:10]}")
        if exit_code != 0:
            failures.append(f"the last relay did not stop cleanly on SIGTERM: {exit_code}")
        if queue_rows:
            say(f"queue not empty after the drain: {len(queue_rows)} messages, first: "
                f"{json.dumps(queue_rows[0])[:600]}")
        summary["failures"] = failures
        summary["ok"] = not failures
        return summary
    except BaseException as e:
        failures.append(f"soak aborted: {type(e).__name__}: {e}")
        raise
    finally:
        for c in clients:
            c.stop_event.set()
        if relay is not None:
            relay.stop()
        dns.stop()
        sink.stop()
        if failures or o.keep:
            say(f"work dir kept: {work}")
        elif o.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def markdown(s: dict[str, Any], minutes_arg: str) -> str:
    head = ("| date | duration | seed | kills | msgs accepted | rcpts accepted | delivered "
            "| bounced | lost | misbounced | duplicates | unanswered | queue left "
            "| peak RSS MB | drain s |")
    sep = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    row = (f"| {s['date']} | {minutes_arg} | {s['seed']} | {s['kills']} "
           f"| {s['messages_accepted']} | {s['recipients_accepted']} | {s['delivered']} "
           f"| {s['bounced']} | {s['lost']} | {s['misbounced']} "
           f"| {s['duplicates']} ({s['duplicate_copies']} copies) | {s['unanswered']} "
           f"| {s['queue_left']} | {s['peak_rss_mb']} | {s['drain_s']} |")
    return "\n".join((head, sep, row))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relay soak: mixed load, kill -9, faults; lost = 0")
    p.add_argument("--minutes", type=float, default=5.0, help="load duration (default 5)")
    p.add_argument("--seconds", type=float, help="load duration in seconds (overrides)")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--clients", type=int, default=6, help="submitting clients (one uses "
                   "STARTTLS + AUTH)")
    p.add_argument("--rate", type=float, default=30.0,
                   help="target submissions per second, all clients together")
    p.add_argument("--kill-every", type=parse_range, default=(20.0, 40.0), metavar="LO,HI",
                   help="seconds between kill -9s (uniform; default 20,40)")
    p.add_argument("--fault-period", type=parse_range, default=(15.0, 35.0), metavar="LO,HI",
                   help="length of each DNS/hostile fault phase and of the healthy gaps")
    p.add_argument("--drain-timeout", type=float, default=180.0,
                   help="seconds to wait for the queue to drain after the load")
    p.add_argument("--workdir", type=Path, help="work dir (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    if seconds <= 0 or seconds > 4 * 3600:
        p.error("duration must be within (0, 4h]")
    if args.clients < 1 or args.rate <= 0:
        p.error("--clients and --rate must be positive")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    opts = Options(seconds=seconds, seed=seed, clients=args.clients, rate=args.rate,
                   kill_every=args.kill_every, fault_period=args.fault_period,
                   drain_timeout=args.drain_timeout, workdir=args.workdir, keep=args.keep)
    print(f"soak: seed {seed}, {seconds:.0f}s of load", file=sys.stderr, flush=True)
    summary = soak(opts)
    duration = f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
    print(markdown(summary, duration))
    for f in summary["failures"]:
        print(f"FAILURE: {f}", file=sys.stderr)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
