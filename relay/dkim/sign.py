"""DKIM signing on delivery (dkimpy): one signature set per message per signing domain.

Signing is relaxed/relaxed with no `l=` (RFC 6376 §8.2), From and the RELIABILITY V10
headers oversigned (each listed once more than it occurs, RFC 6376 §5.4.2, so none can
be added or prepended), with an RSA-2048 and an Ed25519 signature when both keys exist
(RFC 8463). `d=` is the From domain or its closest parent that has keys (relaxed DMARC
alignment). A message that already carries a signature for that domain which verifies
against our own keys is not signed again. Signatures are cached (LRU keyed by message
id and domain/generation) so every recipient and every retry reuses the one computed;
with a `SignatureStore` (the queue) `sign_message()` also persists each signature
before it is sent, so a retry after a restart reuses it too (the LRU is a front cache).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol

import dkim
import dkim.crypto
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from relay.dkim.keys import DkimKey, KeyStore

log = logging.getLogger(__name__)

# dkimpy computes RSA signatures with Python big-int pow() (about 12 ms for RSA-2048,
# holding the GIL); OpenSSL through `cryptography` does the same PKCS#1 v1.5 signature
# in well under a millisecond. dkimpy looks the function up as a module global of
# `dkim`, so replacing that one name keeps all of dkimpy's canonicalisation and header
# logic and changes only the modular arithmetic. Keys are converted once and cached.
_RSA_KEYS: dict[int, rsa.RSAPrivateKey] = {}
_PREHASHED = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}  # sha1 only to read old keys


def _openssl_rsa_sign(hash_obj: object, pk: dict[str, int]) -> bytes:
    key = _RSA_KEYS.get(pk["modulus"])
    if key is None:
        numbers = rsa.RSAPrivateNumbers(
            p=pk["prime1"], q=pk["prime2"], d=pk["privateExponent"],
            dmp1=pk["exponent1"], dmq1=pk["exponent2"], iqmp=pk["coefficient"],
            public_numbers=rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"]))
        key = _RSA_KEYS[pk["modulus"]] = numbers.private_key()
    name = str(getattr(hash_obj, "name", "sha256")).lower()
    digest: bytes = hash_obj.digest()  # type: ignore[attr-defined]
    return key.sign(digest, padding.PKCS1v15(), Prehashed(_PREHASHED[name]))


dkim.RSASSA_PKCS1_v1_5_sign = _openssl_rsa_sign

OVERSIGN = ("from", "subject", "to", "date", "cc", "reply-to", "message-id", "mime-version",
            "content-type", "list-unsubscribe", "list-unsubscribe-post")
ALSO_SIGN = ("in-reply-to", "references", "content-transfer-encoding", "sender", "list-id",
             "feedback-id")
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)
_D_TAG = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]+)", re.IGNORECASE)
_HEADER_LIMIT = 256 * 1024


def header_block(body: bytes) -> bytes:
    end = body.find(b"\r\n\r\n", 0, _HEADER_LIMIT)
    return body[: end + 2] if end >= 0 else body[:_HEADER_LIMIT]


def header_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, unfolded value) of each header field, in order."""
    fields: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        m = _HEADER_NAME.match(line)
        if m:
            fields.append((m.group(1).lower(), line[m.end():].strip()))
    return fields


def signed_headers(names: list[bytes]) -> list[bytes]:
    """h= list: each OVERSIGN header once more than present; ALSO_SIGN as present."""
    counts: dict[bytes, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out: list[bytes] = []
    for h in OVERSIGN:
        out += [h.encode()] * (counts.get(h.encode(), 0) + 1)
    for h in ALSO_SIGN:
        out += [h.encode()] * counts.get(h.encode(), 0)
    return out


def from_domain(body: bytes, headers: Mapping[str, str] | None = None) -> str | None:
    """The domain of the (first) From: address, lower-case; None when there is none."""
    value = (headers or {}).get("From")
    if value is None:
        for name, raw in header_fields(header_block(body)):
            if name == b"from":
                value = raw.decode("utf-8", "replace")
                break
    if not value:
        return None
    for _, addr in email.utils.getaddresses([value]):
        if "@" in addr:
            return addr.rpartition("@")[2].strip().rstrip(".").lower()
    return None


def _algorithm(key: DkimKey) -> bytes:
    return b"rsa-sha256" if key.algorithm == "rsa" else b"ed25519-sha256"


def sign_with(body: bytes, domain: str, keys: list[tuple[DkimKey, bytes]]) -> bytes:
    """The DKIM-Signature header field(s) for `body`, CRLF-terminated (Ed25519 first)."""
    include = signed_headers([n for n, _ in header_fields(header_block(body))])
    out = b""
    for key, private in keys:
        sig = dkim.sign(body, key.selector.encode(), domain.encode(), private,
                        canonicalize=(b"relaxed", b"relaxed"),
                        signature_algorithm=_algorithm(key), include_headers=include,
                        length=False, linesep=b"\r\n")
        out = sig + out
    return bytes(out)


def verify_with(body: bytes, records: Mapping[str, str]) -> list[str]:
    """Domains (d=) of the signatures in `body` that verify against `records`
    ({"sel._domainkey.example.com": "v=DKIM1; ..."}); no network."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        rec = records.get(name.decode().rstrip(".").lower())
        return rec.encode() if rec is not None else None

    sigs = [v for n, v in header_fields(header_block(body)) if n == b"dkim-signature"]
    good: list[str] = []
    for idx, value in enumerate(sigs):
        m = _D_TAG.search(value)
        try:
            ok = dkim.DKIM(body, minkey=1024).verify(idx=idx, dnsfunc=dnsfunc)
        except Exception:
            ok = False
        if ok and m:
            good.append(m.group(1).decode().lower())
    return good


class SignatureStore(Protocol):
    """Durable signatures per (message id, "domain/generation"): relay.queue.store."""

    def dkim_signature(self, mid: str, tag: str) -> bytes | None: ...
    async def save_dkim_signature(self, mid: str, tag: str, signature: bytes) -> None: ...


class Signer:
    def __init__(self, keys: KeyStore, *, cache_size: int = 4096,
                 store: SignatureStore | None = None) -> None:
        self.keys = keys
        self.store = store
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.signed = 0  # signatures computed (not served from the cache or the store)
        self._inflight: dict[tuple[str, str], asyncio.Future[bytes]] = {}

    def signing_domain(self, domain: str) -> str | None:
        """`domain` or its closest parent with active keys (relaxed alignment)."""
        parts = domain.split(".")
        for i in range(len(parts) - 1):
            candidate = ".".join(parts[i:])
            state = self.keys.get(candidate)
            if state is not None and state.active is not None:
                return candidate
        return None

    def _records(self, domain: str) -> dict[str, str]:
        state = self.keys.get(domain)
        if state is None:
            return {}
        return {f"{k.selector}._domainkey.{domain}": k.record
                for g in state.generations for k in g.keys}

    def _tag(self, body: bytes, headers: Mapping[str, str] | None) -> str | None:
        """"domain/generation" of the signature `body` gets; None when unsigned."""
        fdom = from_domain(body, headers)
        domain = self.signing_domain(fdom) if fdom else None
        if domain is None:
            return None
        state = self.keys.get(domain)
        assert state is not None and state.active is not None
        return f"{domain}/{state.active.name}"

    def _cached(self, key: tuple[str, str]) -> bytes | None:
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            return cached

    def _remember(self, key: tuple[str, str], sig: bytes) -> None:
        with self._lock:
            self._cache[key] = sig
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _compute(self, tag: str, body: bytes) -> bytes:
        domain, _, gen = tag.partition("/")
        state = self.keys.get(domain)
        assert state is not None
        (generation,) = [g for g in state.generations if g.name == gen]
        if b"dkim-signature:" in header_block(body).lower() and \
                domain in verify_with(body, self._records(domain)):
            return b""  # already signed for this domain by us: not twice
        sig = sign_with(body, domain, [(k, self.keys.private_key(domain, k))
                                       for k in generation.keys])
        self.signed += 1
        return sig

    def signature(self, message_id: str, body: bytes,
                  headers: Mapping[str, str] | None = None) -> bytes:
        """Header field(s) to prepend to `body` (b"" when relay has no key for its From).
        Memory cache only; `sign_message()` also uses the store."""
        tag = self._tag(body, headers)
        if tag is None:
            return b""
        key = (message_id, tag)
        cached = self._cached(key)
        if cached is not None:
            return cached
        sig = self._compute(tag, body)
        self._remember(key, sig)
        return sig

    async def sign_message(self, message_id: str, body: bytes,
                           headers: Mapping[str, str] | None = None) -> bytes:
        """Like `signature()`, but the signature is looked up in and committed to the
        store (before it is returned, so what is sent is what a retry reuses)."""
        if self.store is None:
            return await asyncio.to_thread(self.signature, message_id, body, headers)
        tag = self._tag(body, headers)
        if tag is None:
            return b""
        key = (message_id, tag)
        sig = self._cached(key)
        if sig is not None:
            return sig
        running = self._inflight.get(key)
        if running is not None:  # another destination of this message is signing it
            return await asyncio.shield(running)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            sig = self.store.dkim_signature(message_id, tag)
            if sig is None:
                sig = await asyncio.to_thread(self._compute, tag, body)
                await self.store.save_dkim_signature(message_id, tag, sig)
            self._remember(key, sig)
            fut.set_result(sig)
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # marked retrieved: the waiters (if any) get it too
            raise
        finally:
            del self._inflight[key]
            if not fut.done():  # cancelled meanwhile
                fut.cancel()
        return sig
