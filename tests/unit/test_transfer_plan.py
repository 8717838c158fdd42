"""`relay queue transfer`'s plan before any SMTP: the chunks it claims at once (bounded in
count and in body bytes), and whether `--to` is one of this node's own listeners."""

from __future__ import annotations

from relay.cli.transfer import CHUNK, CHUNK_BYTES, _chunks, own_listener
from relay.config import from_dict
from relay.config.types import HostPort


def test_chunks_are_bounded_in_count_and_bytes() -> None:
    listed = [(f"m{i}", 1000) for i in range(CHUNK * 2 + 5)]
    assert [len(c) for c in _chunks(listed)] == [CHUNK, CHUNK, 5]
    big = CHUNK_BYTES // 3 + 1
    assert [len(c) for c in _chunks([(f"b{i}", big) for i in range(7)])] == [2, 2, 2, 1]
    # A message larger than a chunk's bytes goes alone, never skipped.
    assert list(_chunks([("a", 10), ("huge", CHUNK_BYTES * 2), ("b", 10)])) == \
        [["a"], ["huge"], ["b"]]
    assert list(_chunks([])) == []


def test_own_listener_by_address_name_and_wildcard() -> None:
    cfg = from_dict({"server": {"hostname": "node-a.test"},
                     "listener": [{"address": "127.0.0.1:2587"},
                                  {"address": "0.0.0.0:2588"},
                                  {"address": "[::]:2589"}]})
    assert own_listener(cfg, HostPort("127.0.0.1", 2587)) == "127.0.0.1:2587"
    assert own_listener(cfg, HostPort("localhost", 2587)) == "127.0.0.1:2587"
    assert own_listener(cfg, HostPort("127.0.0.44", 2588)) == "0.0.0.0:2588"
    assert own_listener(cfg, HostPort("127.0.0.1", 2589)) == "[::]:2589"
    # Another port, another address, an address of no interface here: another node.
    assert own_listener(cfg, HostPort("127.0.0.1", 2590)) is None
    assert own_listener(cfg, HostPort("127.0.0.2", 2587)) is None
    assert own_listener(cfg, HostPort("192.0.2.1", 2588)) is None
