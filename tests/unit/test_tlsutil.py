"""relay.tlsutil: the self-signed certificate (made once, reused, renewed) and SSL contexts."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from relay.clock import FakeClock
from relay.tlsutil import (
    RENEW_BEFORE,
    VALIDITY,
    client_context,
    ensure_self_signed,
    server_context,
)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (set(ext.get_values_for_type(x509.DNSName)),
            {str(a) for a in ext.get_values_for_type(x509.IPAddress)})


def test_makes_pair_with_san_and_private_key(tmp_path: Path) -> None:
    cert_path, key_path = ensure_self_signed(tmp_path / "state", "relay.example.com")
    assert cert_path.parent == key_path.parent == tmp_path / "state" / "tls"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    cert = load_cert(cert_path)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    dns, ips = san(cert)
    assert dns == {"relay.example.com", "localhost"}
    assert ips == {"127.0.0.1", "::1"}
    assert not list(cert_path.parent.glob(".*.tmp"))


def test_ip_hostname_goes_in_as_ip(tmp_path: Path) -> None:
    cert_path, _ = ensure_self_signed(tmp_path, "192.0.2.7")
    dns, ips = san(load_cert(cert_path))
    assert dns == {"localhost"}
    assert ipaddress.ip_address("192.0.2.7").compressed in ips


def test_reused_on_second_start(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path, "localhost")
    before = first[0].read_bytes(), first[1].read_bytes()
    second = ensure_self_signed(tmp_path, "localhost")
    assert second == first
    assert (second[0].read_bytes(), second[1].read_bytes()) == before


def test_replaced_when_hostname_changes(tmp_path: Path) -> None:
    cert_path, _ = ensure_self_signed(tmp_path, "a.example")
    ensure_self_signed(tmp_path, "b.example")
    assert "b.example" in san(load_cert(cert_path))[0]


def test_replaced_when_damaged_or_mismatched(tmp_path: Path) -> None:
    cert_path, key_path = ensure_self_signed(tmp_path, "localhost")
    key_path.write_text("garbage")
    ensure_self_signed(tmp_path, "localhost")
    server_context(cert_path, key_path)  # loads: the pair matches again
    other = ensure_self_signed(tmp_path / "other", "localhost")
    key_path.write_bytes(other[1].read_bytes())  # valid key, but not the cert's
    ensure_self_signed(tmp_path, "localhost")
    server_context(cert_path, key_path)


def test_renewed_near_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    cert_path, _ = ensure_self_signed(tmp_path, "localhost", clock=clock)
    serial = load_cert(cert_path).serial_number
    clock.advance(days=(VALIDITY - RENEW_BEFORE).days - 1)
    ensure_self_signed(tmp_path, "localhost", clock=clock)
    assert load_cert(cert_path).serial_number == serial
    clock.advance(days=2)
    ensure_self_signed(tmp_path, "localhost", clock=clock)
    assert load_cert(cert_path).serial_number != serial


def test_server_context_defaults(tmp_path: Path) -> None:
    ctx = server_context(*ensure_self_signed(tmp_path, "localhost"))
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.verify_mode == ssl.CERT_NONE  # no client certificates asked for


def test_server_context_bad_files(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("nope")
    with pytest.raises(ssl.SSLError):
        server_context(tmp_path / "c", tmp_path / "c")


def test_client_context_modes(tmp_path: Path) -> None:
    strict = client_context(True)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    loose = client_context(False)
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    for ctx in (strict, loose):
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> str:
    """One real TLS handshake over loopback; returns the negotiated version."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as e:
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client.wrap_socket(raw, server_hostname=name) as tls:
            version = tls.version() or ""
            tls.sendall(b"x")
    finally:
        t.join(10)
        listener.close()
    return version


def test_real_handshake_with_self_signed(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(tmp_path, "relay.test")
    server = server_context(cert, key)
    assert _handshake(server, client_context(False), "anything") in ("TLSv1.2", "TLSv1.3")
    # Verified: trusting the self-signed cert as its own CA, for each SAN name.
    for name in ("relay.test", "localhost", "127.0.0.1"):
        assert _handshake(server, client_context(True, cafile=cert), name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client_context(True), "relay.test")


def _memory_handshake(server: ssl.SSLContext, client: ssl.SSLContext,
               session: ssl.SSLSession | None = None) -> ssl.SSLObject:
    """A real TLS handshake over memory BIOs; the client has read the server's tickets."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
    done_c = done_s = False
    for _ in range(10):  # bounded: TLS 1.3 needs two flights each way
        if not done_c:
            try:
                cli.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not done_s:
            try:
                srv.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if done_c and done_s:
            break
    assert done_c and done_s
    with pytest.raises(ssl.SSLWantReadError):  # reads the post-handshake tickets
        cli.read(1)
    return cli


def test_server_sends_one_ticket_and_a_client_offering_it_resumes(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(tmp_path, "localhost")
    server = server_context(cert, key)
    tickets: list[object] = []
    client = client_context(verify=False)

    def seen(conn: object, direction: str, version: object, content_type: object,
             msg_type: object, data: bytes) -> None:
        if direction == "read" and msg_type == ssl._TLSMessageType.NEWSESSION_TICKET:  # type: ignore[attr-defined]
            tickets.append(msg_type)

    client._msg_callback = seen  # type: ignore[attr-defined]
    first = _memory_handshake(server, client)
    assert first.version() == "TLSv1.3" and not first.session_reused
    assert len(tickets) == 1  # OpenSSL's default would send two
    again = _memory_handshake(server, client, first.session)
    assert again.session_reused
