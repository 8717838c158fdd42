"""TLS plumbing: the self-signed development certificate and the two SSL contexts.

Owns: making (once) and reusing the certificate `relay serve` uses when `[tls]`
names none, and the `ssl.SSLContext` objects for the listeners (server side) and
for outbound delivery (client side). Must not: open sockets or read the config;
callers pass paths and flags in.

The certificate lives under `<state_dir>/tls/` (key mode 0600, directory 0700).
It is written atomically (temp file + fsync + rename, under a lock), so a crash
or two relays starting at once never leave a half-written or mismatched pair.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.clock import Clock, SystemClock

CERT_NAME = "selfsigned.crt"
KEY_NAME = "selfsigned.key"
VALIDITY = dt.timedelta(days=825)
# A certificate closer than this to expiry, or not naming the hostname, is replaced.
RENEW_BEFORE = dt.timedelta(days=30)
# TLS 1.2 suites the listeners accept: forward secrecy and AEAD only (Mozilla
# "intermediate"); no RSA key exchange, CBC, SHA-1, 3DES or RC4. TLS 1.3 suites are
# OpenSSL's, all modern.
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"
# TLS 1.3 session tickets a listener sends after each handshake. OpenSSL's default is 2,
# and each costs the server ~60 µs (a session made, encrypted and written) on every new
# connection, wanted or not; most submission clients never resume. One keeps resumption
# for those that do (a smarthost's session cache offers the last ticket it was given,
# and a resumed handshake is given a new one).
SERVER_TLS13_TICKETS = 1


def ensure_self_signed(state_dir: Path, hostname: str, *,
                       clock: Clock | None = None) -> tuple[Path, Path]:
    """Return (cert, key) under `state_dir/tls`, making a new pair only when needed.

    The pair is reused while it parses, matches, names `hostname` and has more
    than RENEW_BEFORE left. SAN: hostname, localhost, 127.0.0.1 and ::1.
    """
    now = dt.datetime.fromtimestamp((clock or SystemClock()).now(), dt.UTC)
    tls_dir = Path(state_dir) / "tls"
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = tls_dir / CERT_NAME, tls_dir / KEY_NAME
    with open(tls_dir / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _reusable(cert_path, key_path, hostname, now):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _make_cert(key, hostname, now)
            _write_atomic(key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), 0o600)
            _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Context for the listeners (STARTTLS and implicit TLS): TLS 1.2+ with forward-secret
    AEAD suites (SERVER_CIPHERS), no compression, one TLS 1.3 session ticket."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(SERVER_CIPHERS)
    ctx.num_tickets = SERVER_TLS13_TICKETS
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client_context(verify: bool, *, cafile: Path | None = None) -> ssl.SSLContext:
    """Context for outbound delivery: TLS 1.2+.

    verify=True checks the chain (system store, or `cafile`) and the host name,
    for `delivery.tls = "require"` with `verify_certificates`. verify=False is
    opportunistic TLS (RFC 7435): encrypt, but accept any certificate, since
    most MX certificates do not name the MX host.
    """
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---------------------------------------------------------------------------


def _san_names(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for name in dict.fromkeys([hostname, "localhost", "127.0.0.1", "::1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return names


def _make_cert(key: ec.EllipticCurvePrivateKey, hostname: str,
               now: dt.datetime) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "relay self-signed"),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_san_names(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )


def _reusable(cert_path: Path, key_path: Path, hostname: str, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    if key.public_key() != cert.public_key():
        return False
    if cert.not_valid_after_utc - RENEW_BEFORE < now or cert.not_valid_before_utc > now:
        return False
    return all(n in list(san) for n in _san_names(hostname))


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
