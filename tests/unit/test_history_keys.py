"""The history's key encodings: ids and times sort together, two entries of one
microsecond both keep a key, indexed values are bounded and case-blind, subject words."""

from __future__ import annotations

import pytest

from relay.history import keys as K
from relay.history.model import HistoryMessage, RecipientHistory

T = 1_790_035_200.123


@pytest.mark.parametrize(("subject", "words"), [
    ("Your invoice #42 is ready", ["your", "invoice", "42", "is", "ready"]),
    ("RE: re: Re: hello", ["re", "hello"]),
    ("a b c", []),
    ("Über straße ÉTÉ", ["über", "straße", "été"]),
    ("x" * 40 + " " + "y" * 41, ["x" * 40]),
    ("snake_case-and-dashes", ["snake_case", "and", "dashes"]),
    ("", []),
])
def test_words(subject: str, words: list[str]) -> None:
    assert K.words(subject) == words


def test_words_are_at_most_thirty() -> None:
    subject = " ".join(f"w{i:02d}" for i in range(50))
    assert K.words(subject) == [f"w{i:02d}" for i in range(30)]


@pytest.mark.parametrize(("ts", "bucket"), [
    (1_790_035_200.0, 1_790_035_200), (1_790_035_200.0 + 899.999, 1_790_035_200),
    (1_790_035_200.0 + 900, 1_790_036_100), (0.0, 0),
])
def test_bucket_of(ts: float, bucket: int) -> None:
    assert K.bucket_of(ts) == bucket
    assert K.bucket_of(ts, 3600) == int(ts) // 3600 * 3600


def test_id_bounds_sort_with_queue_ids() -> None:
    qid = f"{int(T * 1000):012x}a1b2c3d4"
    assert K.is_queue_id(qid) and not K.is_queue_id("<abc@example.com>")
    assert K.id_bound(T) <= qid < K.id_bound(T + 0.002)
    assert K.id_bound(T - 1) < qid
    assert K.id_time(qid) == pytest.approx(T, abs=0.001)
    assert K.id_bound(float("inf")) == "f" * 12 and K.id_bound(-5) == "0" * 12


def test_timeline_keys_sort_by_time_then_sequence() -> None:
    qid = "0" * 20
    a = K.timeline_key(qid, T, 0)
    b = K.timeline_key(qid, T, 1)
    c = K.timeline_key(qid, T + 0.000001, 0)
    assert a < b < c and len(a) == 32
    assert K.parse_timeline_key(b) == (qid, pytest.approx(T), 1)
    assert a.startswith(K.timeline_prefix(qid))


@pytest.mark.parametrize(("value", "stored"), [
    ("Bob@Example.COM", b"bob@example.com"),
    ("  spaced ", b"spaced"),
    ("nul\x00inside", b"nulinside"),
    ("é" * 150, ("é" * 100).encode()),           # 200 bytes, whole characters
    ("a" + "é" * 150, ("a" + "é" * 99).encode()),
])
def test_index_values(value: str, stored: bytes) -> None:
    assert K.index_value(value) == stored
    assert len(K.index_value(value)) <= K.MAX_VALUE
    qid = "0" * 20
    key = K.index_key(K.F_RECIPIENT, value, qid)
    assert key == b"r" + stored + b"\x00" + qid.encode()
    assert K.id_of_index_key(key) == qid


def test_index_keys_of_a_message() -> None:
    m = HistoryMessage(
        id="1" * 20, sender="B@acme.com", tenant="Acme", configuration_set="news",
        subject="Hello World", from_=["Acme News <news@acme.com>"], message_id="m1@acme.com",
        identity="acme.com",
        recipients=[RecipientHistory("x@gmail.com", "delivered"),
                    RecipientHistory("y@gmail.com", "complained")])
    assert K.index_fields(m) == {
        (b"r", "x@gmail.com"), (b"r", "y@gmail.com"), (b"s", "b@acme.com"),
        (b"f", "news@acme.com"), (b"w", "hello"), (b"w", "world"), (b"m", "m1@acme.com"),
        (b"t", "acme"), (b"c", "news"), (b"i", "acme.com"), (b"x", "delivered"),
        (b"x", "complained")}
    assert all(k.endswith(b"\x00" + m.id.encode()) for k in K.index_keys(m))


@pytest.mark.parametrize(("value", "address", "domain"), [
    ("Name <a@Example.com>", "a@Example.com", "example.com"),
    ("a@b.org", "a@b.org", "b.org"),
    ("no address", "no address", ""),
])
def test_addresses(value: str, address: str, domain: str) -> None:
    assert K.address_of(value) == address
    assert K.domain_of(value) == domain


def test_stats_keys_round_trip_and_group_by_bucket_then_dimension() -> None:
    k = K.stats_key(1_790_035_200, b"t", "acme", b"d")
    assert K.parse_stats_key(k) == (1_790_035_200, b"t", "acme", b"d")
    assert k.startswith(K.stats_prefix(1_790_035_200, b"t", "acme"))
    assert k.startswith(K.bucket_prefix(1_790_035_200))
    assert K.stats_key(1_790_035_200, b"t", "zz", b"a") < K.stats_key(1_790_036_100, b"a",
                                                                       "", b"a")
    assert set(K.METRIC_NAMES.values()) == set(K.METRICS)
