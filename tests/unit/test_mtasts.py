"""relay.delivery.mtasts: the pure RFC 8461 parts (TXT record, policy file, MX matching,
cache rules, what a policy does to a route)."""

from __future__ import annotations

import pytest

from relay.delivery import mtasts
from relay.delivery.mtasts import Policy
from relay.dns.route import RouteFailure, Target, Targets

GOOD = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n" \
       "max_age: 604800\r\n"


def test_parse_policy() -> None:
    p = mtasts.parse_policy(GOOD, policy_id="abc", fetched_at=100.0)
    assert p == Policy("enforce", ("mail.example.com", "*.example.net"), 604800, "abc", 100.0)
    assert isinstance(p, Policy) and p.expires_at() == 604900.0


@pytest.mark.parametrize("text,why", [
    (GOOD.replace("STSv1", "STSv2"), "version"),
    (GOOD.replace("enforce", "strict"), "mode"),
    (GOOD.replace("604800", "-1"), "max_age"),
    (GOOD.replace("604800", "1e6"), "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 60\n", "mx"),
    (GOOD + "garbage line\n", "':'"),
    (GOOD.replace("*.example.net", "mail.*.net"), "pattern"),
])
def test_invalid_policies(text: str, why: str) -> None:
    result = mtasts.parse_policy(text)
    assert isinstance(result, str) and why in result


def test_max_age_capped_and_none_mode_needs_no_mx() -> None:
    p = mtasts.parse_policy(GOOD.replace("604800", "99999999999"))
    assert isinstance(p, str)  # more than 10 digits: not a number we accept
    p = mtasts.parse_policy(GOOD.replace("604800", "999999999"))
    assert isinstance(p, Policy) and p.max_age == mtasts.MAX_AGE_LIMIT
    assert isinstance(mtasts.parse_policy("version: STSv1\nmode: none\nmax_age: 0\n"), Policy)


@pytest.mark.parametrize("pattern,host,ok", [
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.Example.COM.", True),
    ("mail.example.com", "mx.example.com", False),
    ("*.example.net", "mx1.example.net", True),
    ("*.example.net", "example.net", False),
    ("*.example.net", "a.b.example.net", False),
    ("*.example.net", "mx1.example.net.evil.test", False),
])
def test_mx_matching(pattern: str, host: str, ok: bool) -> None:
    assert mtasts.mx_matches(pattern, host) is ok


@pytest.mark.parametrize("records,want", [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=spf1 -all", "v=STSv1; id=abc"], "abc"),
    (["v=STSv1; id=a", "v=STSv1; id=b"], None),   # two records: no policy (§3.1)
    (["v=STSv1;"], None),
    (["v=STSv1; id=bad id!"], None),
    ([], None),
])
def test_txt_id(records: list[str], want: str | None) -> None:
    assert mtasts.txt_id(records) == want


def test_cache_rules() -> None:
    cached = Policy("enforce", ("mx.example.com",), 100, "1", fetched_at=1000.0)
    assert mtasts.usable(cached, 1099.0) is cached
    assert mtasts.usable(cached, 1100.0) is None
    assert not mtasts.needs_fetch(cached, "1", 1050.0)
    assert mtasts.needs_fetch(cached, "2", 1050.0)      # id changed
    assert mtasts.needs_fetch(cached, "1", 1200.0)      # expired
    assert not mtasts.needs_fetch(cached, None, 1050.0)  # no TXT: keep the cache


def test_apply_enforce_testing_none() -> None:
    route = Targets([Target("evil.example.org", "192.0.2.9", 25, 5),
                     Target("mail.example.com", "192.0.2.1", 25, 10)])
    enforce = Policy("enforce", ("mail.example.com",), 60)
    got, notes = mtasts.apply("example.com", enforce, route)
    assert isinstance(got, Targets) and notes == []
    assert [(t.host_name, t.tls) for t in got.hosts] == [("mail.example.com", "verify")]
    testing = Policy("testing", ("mail.example.com",), 60)
    got, notes = mtasts.apply("example.com", testing, route)
    assert got is route and len(notes) == 1 and "evil.example.org" in notes[0]
    assert mtasts.apply("example.com", Policy("none", (), 60), route) == (route, [])
    assert mtasts.apply("example.com", None, route) == (route, [])
    none_match = Policy("enforce", ("other.example.com",), 60)
    failed, _ = mtasts.apply("example.com", none_match, route)
    assert isinstance(failed, RouteFailure) and not failed.permanent
    assert (failed.code, failed.enhanced) == (451, "4.7.5")
