"""The PROXY protocol keys of [[listener]] and [limits]: their errors name the key, the
value and what was expected."""

from __future__ import annotations

from typing import Any

import pytest

from relay.config import ConfigError, from_dict


@pytest.mark.parametrize("listener, limits, expected", [
    ({"proxy_protocol": True}, {},
     "listener[0]: proxy_protocol = true needs proxy_trusted: expected the load balancers'"),
    ({"proxy_protocol": True, "proxy_trusted": ["10.0.0.300/8"]}, {},
     'listener[0].proxy_trusted[0]: expected a CIDR like "10.0.0.0/8", got "10.0.0.300/8"'),
    ({"proxy_protocol": "yes", "proxy_trusted": ["10.0.0.1/32"]}, {},
     "listener[0].proxy_protocol"),
    ({"role": "feedback", "proxy_protocol": True, "proxy_trusted": ["10.0.0.1/32"]}, {},
     'proxy_protocol = true on a role = "feedback" listener: expected it on role = '
     '"submission" listeners only'),
    ({}, {"proxy_header_timeout": "0s"},
     'limits: proxy_header_timeout = 0.0: expected a duration above 0, like "5s"'),
])
def test_proxy_keys_refused(listener: dict[str, Any], limits: dict[str, Any],
                            expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"listener": [{"address": "127.0.0.1:2587", **listener}], "limits": limits})
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_proxy_listener_accepted() -> None:
    cfg = from_dict({"listener": [{"address": "127.0.0.1:2587", "proxy_protocol": True,
                                   "proxy_trusted": ["10.0.0.5/32", "fd00::/8"]}],
                     "limits": {"proxy_header_timeout": "2s"}})
    assert cfg.listener[0].proxy_protocol and cfg.limits.proxy_header_timeout == 2.0
