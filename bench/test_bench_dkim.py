"""DKIM signing rate: RSA-2048 vs Ed25519 for 2 KB, 20 KB and 1 MB messages.

`make bench` measures (figures in bench/RESULTS.md); under `make test` each case runs
once as a smoke test (--benchmark-disable). Each round signs a new message id, so the
cache never answers: this is the cost paid once per message per signing domain.
"""

from __future__ import annotations

import itertools

import pytest

from relay.dkim.keys import KeyStore
from relay.dkim.sign import Signer

SIZES = {"2KB": 2_000, "20KB": 20_000, "1MB": 1_000_000}


def message(size: int) -> bytes:
    head = (b"From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: bench\r\n"
            b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <b@example.com>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    store = KeyStore(tmp_path_factory.mktemp("dkim"))
    store.keygen("rsa.example", "s1", "rsa")
    store.keygen("ed.example", "s1", "ed25519")
    return store


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_sign_rate(benchmark: object, keys: KeyStore, algorithm: str, size: str) -> None:
    domain = "rsa.example" if algorithm == "rsa" else "ed.example"
    body = message(SIZES[size]).replace(b"example.com", domain.encode())
    signer = Signer(keys, cache_size=1)
    ids = itertools.count()
    sig = benchmark(lambda: signer.signature(f"m{next(ids)}", body))  # type: ignore[operator]
    assert sig.startswith(b"DKIM-Signature:")
    assert (b"a=rsa-sha256" if algorithm == "rsa" else b"a=ed25519-sha256") in sig
