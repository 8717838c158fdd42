"""VERP tokens (both ways, forgeries refused) and the pure identity/authorization rules."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.config import ConfigError, from_dict
from relay.dkim.keys import split_txt
from relay.dkim.sign import signed_headers
from relay.identity.model import authorize, check_pattern, covering, pattern_allows
from relay.verp import Verp

SECRET = b"k" * 32


@pytest.mark.parametrize("qid,index", [("0190abcdef0123456789", 0),
                                       ("0190abcdef0123456789", 65535), ("Q000001TEST", 7)])
def test_verp_round_trip(qid: str, index: int) -> None:
    v = Verp(SECRET)
    addr = v.address(qid, index, "bounce.example.com")
    local = addr.split("@")[0]
    assert local.startswith("b-") and len(local) <= 64 and local == local.lower()
    assert v.decode(addr) == (qid, index)
    assert v.decode(addr.upper()) == (qid, index)  # MTAs may fold case
    assert v.decode(f"<{addr}>") == (qid, index)


def test_verp_forged_or_foreign_tokens_are_ignored() -> None:
    v = Verp(SECRET)
    addr = v.address("0190abcdef0123456789", 1, "b.example.com")
    token = addr[2:addr.index("@")]
    flipped = token[:-1] + ("a" if token[-1] != "a" else "b")
    assert v.decode(f"b-{flipped}@b.example.com") is None
    assert Verp(b"x" * 32).decode(addr) is None  # another relay's secret
    for junk in ("", "b-", "b-!!!@x", "postmaster@b.example.com", "b-aaaa@x"):
        assert v.decode(junk) is None


def test_verp_secret_file_is_private_and_stable(tmp_path: Path) -> None:
    a = Verp.from_state_dir(tmp_path)
    b = Verp.from_state_dir(tmp_path)
    assert stat.S_IMODE((tmp_path / "verp.key").stat().st_mode) == 0o600
    assert b.decode(a.address("abcd", 3, "x.test")) == ("abcd", 3)


_RACE = """
import sys, time
from pathlib import Path
from relay.verp import Verp
state, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
v = Verp.from_state_dir(state)
print(v.address("abcd", 1, "x.test"))
"""


def test_workers_creating_the_secret_together_all_get_the_one_whole_key(
        tmp_path: Path) -> None:
    """server.workers = N: the processes start together and each loads verp.key. Real
    processes, released at one instant, over fresh state directories; before the key
    was linked into place whole, a worker read the empty file another had just made
    ("the VERP secret must be at least 16 bytes") and the supervisor stopped."""
    for round_ in range(6):
        state = tmp_path / f"s{round_}"
        start = time.time() + 0.5
        procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(state), str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(6)]
        outs = [p.communicate(timeout=60) for p in procs]
        errors = [err.decode()[-300:] for p, (_, err) in zip(procs, outs, strict=True)
                  if p.returncode != 0]
        assert not errors, errors
        assert len({out for out, _ in outs}) == 1  # one key: the same VERP address
        assert sorted(p.name for p in state.iterdir()) == ["verp.key"]  # no leftovers


def test_covering_prefers_address_then_domain_then_parent() -> None:
    names = ["example.com", "ops@example.com"]
    assert covering("OPS@Example.com", names) == "ops@example.com"
    assert covering("news@example.com", names) == "example.com"
    assert covering("a@mail.example.com", names) == "example.com"
    assert covering("a@example.com.evil.test", names) is None
    assert covering("a@notexample.com", names) is None


def test_patterns() -> None:
    assert pattern_allows("example.com", "a@example.com")
    assert pattern_allows("example.com", "a@sub.example.com")
    assert not pattern_allows("example.com", "a@badexample.com")
    assert pattern_allows("*@news.example.com", "x@news.example.com")
    assert not pattern_allows("ops@other.org", "ceo@other.org")
    with pytest.raises(ValueError):
        check_pattern("a b")


def test_authorize_reasons_name_the_address() -> None:
    verified = {"example.com": True, "pending.test": False}
    r = authorize("a@pending.test", user="app", patterns=[], verified=verified)
    assert r is not None and "not verified" in r.reason and "a@pending.test" in r.reason
    r = authorize("a@example.com", user="app", patterns=["other.org"], verified=verified)
    assert r is not None and "authorization" in r.reason and "a@example.com" in r.reason
    assert authorize("a@example.com", user=None, patterns=["x.org"], verified=verified) is None


def test_oversigned_header_list() -> None:
    h = signed_headers([b"from", b"to", b"subject", b"x-mailer", b"references"])
    assert h.count(b"from") == 2 and h.count(b"to") == 2 and h.count(b"cc") == 1
    assert h.count(b"list-unsubscribe-post") == 1 and h.count(b"references") == 1
    assert b"x-mailer" not in h


def test_txt_split_into_255_byte_strings() -> None:
    parts = split_txt("v=DKIM1; k=rsa; p=" + "A" * 400)
    assert [len(p) for p in parts] == [255, 163]


def test_identity_config_validated_at_load() -> None:
    cfg = from_dict({"identity": [{"domain": "example.com", "mail_from": "bounce.example.com",
                                   "on_mx_failure": "reject"}]})
    assert cfg.identity[0].mail_from == "bounce.example.com"
    with pytest.raises(ConfigError, match="subdomain"):
        from_dict({"identity": [{"domain": "example.com", "mail_from": "bounce.other.org"}]})
    with pytest.raises(ConfigError, match="on_mx_failure"):
        from_dict({"identity": [{"domain": "example.com", "on_mx_failure": "maybe"}]})
    with pytest.raises(ConfigError, match="twice"):
        from_dict({"identity": [{"domain": "example.com"}, {"domain": "example.com"}]})
