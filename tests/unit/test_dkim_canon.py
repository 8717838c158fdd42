"""relay's own DKIM signer (relay.dkim.canon + sign_with) against dkimpy.

Differential: the canonicalisation functions equal dkimpy's on the same input, and every
signature relay makes (RSA-2048 and Ed25519) verifies with dkimpy, over Hypothesis
messages (folded and repeated headers, WSP runs, trailing blank lines, empty bodies,
8-bit bytes, bare LFs, long lines) and fixed cases.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dkim
import msgspec
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.dkim import canon
from relay.dkim.keys import DkimKey, KeyStore
from relay.dkim.sign import Signer, load_private_key, sign_with, signed_headers

DOMAIN = "example.com"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore(tmp_path_factory.mktemp("dkim"))
    ks.keygen(DOMAIN, "s1", "both")
    return ks


@pytest.fixture(scope="module")
def keys(store: KeyStore) -> list[tuple[DkimKey, bytes]]:
    state = store.get(DOMAIN)
    assert state is not None and state.active is not None
    return [(k, store.private_key(DOMAIN, k)) for k in state.active.keys]


@pytest.fixture(scope="module")
def records(store: KeyStore) -> dict[str, str]:
    state = store.get(DOMAIN)
    assert state is not None
    return {f"{k.selector}._domainkey.{DOMAIN}": k.record
            for g in state.generations for k in g.keys}


def dkimpy_verify(message: bytes, records: dict[str, str]) -> list[bool]:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        rec = records.get(name.decode().rstrip(".").lower())
        return rec.encode() if rec is not None else None

    n = sum(1 for name, _ in dkim.rfc822_parse(message)[0]
            if name.lower() == b"dkim-signature")

    def one(idx: int) -> bool:
        try:
            return bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc))
        except dkim.ValidationError:  # e.g. "body hash mismatch"
            return False

    return [one(i) for i in range(n)]


def unfolded_signatures(sig: bytes) -> list[bytes]:
    return [v for n, v in canon.split_message(sig + b"\r\n")[0]]


# --- strategies ---------------------------------------------------------------------------

WSP = st.sampled_from([b" ", b"\t", b"  ", b" \t ", b"\t\t", b"    "])
WORD = st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(c for c in b if c not in b"\r\n \t") or b"x")
ASCII_WORD = st.text("abcXYZ019<>@.;:=/-_\"'()", min_size=1, max_size=10).map(str.encode)


@st.composite
def header_value(draw: st.DrawFn) -> bytes:
    """Words joined by WSP runs or folds (CRLF + WSP); maybe leading/trailing WSP."""
    parts: list[bytes] = [draw(st.sampled_from([b"", b" ", b"  ", b"\t"]))]
    for _ in range(draw(st.integers(0, 8))):
        parts.append(draw(st.one_of(ASCII_WORD, WORD)))
        parts.append(draw(st.one_of(WSP, WSP.map(lambda w: b"\r\n" + w),
                                    st.just(b" \r\n\t"), st.just(b" "))))
    if draw(st.booleans()):
        parts.append(b"x" * draw(st.integers(70, 300)))
    return b"".join(parts).rstrip(b"\r\n")


NAMES = st.sampled_from([b"From", b"To", b"Subject", b"Date", b"Cc", b"Reply-To",
                         b"Message-ID", b"MIME-Version", b"Content-Type", b"References",
                         b"X-Mailer", b"subject", b"FROM", b"to", b"List-Unsubscribe",
                         b"Content-Transfer-Encoding", b"X-Custom-Header"])


@st.composite
def headers(draw: st.DrawFn) -> list[bytes]:
    fields = [b"From: App <app@example.com>"]
    fields += [name + b":" + draw(header_value())
               for name in draw(st.lists(NAMES, max_size=12))]
    return draw(st.permutations(fields))


LINE = st.one_of(
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.lists(st.one_of(ASCII_WORD, WSP), max_size=12).map(b"".join),
    st.integers(900, 2000).map(lambda n: b"y" * n),
    st.sampled_from([b"", b" ", b"\t", b"  \t  ", b"\xc3\xa9t\xc3\xa9  caf\xc3\xa9 \t"]))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(LINE, max_size=15))
    body = b"\r\n".join(lines)
    if lines and draw(st.booleans()):
        body += b"\r\n"
    return body + draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"\r\n \r\n\t\r\n",
                                        b" \t", b"\r\n\r\n\r\n\r\n"]))


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    msg = b"\r\n".join(draw(headers())) + b"\r\n\r\n" + draw(bodies())
    if draw(st.integers(0, 9)) == 0:
        msg = msg.replace(b"\r\n", b"\n")  # bare-LF message: both read it as CRLF
    return msg


RAW_BODY = st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"\xff",
                                     b"b c", b"  ", b"\r\n\r\n"]), max_size=40).map(b"".join)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- canonicalisation equals dkimpy's -------------------------------------------------------

@SETTINGS
@given(RAW_BODY)
def test_relaxed_body_equals_dkimpy(raw: bytes) -> None:
    body = canon.crlf(raw)
    assert canon.relaxed_body(body) == Relaxed.canonicalize_body(body)


@SETTINGS
@given(bodies())
def test_relaxed_body_of_message_bodies_equals_dkimpy(body: bytes) -> None:
    assert canon.relaxed_body(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("body", [
    b"", b"\r\n", b"\r\n\r\n\r\n", b" \r\n", b"\t\r\n\r\n", b"a", b"a ", b"a\r",
    b"a\r\r\n", b"a\r\r\n\r\n", b"a\r\n\r\r\n\r\n", b"a  b\t\tc \t\r\n", b" \t a\r\n",
    b"x\r\n\r\n \r\n\r\n", b"\r\r\n", b"a\r\n" * 3 + b"\r\n" * 1000,
])
def test_relaxed_body_edge_cases(body: bytes) -> None:
    assert canon.relaxed_body(body) == Relaxed.canonicalize_body(body)


def test_relaxed_body_rfc_examples() -> None:
    # RFC 6376 §3.4.6 example body, relaxed.
    assert canon.relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert canon.relaxed_body(b"") == b""  # an empty body stays empty under relaxed


@SETTINGS
@given(messages())
def test_split_and_relaxed_headers_equal_dkimpy(msg: bytes) -> None:
    fields, body = canon.split_message(msg)
    theirs, their_body = dkim.rfc822_parse(msg)
    assert [(n, v) for n, v in fields] == [(n, v) for n, v in theirs]
    assert body == their_body
    assert canon.relaxed_headers(fields) == Relaxed.canonicalize_headers(theirs)
    for (n, v), (cn, cv) in zip(fields, Relaxed.canonicalize_headers(theirs), strict=True):
        assert canon.relaxed_header(n, v) == cn + b":" + cv.removesuffix(b"\r\n")


@SETTINGS
@given(messages())
def test_select_headers_equals_dkimpy(msg: bytes) -> None:
    fields = canon.relaxed_headers(canon.split_message(msg)[0])
    include = signed_headers([n for n, _ in fields])
    assert canon.select_headers(fields, include) == dkim.select_headers(fields, include)


def test_select_headers_bottom_up_and_oversigned() -> None:
    fields = [(b"from", b"a"), (b"x", b"1"), (b"From", b"b"), (b"subject", b"s")]
    got = canon.select_headers(fields, [b"from", b"subject", b"to", b"from", b"from"])
    assert got == [(b"From", b"b"), (b"subject", b"s"), (b"from", b"a")]


def test_rfc_header_example() -> None:
    # RFC 6376 §3.4.6 example headers, relaxed.
    msg = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n"
    with pytest.raises(canon.MessageFormatError):  # "B :" is not a field name for dkimpy
        canon.split_message(msg)
    assert canon.relaxed_header(b"A", b" X\r\n") == b"a:X"
    assert canon.relaxed_header(b"B ", b" Y\t\r\n\tZ  \r\n") == b"b:Y Z"


@pytest.mark.parametrize("msg", [b" folded first\r\nFrom: a@b\r\n\r\nx\r\n",
                                 b"From: a@b\r\nno colon here\r\n\r\nx\r\n"])
def test_malformed_header_sections_are_refused(msg: bytes) -> None:
    with pytest.raises(canon.MessageFormatError):
        canon.split_message(msg)


# --- signatures verify with dkimpy ----------------------------------------------------------

@SETTINGS
@given(msg=messages())
def test_signatures_verify_with_dkimpy(msg: bytes, keys: list[tuple[DkimKey, bytes]],
                                       records: dict[str, str]) -> None:
    sig = sign_with(msg, DOMAIN, keys)
    sep = b"\n" if b"\r\n" not in msg else b"\r\n"
    signed = sig.replace(b"\r\n", sep) + msg
    assert dkimpy_verify(signed, records) == [True, True]


SEVEN_BIT = (b"From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: seven bit\r\n"
             b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
             b"Hello,\r\n\r\nplain text.\r\n")
FIXED = {
    "7bit": SEVEN_BIT,
    "8bit": ("From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: =?utf-8?q?h=C3=A9?="
             "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße, café, 日本語\r\n").encode(),
    "long-line": (b"From: app@example.com\r\nTo: user@dest.test\r\nSubject: long line\r\n\r\n"
                  + b"x" * 990 + b"\r\n" + b"  trailing spaces and\ttabs   \r\n\r\n\r\n"),
    "empty-body": b"From: app@example.com\r\nSubject: nothing\r\n\r\n",
    "no-body": b"From: app@example.com\r\nSubject: nothing\r\n",
    "blank-lines-only": b"From: app@example.com\r\n\r\n\r\n\r\n \r\n",
    "repeated": (b"From: a@example.com\r\nTo: x@t\r\nTo:  y@t\r\nSubject: one\r\n"
                 b"Received: a\r\nReceived: b\r\nsubject:\ttwo \r\n\r\nbody\r\n"),
    "folded": (b"From: App\r\n <app@example.com>\r\nSubject:  a\r\n\t b   \r\n  c\r\n"
               b"References: <1@x>\r\n <2@x>\r\n\t<3@x>\r\n\r\nb  o\tdy \r\n"),
    "bare-lf": b"From: app@example.com\nSubject: lf\n\nline one\nline two  \n\n",
    "no-final-crlf": b"From: app@example.com\r\n\r\nlast line without CRLF",
    "1MB": (b"From: app@example.com\r\nSubject: big\r\n\r\n"
            + b"The quick  brown fox\tjumps over the lazy dog 0123456789 abcdefghij.  \r\n"
            * 14_000),
}


@pytest.mark.parametrize("kind", sorted(FIXED))
def test_fixed_messages_verify(kind: str, keys: list[tuple[DkimKey, bytes]],
                               records: dict[str, str]) -> None:
    msg = FIXED[kind]
    sig = sign_with(msg, DOMAIN, keys)
    sep = b"\r\n" if b"\r\n" in msg else b"\n"
    assert dkimpy_verify(sig.replace(b"\r\n", sep) + msg, records) == [True, True]


def test_tampering_breaks_both_signatures(keys: list[tuple[DkimKey, bytes]],
                                          records: dict[str, str]) -> None:
    signed = sign_with(SEVEN_BIT, DOMAIN, keys) + SEVEN_BIT
    assert dkimpy_verify(signed, records) == [True, True]
    assert dkimpy_verify(signed.replace(b"plain text", b"plain text!"), records) == \
        [False, False]
    # From is oversigned: a prepended second From breaks both.
    forged = signed.replace(b"From: App", b"From: evil@attacker.test\r\nFrom: App", 1)
    assert dkimpy_verify(forged, records) == [False, False]
    # Relaxed: refolding and WSP changes keep both valid.
    relaxed = signed.replace(b"Subject: seven bit", b"Subject:  seven\r\n\t bit  ")
    assert dkimpy_verify(relaxed, records) == [True, True]


def test_header_layout(keys: list[tuple[DkimKey, bytes]]) -> None:
    sig = sign_with(FIXED["repeated"], DOMAIN, keys)
    assert sig.endswith(b"\r\n") and b"\n" not in sig.replace(b"\r\n", b"")
    lines = sig.removesuffix(b"\r\n").split(b"\r\n")
    assert all(len(line) <= 78 for line in lines), [len(x) for x in lines]
    assert all(line.startswith((b"DKIM-Signature: ", b" ")) for line in lines)
    ed, rsa_ = unfolded_signatures(sig)  # Ed25519 first, then RSA
    for value, alg, sel in ((ed, b"ed25519-sha256", b"s1-ed"), (rsa_, b"rsa-sha256", b"s1-rsa")):
        flat = re.sub(rb"\r\n[ \t]", b" ", value).strip()
        tags = [t.split(b"=", 1)[0].strip() for t in flat.split(b";")]
        assert tags == [b"v", b"a", b"c", b"d", b"s", b"t", b"h", b"bh", b"b"]
        assert b"a=" + alg + b";" in flat and b"s=" + sel + b";" in flat
        assert b"c=relaxed/relaxed;" in flat and b"d=example.com;" in flat
        assert b"h=from : from : subject : subject : subject : to : to : to :" in flat
        assert b" l=" not in flat


def test_body_hash_equals_dkimpy(keys: list[tuple[DkimKey, bytes]]) -> None:
    rsa_key = next((k, p) for k, p in keys if k.algorithm == "rsa")
    for msg in FIXED.values():
        ours = sign_with(msg, DOMAIN, [rsa_key])
        theirs = dkim.sign(msg, b"s1-rsa", DOMAIN.encode(), rsa_key[1],
                           canonicalize=(b"relaxed", b"relaxed"),
                           include_headers=[b"from"], length=False)
        assert re.findall(rb"bh=([A-Za-z0-9+/=]+)", ours) == \
            re.findall(rb"bh=([A-Za-z0-9+/=]+)", theirs)


def test_private_keys_are_parsed_once(keys: list[tuple[DkimKey, bytes]]) -> None:
    for key, private in keys:
        first = load_private_key(key, private)
        assert load_private_key(key, private) is first
        if key.algorithm == "rsa":
            public = first.public_key().public_bytes(Encoding.DER,
                                                      PublicFormat.SubjectPublicKeyInfo)
        else:
            public = first.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert base64.b64encode(public).decode() == key.public


# --- KeyStore lookups per message -------------------------------------------------------------

def test_one_keystore_lookup_per_signature_and_external_rotation_seen_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ks = KeyStore(tmp_path)
    ks.keygen(DOMAIN, "s1", "ed25519")
    signer = Signer(ks, cache_size=1)
    calls: list[str] = []
    real_get = KeyStore.get

    def counting_get(self: KeyStore, domain: str, *, fresh: bool = False) -> object:
        calls.append(domain)
        return real_get(self, domain, fresh=fresh)

    monkeypatch.setattr(KeyStore, "get", counting_get)
    assert signer.signature("m1", SEVEN_BIT).startswith(b"DKIM-Signature:")
    assert calls == [DOMAIN]
    # Another process (another KeyStore on the same directory) rotates and activates: the
    # very next signature uses the new generation.
    other = KeyStore(tmp_path)
    other.rotate(DOMAIN, "s2")
    state = other.get(DOMAIN)
    assert state is not None
    gens = [msgspec.structs.replace(g, status="active", activated_at=1.0)
            for g in state.generations if g.name == "s2"]
    other.update(msgspec.structs.replace(state, generations=gens))
    sig = signer.signature("m2", SEVEN_BIT)
    assert b"s=s2;" in sig.replace(b"\r\n ", b" ")
