"""The configuration set's [tracking] keys, the X-SES-TRACKING override and the plan."""

from __future__ import annotations

import pytest

from relay.config import Config, ConfigError, from_dict
from relay.configsets import (
    TrackingPlan,
    requested_tracking,
    strip_headers,
    tracking_plan,
)


def config(**tracking: object) -> Config:
    return from_dict({"configuration_set": [{"name": "news", "tracking": tracking}]})


@pytest.mark.parametrize("tracking,problem", [
    ({"open": True}, 'configuration_set[0].tracking: domain "": expected the tracking '
                     'domain (e.g. "track.example.com") when open or click is true'),
    ({"domain": "not a domain"}, "configuration_set[0].tracking: domain 'not a domain': "
                                 'expected a domain name such as "track.example.com"'),
    ({"https_policy": "REQUIRE"}, 'configuration_set[0].tracking.https_policy: expected '
                                  '"require" | "require_open_only" | "optional", got "REQUIRE"'),
    ({"opne": True}, "configuration_set[0].tracking.opne: unknown key (known keys: click, "
                     "domain, https_policy, open)"),
    ({"click": "yes", "domain": "t.example.com"},
     'configuration_set[0].tracking.click: expected true or false, got "yes"'),
])
def test_config_errors_name_the_key_the_value_and_what_was_expected(
        tracking: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        config(**tracking)
    assert e.value.problems == [problem]


def head(value: str | None) -> bytes:
    field = f"X-SES-TRACKING: {value}\r\n" if value is not None else ""
    return f"From: a@example.com\r\n{field}Subject: s\r\n\r\nbody\r\n".encode()


@pytest.mark.parametrize("value,kept", [
    (None, ""), ("none", "none"), ("NONE", "none"), ("open", "open"), ("click", "click"),
    ("click, open", "open,click"), ("open click", "open,click"), ("", "none"),
    ("yes", "none"), ("open,none", "none"), ("x" * 10_000, "none"),
])
def test_the_override_header(value: str | None, kept: str) -> None:
    assert requested_tracking(head(value)) == kept
    known = [("From", "a@example.com")] + ([("X-SES-Tracking", value)] if value is not None
                                             else [])
    assert requested_tracking(b"", known) == kept


def test_the_override_header_is_stripped_at_submission() -> None:
    assert strip_headers(head("none")) == b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.mark.parametrize("tracking,override,plan", [
    ({}, "", None),
    ({"domain": "t.example.com"}, "", None),
    ({"open": True, "click": True, "domain": "T.Example.com"}, "",
     TrackingPlan("https://t.example.com/t/o/", "t.example.com", True)),
    ({"open": True, "click": True, "domain": "t.example.com"}, "none", None),
    ({"open": True, "click": True, "domain": "t.example.com"}, "open",
     TrackingPlan("https://t.example.com/t/o/", "", True)),
    ({"open": True, "domain": "t.example.com"}, "click", None),
    ({"open": True, "click": True, "domain": "t.example.com",
      "https_policy": "require_open_only"}, "",
     TrackingPlan("https://t.example.com/t/o/", "t.example.com", False)),
    ({"open": True, "click": True, "domain": "t.example.com", "https_policy": "optional"},
     "", TrackingPlan("http://t.example.com/t/o/", "t.example.com", False)),
])
def test_the_plan_of_a_message(tracking: dict[str, object], override: str,
                               plan: TrackingPlan | None) -> None:
    assert tracking_plan(config(**tracking), "news", override) == plan
    assert tracking_plan(config(**tracking), "", override) is None


def test_redirect_schemes_follow_the_https_policy() -> None:
    strict = TrackingPlan("", "t.example.com", True)
    loose = TrackingPlan("", "t.example.com", False)
    assert strict.click_url("TOK", "http://a.example/") == "https://t.example.com/t/c/TOK"
    assert loose.click_url("TOK", "http://a.example/") == "http://t.example.com/t/c/TOK"
    assert loose.click_url("TOK", "HTTPS://a.example/") == "https://t.example.com/t/c/TOK"
