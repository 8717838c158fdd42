"""Tracking tokens: round trips, fixed length, and forged or altered tokens refused."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.tracking.token import KEY_LABEL, TOKEN_LEN, Tokens, TrackingToken
from relay.verp import Verp

QID = "0190abcdef0123456789"
TOKENS = Tokens(b"s" * 32)
URLSAFE = string.ascii_letters + string.digits + "-_"


@pytest.mark.parametrize("recipient,link", [(0, 0), (1, 7), (65535, 65535)])
def test_click_token_round_trip(recipient: int, link: int) -> None:
    token = TOKENS.click_token(QID, recipient, link)
    assert len(token) == TOKEN_LEN and set(token) <= set(URLSAFE)
    assert TOKENS.verify(token) == TrackingToken("click", QID, recipient, link)
    assert TOKENS.verify(token, "click") == TrackingToken("click", QID, recipient, link)
    assert TOKENS.verify(token.encode()) == TrackingToken("click", QID, recipient, link)


def test_open_token_round_trip_and_kinds_are_not_interchangeable() -> None:
    token = TOKENS.open_token(QID, 3)
    assert len(token) == TOKEN_LEN
    assert TOKENS.verify(token, "open") == TrackingToken("open", QID, 3, 0)
    assert TOKENS.verify(token, "click") is None
    assert TOKENS.verify(TOKENS.click_token(QID, 3, 0), "open") is None


def test_every_single_character_change_of_a_token_is_refused() -> None:
    for token in (TOKENS.open_token(QID, 2), TOKENS.click_token(QID, 2, 9)):
        for i, original in enumerate(token):
            for c in URLSAFE + "=+/.%~ \x00é":
                if c != original:
                    assert TOKENS.verify(token[:i] + c + token[i + 1:]) is None, (i, c)


def test_every_single_byte_change_of_the_decoded_token_is_refused() -> None:
    import base64
    token = TOKENS.click_token(QID, 1, 4)
    raw = base64.urlsafe_b64decode(token)
    for i in range(len(raw)):
        for bit in range(8):
            altered = bytearray(raw)
            altered[i] ^= 1 << bit
            assert TOKENS.verify(base64.urlsafe_b64encode(bytes(altered))) is None


@pytest.mark.parametrize("junk", ["", "a", "A" * 35, "A" * 37, "A" * 100_000, "é" * 36,
                                  "%" * 36, "A" * 35 + "=", "../" * 12, "\r\n" * 18])
def test_hostile_strings_are_refused(junk: str) -> None:
    assert TOKENS.verify(junk) is None


def test_another_secret_or_the_verp_key_itself_does_not_verify() -> None:
    token = TOKENS.click_token(QID, 0, 0)
    assert Tokens(b"t" * 32).verify(token) is None
    verp = Verp(b"v" * 32)
    derived = Tokens(verp.derived_key(KEY_LABEL))
    assert derived.verify(derived.open_token(QID, 1)) == TrackingToken("open", QID, 1, 0)
    assert Tokens(b"v" * 32).verify(derived.open_token(QID, 1)) is None
    assert verp.derived_key(KEY_LABEL) != b"v" * 32


@pytest.mark.parametrize("qid,recipient,link", [("Q000001TEST", 0, 0), (QID.upper(), 0, 0),
                                                (QID, -1, 0), (QID, 65536, 0), (QID, 0, 70000)])
def test_out_of_range_values_are_refused_when_signing(qid: str, recipient: int,
                                                      link: int) -> None:
    with pytest.raises(ValueError):
        TOKENS.click_token(qid, recipient, link)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_verify_never_raises_and_random_text_never_verifies(text: str) -> None:
    assert TOKENS.verify(text) is None
