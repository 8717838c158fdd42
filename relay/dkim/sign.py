"""DKIM signing on delivery: one signature set per message per signing domain.

Signing is relaxed/relaxed with no `l=` (RFC 6376 §8.2), From and the other headers in
`OVERSIGN` oversigned (each listed once more than it occurs, RFC 6376 §5.4.2, so none can
be added or prepended), with an RSA-2048 and an Ed25519 signature when both keys exist
(RFC 8463). `d=` is the From domain or its closest parent that has keys (relaxed DMARC
alignment). A message that already carries a signature for that domain which verifies
against our own keys is not signed again. Signatures are cached (LRU keyed by message
id and domain/generation) so every recipient and every retry reuses the one computed;
with the queue store (relay/dkim/sigcache.py) `sign_message()` also persists each signature,
durable no later than the settle of the attempt that sent it, so a retry after a
restart reuses it too (the LRU is a front cache).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import functools
import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from relay.clock import SystemClock
from relay.dkim import canon
from relay.dkim.keys import DkimError, DkimKey, DomainKeys, KeyStore
from relay.dkim.lane import SigningLane, shared_lane
from relay.dkim.sigcache import SignatureCache, Spool

log = logging.getLogger(__name__)

# Signing is relay's own: relay.dkim.canon (whole-buffer relaxed canonicalisation) and
# OpenSSL through `cryptography`. dkimpy parsed and canonicalised in pure Python per
# line (~100 ms for a 1 MB body) and re-derived the Ed25519 key from its seed for every
# signature; it still verifies (`verify_with`, and the tests). Key objects are parsed
# once per key file content.
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_KEYS: dict[tuple[str, bytes], PrivateKey] = {}
_KEYS_MAX = 256
# Parsing an RSA key validates it (tens of milliseconds); the signing threads that start
# together on a fresh process would all do it, so one parses while the others wait.
_KEYS_LOCK = threading.Lock()
_PKCS1 = padding.PKCS1v15()
_SHA256 = Prehashed(hashes.SHA256())
_LINE = 78  # folded DKIM-Signature lines, CRLF not counted (RFC 5322 §2.1.1)
_FOLD_AT = re.compile(rb"(?<=[;:]) ")


def load_private_key(key: DkimKey, private: bytes) -> PrivateKey:
    """The key object for a key file's contents (PEM for RSA; the base64 32-byte seed for
    Ed25519, as relay.dkim.keys writes them), parsed once and then cached."""
    cache_key = (key.algorithm, private)
    loaded = _KEYS.get(cache_key)
    if loaded is not None:
        return loaded
    with _KEYS_LOCK:
        return _KEYS.get(cache_key) or _load_private_key(key, private, cache_key)


def _load_private_key(key: DkimKey, private: bytes,
                      cache_key: tuple[str, bytes]) -> PrivateKey:
    loaded: PrivateKey
    try:
        if key.algorithm == "rsa":
            # No RSA key validation: it is ~45 ms of primality tests for a 2048-bit key,
            # run with the GIL held, so the first signature after a start, a reload or a
            # rotation stalled the whole process, sessions included (the p99 of a short
            # burst; bench/RESULTS.md, the throughput work's fifth pass (continued):
            # "the first signature's 45 ms"). The keys are relay's own
            # (relay.dkim.keys.generate), and OpenSSL checks every CRT signature against
            # the public key before returning it, so a damaged key cannot leak itself
            # through a faulty signature; a verifier would then just see a bad one.
            pem = serialization.load_pem_private_key(
                private, password=None, unsafe_skip_rsa_key_validation=True)
            if not isinstance(pem, rsa.RSAPrivateKey):
                raise ValueError("not an RSA key")
            loaded = pem
        else:
            seed = base64.b64decode(b"".join(private.split()), validate=True)
            loaded = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    except (ValueError, TypeError, binascii.Error) as e:
        raise DkimError(f"DKIM key {key.selector!r}: unreadable {key.algorithm} private "
                        f"key ({e})") from None
    if len(_KEYS) >= _KEYS_MAX:
        _KEYS.clear()
    _KEYS[cache_key] = loaded
    return loaded

OVERSIGN = ("from", "subject", "to", "date", "cc", "reply-to", "message-id", "mime-version",
            "content-type", "list-unsubscribe", "list-unsubscribe-post")
ALSO_SIGN = ("in-reply-to", "references", "content-transfer-encoding", "sender", "list-id",
             "feedback-id")
_OVERSIGN_B = tuple(h.encode() for h in OVERSIGN)
_ALSO_SIGN_B = tuple(h.encode() for h in ALSO_SIGN)
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)
_D_TAG = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]+)", re.IGNORECASE)
_HEADER_LIMIT = 256 * 1024
# Bodies up to this size are canonicalised and hashed on the event loop (~0.1 ms at 2 KB,
# ~0.5 ms at 64 KB), larger ones in the signing thread (Signer._compute_split).
_INLINE_MAX = 64 * 1024


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
    return list(_h_list(tuple(names)))


def _h_list(names: tuple[bytes, ...]) -> tuple[bytes, ...]:
    # Memoised for the usual header sections; a long one (a client's hundreds of fields)
    # is worked out each time rather than kept.
    return _signed_headers(names) if len(names) <= 64 else _signed_headers.__wrapped__(names)


@functools.lru_cache(maxsize=1024)  # the messages of one sender have the same fields
def _signed_headers(names: tuple[bytes, ...]) -> tuple[bytes, ...]:
    counts: dict[bytes, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out: list[bytes] = []
    for h in _OVERSIGN_B:
        out += [h] * (counts.get(h, 0) + 1)
    for h in _ALSO_SIGN_B:
        out += [h] * counts.get(h, 0)
    return tuple(out)


def from_domain(body: bytes, headers: Mapping[str, str] | None = None) -> str | None:
    """The domain of the (first) From: address, lower-case; None when there is none."""
    value = (headers or {}).get("From")
    if value is None:
        for name, raw in header_fields(header_block(body)):
            if name == b"from":
                value = raw.decode("utf-8", "replace")
                break
    return _address_domain(value) if value else None


@functools.lru_cache(maxsize=1024)  # the From of one sender is mostly the same string
def _address_domain(value: str) -> str | None:
    for _, addr in email.utils.getaddresses([value]):
        if "@" in addr:
            return addr.rpartition("@")[2].strip().rstrip(".").lower()
    return None


def _algorithm(key: DkimKey) -> bytes:
    return b"rsa-sha256" if key.algorithm == "rsa" else b"ed25519-sha256"


def _fold(text: bytes, b64: bytes) -> bytes:
    """`text` (ending in "b=") with `b64` appended, folded into lines of at most _LINE
    characters where a word allows: each fold turns one SP after a ";" or ":" of `text`
    into CRLF SP, so relaxed canonicalisation sees `text` unchanged; b= is split anywhere
    (RFC 6376 §3.5 ignores FWS in it)."""
    if b"\0" in text:  # never in relay's own tags; the regex is ~15 µs, this ~1 µs
        *words, last = _FOLD_AT.split(text)
    else:
        *words, last = text.replace(b"; ", b";\0").replace(b": ", b":\0").split(b"\0")
    lines: list[list[bytes]] = []
    line: list[bytes] = []
    col = -1  # the first word has no SP before it
    for word in words:
        n = len(word)
        if col + 1 + n > _LINE:
            lines.append(line)
            line = []
            col = 0
        line.append(word)
        col += 1 + n
    # "b=" starts a new line unless some of the value fits after it.
    if col + 1 + len(last) + min(len(b64), 16) > _LINE:
        lines.append(line)
        line = []
        col = 0
    line.append(last)
    col += 1 + len(last)
    room = max(_LINE - col, 0)
    line.append(b64[:room])
    lines.append(line)
    # Each line is its words after one SP each ("b=" and the start of the value joined),
    # lines and the rest of the value's pieces separated by CRLF SP; the first SP cut.
    out = b"\r\n".join(b" " + b" ".join(ws[:-1]) + ws[-1] if ws is line
                         else b" " + b" ".join(ws) for ws in lines)
    rest = [b64[at:at + _LINE - 1] for at in range(room, len(b64), _LINE - 1)]
    if rest:
        out += b"\r\n " + b"\r\n ".join(rest)
    return out[1:] + b"\r\n"


def sign_with(body: bytes, domain: str, keys: list[tuple[DkimKey, bytes]]) -> bytes:
    """The DKIM-Signature header field(s) for `body`, CRLF-terminated (Ed25519 first):
    relaxed/relaxed, sha256, no l=, h= from `signed_headers()`; t= is wall time on
    purpose, not the injected clock (verifiers refuse a signature from the future)."""
    plan = plan_signatures(body, domain, keys)
    return plan.assemble(plan.private_operations())


@dataclass(frozen=True)
class SigningPlan:
    """`sign_with()` in three steps, so its Python part (canonicalisation, hashing the
    headers, folding) and its private-key operations (an RSA-2048 signature is ~0.85 ms
    of OpenSSL with the GIL released) can run on different threads: each signature's
    tag list up to "b=", its key, and the digest the key signs."""

    values: list[bytes]
    private_keys: list[PrivateKey]
    digests: list[bytes]

    def private_operations(self) -> list[bytes]:
        """The signatures (raw), one per key, in the order of the keys."""
        out: list[bytes] = []
        for pk, digest in zip(self.private_keys, self.digests, strict=True):
            if isinstance(pk, rsa.RSAPrivateKey):
                out.append(pk.sign(digest, _PKCS1, _SHA256))
            else:
                out.append(pk.sign(digest))  # RFC 8463: Ed25519 over the SHA-256 hash
        return out

    def assemble(self, signatures: list[bytes]) -> bytes:
        """The header fields, the last key's first."""
        out = b""
        for value, sig in zip(self.values, signatures, strict=True):
            out = _fold(b"DKIM-Signature: " + value, base64.b64encode(sig)) + out
        return out


def _relaxed_field(name: bytes, value: bytes) -> bytes:
    """A signed header field as hashed: relaxed, with its CRLF. Memoised (From, To,
    Subject, MIME-Version... recur in bulk mail) up to a size: a client's long field is
    relaxed each time rather than kept."""
    if len(value) <= 512:
        return _relaxed_field_memo(name, value)
    return canon.relaxed_header(name, value) + b"\r\n"


@functools.lru_cache(maxsize=4096)
def _relaxed_field_memo(name: bytes, value: bytes) -> bytes:
    return canon.relaxed_header(name, value) + b"\r\n"


def plan_signatures(body: bytes, domain: str,
                    keys: list[tuple[DkimKey, bytes]]) -> SigningPlan:
    """Canonicalise and hash `body` for each key (see `sign_with()`)."""
    fields, text = canon.split_message(body)
    names = [n.lower() for n, _ in fields]
    include = _h_list(tuple(names))
    bh = base64.b64encode(hashlib.sha256(canon.relaxed_body(text)).digest())
    signed = hashlib.sha256(b"".join(_relaxed_field(n, v)
                                     for n, v in canon.select_headers(fields, include)))
    stamp = int(SystemClock().now())
    tail = (b"; t=" + str(stamp).encode() + b"; h=" + b" : ".join(include)
            + b"; bh=" + bh + b"; b=")
    values: list[bytes] = []
    private_keys: list[PrivateKey] = []
    digests: list[bytes] = []
    for key, private in keys:
        value = (b"v=1; a=" + _algorithm(key) + b"; c=relaxed/relaxed; d=" + domain.encode()
                 + b"; s=" + key.selector.encode() + tail)
        h = signed.copy()
        h.update(canon.relaxed_header(b"DKIM-Signature", value))  # no CRLF (§3.7)
        values.append(value)
        private_keys.append(load_private_key(key, private))
        digests.append(h.digest())
    return SigningPlan(values, private_keys, digests)


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


def _log_save_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("DKIM signature not persisted (a retry re-signs): %s", fut.exception())


class Signer:
    def __init__(self, keys: KeyStore, *, cache_size: int = 4096,
                 store: Spool | None = None, lane: SigningLane | None = None) -> None:
        self.keys = keys
        # The private-key operations' threads (relay/dkim/lane.py): the process's own
        # unless given one.
        self.lane = lane if lane is not None else shared_lane()
        # Durable signatures in the queue spool (`store`), behind the LRU below.
        self.store = SignatureCache(store) if store is not None else None
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.signed = 0  # signatures computed (not served from the cache or the store)
        self._inflight: dict[tuple[str, str], asyncio.Future[bytes]] = {}

    def _signing_state(self, domain: str) -> tuple[str, DomainKeys] | None:
        parts = domain.split(".")
        for i in range(len(parts) - 1):
            candidate = ".".join(parts[i:])
            state = self.keys.get(candidate)
            if state is not None and state.active is not None:
                return candidate, state
        return None

    def signing_domain(self, domain: str) -> str | None:
        """`domain` or its closest parent with active keys (relaxed alignment)."""
        found = self._signing_state(domain)
        return found[0] if found is not None else None

    @staticmethod
    def _records(domain: str, state: DomainKeys | None) -> dict[str, str]:
        if state is None:
            return {}
        return {f"{k.selector}._domainkey.{domain}": k.record
                for g in state.generations for k in g.keys}

    def _resolve(self, body: bytes, headers: Mapping[str, str] | None,
                 ) -> tuple[str, DomainKeys] | None:
        """("domain/generation" of the signature `body` gets, that domain's key state);
        None when unsigned. One KeyStore lookup (a stat()) per candidate domain; the
        state goes on to `_compute()` rather than being looked up again."""
        fdom = from_domain(body, headers)
        found = self._signing_state(fdom) if fdom else None
        if found is None:
            return None
        domain, state = found
        assert state.active is not None
        return f"{domain}/{state.active.name}", state

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

    def _compute(self, tag: str, body: bytes, state: DomainKeys | None = None) -> bytes:
        domain, _, gen = tag.partition("/")
        if state is None:
            state = self.keys.get(domain)
        assert state is not None
        (generation,) = [g for g in state.generations if g.name == gen]
        if b"dkim-signature:" in header_block(body).lower() and \
                domain in verify_with(body, self._records(domain, state)):
            return b""  # already signed for this domain by us: not twice
        sig = sign_with(body, domain, [(k, self.keys.private_key(domain, k))
                                       for k in generation.keys])
        self.signed += 1
        return sig

    async def _compute_split(self, tag: str, body: bytes, state: DomainKeys) -> bytes:
        """`_compute()` with only the private-key operations in the signing lane's
        threads (RSA with the GIL released: it runs beside the loop). The
        canonicalisation and folding (~0.1 ms of Python for a small message) hold the GIL
        wherever they run, so in a thread they only added GIL hand-offs with the loop
        (each a futex wake and a context switch) and its wake-ups. A large body, or one
        that carries a DKIM-Signature (verified first, with dkimpy), is signed in the
        default executor as a whole: the body hash of a large one runs there with the
        GIL released."""
        if len(body) > _INLINE_MAX or b"dkim-signature:" in header_block(body).lower():
            return await asyncio.to_thread(self._compute, tag, body, state)
        domain, _, gen = tag.partition("/")
        (generation,) = [g for g in state.generations if g.name == gen]
        plan = plan_signatures(body, domain, [(k, self.keys.private_key(domain, k))
                                              for k in generation.keys])
        sig = plan.assemble(await self.lane.run(plan))
        self.signed += 1
        return sig

    def signature(self, message_id: str, body: bytes,
                  headers: Mapping[str, str] | None = None) -> bytes:
        """Header field(s) to prepend to `body` (b"" when relay has no key for its From).
        Memory cache only; `sign_message()` also uses the store."""
        resolved = self._resolve(body, headers)
        if resolved is None:
            return b""
        tag, state = resolved
        key = (message_id, tag)
        cached = self._cached(key)
        if cached is not None:
            return cached
        sig = self._compute(tag, body, state)
        self._remember(key, sig)
        return sig

    async def sign_message(self, message_id: str, body: bytes,
                           headers: Mapping[str, str] | None = None) -> bytes:
        """Like `signature()`, but the signature is looked up in and committed to the
        store (before it is returned, so what is sent is what a retry reuses)."""
        if self.store is None:
            return await asyncio.to_thread(self.signature, message_id, body, headers)
        resolved = self._resolve(body, headers)
        if resolved is None:
            return b""
        tag, state = resolved
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
            sig = self.store.get(message_id, tag)
            if sig is None:
                sig = await self._compute_split(tag, body, state)
                # Queued now, committed in the background: the store commits in queue
                # order, so it is durable no later than this attempt's settle, and the
                # send does not wait for an fsync.
                saving = self.store.save(message_id, tag, sig)
                saving.add_done_callback(_log_save_failure)
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
