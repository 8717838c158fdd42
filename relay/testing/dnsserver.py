"""A real authoritative DNS server on loopback, for tests and benchmarks.

Owns: answering UDP and TCP queries (dnspython wire format) from an in-memory zone that
tests change at run time, failure injection per name (SERVFAIL, REFUSED, TIMEOUT = silence),
and a log of every query so tests can see what a cache saved. It runs in its own thread,
so a relay started as a subprocess can query it as well as code in the test's event loop.
It is not a general DNS server: no zone transfers, no DNSSEC, no wildcards, no recursion.

    with DnsServer({"example.com": [("MX", "10 mx.example.com", 300)],
                    "mx.example.com": [("A", "127.0.0.2", 300)]}) as ns:
        cfg_nameservers = [ns.nameserver]          # "127.0.0.1:PORT"
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.zone

Failure = Literal["SERVFAIL", "REFUSED", "TIMEOUT"]
RecordSpec = tuple[str, str, int] | tuple[str, str]   # (rdtype, rdata text[, ttl])
ZoneData = Mapping[str, Iterable[RecordSpec]]

DEFAULT_TTL = 300
_MAX_CHAIN = 16
_FAILURES = ("SERVFAIL", "REFUSED", "TIMEOUT")


def _name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name
    text = name.strip()
    return dns.name.from_text(text if text else ".")


def _show(name: dns.name.Name) -> str:
    text: str = name.to_text(omit_final_dot=True).lower()
    return "." if text == "@" else text


def _rdata(rdtype: dns.rdatatype.RdataType, value: str) -> dns.rdata.Rdata:
    if rdtype == dns.rdatatype.TXT and not value.lstrip().startswith('"'):
        # Raw text: split into <=255-byte character-strings as DKIM keys need (RFC 1035 §3.3).
        raw = value.encode("utf-8")
        chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
        return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, value, origin=dns.name.root,
                               relativize=False)


class DnsServer:
    """Authoritative for every name it is given; NXDOMAIN for every other name."""

    def __init__(self, zone: ZoneData | dns.zone.Zone | None = None, *,
                 host: str = "127.0.0.1", port: int = 0, negative_ttl: int = DEFAULT_TTL) -> None:
        self.host = host
        self._requested_port = port
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()
        self._records: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        self._failures: dict[tuple[dns.name.Name, dns.rdatatype.RdataType | None], Failure] = {}
        self.queries: list[tuple[str, str]] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._conns: set[socket.socket] = set()
        self._port = 0
        if isinstance(zone, dns.zone.Zone):
            self._load_zone(zone)
        elif zone is not None:
            for name, specs in zone.items():
                for spec in specs:
                    ttl = spec[2] if len(spec) == 3 else DEFAULT_TTL
                    self.add(name, spec[0], spec[1], ttl)

    # -- lifecycle --------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("DnsServer is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def nameserver(self) -> str:
        """The `[dns] nameservers` entry for this server: "127.0.0.1:PORT"."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> DnsServer:
        if self._thread is not None:
            raise RuntimeError("DnsServer already started")
        family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        last_error: OSError | None = None
        for _ in range(50):  # UDP and TCP on the same ephemeral port: retry on a clash
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self._requested_port))
                port = int(udp.getsockname()[1])
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, port))
                tcp.listen(64)
            except OSError as e:
                udp.close()
                tcp.close()
                last_error = e
                if self._requested_port:
                    raise
                continue
            break
        else:
            raise RuntimeError(f"cannot bind UDP and TCP to one port: {last_error}")
        udp.setblocking(False)
        tcp.setblocking(False)
        self._udp, self._tcp, self._port = udp, tcp, port
        self._thread = threading.Thread(target=self._serve, name=f"dnsserver:{port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._thread = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        for s in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if s is not None:
                s.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- zone changes (safe from any thread, also while serving) ------------------

    def set(self, name: str, rdtype: str, values: str | Iterable[str],
            ttl: int = DEFAULT_TTL) -> None:
        """Replace the `rdtype` records of `name` with `values` (an empty list removes them)."""
        owner, rt = _name(name), dns.rdatatype.from_text(rdtype)
        items = [values] if isinstance(values, str) else list(values)
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rt)
        for v in items:
            rrset.add(_rdata(rt, v), ttl)
        with self._lock:
            node = self._records.setdefault(owner, {})
            if items:
                node[rt] = rrset
            else:
                node.pop(rt, None)
                if not node:
                    del self._records[owner]

    def add(self, name: str, rdtype: str, value: str, ttl: int = DEFAULT_TTL) -> None:
        """Add one record to the `rdtype` records of `name` (the set takes the new TTL)."""
        owner, rt = _name(name), dns.rdatatype.from_text(rdtype)
        rd = _rdata(rt, value)
        with self._lock:
            node = self._records.setdefault(owner, {})
            rrset = node.setdefault(rt, dns.rrset.RRset(owner, dns.rdataclass.IN, rt))
            rrset.add(rd)
            rrset.ttl = ttl

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove `name` (then NXDOMAIN), or only its `rdtype` records."""
        owner = _name(name)
        with self._lock:
            if rdtype is None:
                self._records.pop(owner, None)
                return
            node = self._records.get(owner, {})
            node.pop(dns.rdatatype.from_text(rdtype), None)
            if not node:
                self._records.pop(owner, None)

    def fail(self, name: str, mode: Failure | None, rdtype: str | None = None) -> None:
        """Answer queries for `name` (only type `rdtype` if given) with SERVFAIL or REFUSED,
        or not at all (TIMEOUT). `mode=None` clears it."""
        if mode is not None and mode not in _FAILURES:
            raise ValueError(f"mode must be one of {', '.join(_FAILURES)}")
        key = (_name(name), dns.rdatatype.from_text(rdtype) if rdtype else None)
        with self._lock:
            if mode is None:
                self._failures.pop(key, None)
            else:
                self._failures[key] = mode

    def heal(self) -> None:
        """Clear every injected failure."""
        with self._lock:
            self._failures.clear()

    def query_count(self, name: str | None = None, rdtype: str | None = None) -> int:
        want = _show(_name(name)) if name is not None else None
        with self._lock:
            return sum(1 for n, t in self.queries
                       if (want is None or n == want) and (rdtype is None or t == rdtype.upper()))

    def reset_queries(self) -> None:
        with self._lock:
            self.queries.clear()

    # -- answering ----------------------------------------------------------------

    def _load_zone(self, zone: dns.zone.Zone) -> None:
        for rel, node in zone.nodes.items():
            owner = rel.derelativize(zone.origin) if zone.origin is not None else rel
            for rdataset in node.rdatasets:
                rrset = dns.rrset.RRset(owner, rdataset.rdclass, rdataset.rdtype)
                for rd in rdataset:  # zone rdata may hold names relative to the origin
                    text = rd.to_text(origin=zone.origin, relativize=False)
                    rrset.add(dns.rdata.from_text(rdataset.rdclass, rdataset.rdtype, text,
                                                  origin=dns.name.root, relativize=False),
                              rdataset.ttl)
                self._records.setdefault(owner, {})[rdataset.rdtype] = rrset

    def _soa_for(self, name: dns.name.Name) -> dns.rrset.RRset:
        probe = name
        while True:
            soa = self._records.get(probe, {}).get(dns.rdatatype.SOA)
            if soa is not None:
                return soa
            if probe == dns.name.root:
                break
            probe = probe.parent()
        rrset = dns.rrset.RRset(dns.name.root, dns.rdataclass.IN, dns.rdatatype.SOA)
        rrset.add(dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.SOA,
            f"ns.relay.test. hostmaster.relay.test. 1 3600 600 86400 {self.negative_ttl}",
            relativize=False),
            self.negative_ttl)
        return rrset

    def _exists(self, name: dns.name.Name) -> bool:
        # An empty non-terminal exists too (RFC 8020): NODATA, not NXDOMAIN.
        return name in self._records or any(k.is_subdomain(name) for k in self._records)

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to `query`, or None to stay silent. Public for direct unit use."""
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY
                               else dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        with self._lock:
            self.queries.append((_show(qname), dns.rdatatype.to_text(qtype)))
            mode = self._failures.get((qname, qtype)) or self._failures.get((qname, None))
            if mode == "TIMEOUT":
                return None
            if mode is not None:
                response.set_rcode(dns.rcode.from_text(mode))
                return response
            response.flags |= dns.flags.AA
            self._fill(response, qname, qtype)
        return response

    def _fill(self, response: dns.message.Message, qname: dns.name.Name,
              qtype: dns.rdatatype.RdataType) -> None:
        name = qname
        for _ in range(_MAX_CHAIN):
            failure = self._failures.get((name, qtype)) or self._failures.get((name, None))
            if name != qname and failure is not None and failure != "TIMEOUT":
                response.set_rcode(dns.rcode.from_text(failure))
                return
            node = self._records.get(name)
            if node is None:
                if not self._exists(name):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._soa_for(name))
                return
            if qtype == dns.rdatatype.ANY:
                response.answer.extend(node.values())
                return
            if qtype in node:
                response.answer.append(node[qtype])
                return
            cname = node.get(dns.rdatatype.CNAME)
            if cname is not None and qtype != dns.rdatatype.CNAME:
                response.answer.append(cname)
                name = cname[0].target
                continue
            response.authority.append(self._soa_for(name))  # NODATA
            return
        response.set_rcode(dns.rcode.SERVFAIL)  # CNAME loop

    def _wire(self, query_wire: bytes, limit: int | None) -> bytes | None:
        try:
            return self._wire_unsafe(query_wire, limit)
        except Exception:  # a bug here must not kill the serving thread; the client times out
            import traceback
            traceback.print_exc()
            return None

    def _wire_unsafe(self, query_wire: bytes, limit: int | None) -> bytes | None:
        try:
            query = dns.message.from_wire(query_wire)
        except dns.exception.DNSException:
            return None
        response = self.answer(query)
        if response is None:
            return None
        if limit is None:
            return bytes(response.to_wire())
        size = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return bytes(response.to_wire(max_size=size))
        except dns.exception.TooBig:
            # RFC 1035 §4.2.1: too big for UDP → truncated, the client retries over TCP.
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return bytes(response.to_wire(max_size=size))

    # -- sockets --------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, "udp")
        sel.register(self._tcp, selectors.EVENT_READ, "tcp")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=1.0):
                    if key.data == "udp":
                        self._on_udp()
                    elif key.data == "tcp":
                        self._on_accept()
        finally:
            sel.close()

    def _on_udp(self) -> None:
        assert self._udp is not None
        for _ in range(64):
            try:
                data, peer = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            reply = self._wire(data, limit=512)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self._udp.sendto(reply, peer)

    def _on_accept(self) -> None:
        assert self._tcp is not None
        try:
            conn, _ = self._tcp.accept()
        except OSError:
            return
        conn.setblocking(True)
        conn.settimeout(0.5)
        with self._lock:
            self._conns.add(conn)
        threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True,
                         name=f"dnsserver:{self._port}:tcp").start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while not self._stopping.is_set():
                try:
                    chunk = conn.recv(65535)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2:
                    (length,) = struct.unpack("!H", buf[:2])
                    if len(buf) < 2 + length:
                        break
                    wire, buf = buf[2:2 + length], buf[2 + length:]
                    reply = self._wire(wire, limit=None)
                    if reply is not None:  # TIMEOUT: keep the connection, say nothing
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
