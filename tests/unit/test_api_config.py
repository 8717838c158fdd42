"""The [api] section: its defaults, the TLS pair, the warning for plain HTTP off loopback."""

from __future__ import annotations

import pytest

from relay.config import Config, ConfigError, config_warnings, loads


def test_off_by_default_on_loopback_with_the_ses_body_limit() -> None:
    api = Config().api
    assert (api.enabled, str(api.address), api.tls_cert) == (False, "127.0.0.1:8026", "")
    assert int(api.max_body_size) == 40 * 1000 * 1000


def test_a_certificate_without_its_key_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        loads('[api]\nenabled = true\ntls_cert = "/etc/relay/api.pem"\n')
    assert "tls_cert and tls_key" in str(caught.value)


def test_plain_http_off_loopback_is_warned_about() -> None:
    public = loads('[api]\nenabled = true\naddress = "0.0.0.0:8026"\n')
    assert any(w.startswith("api.address") for w in config_warnings(public))
    local = loads('[api]\nenabled = true\naddress = "127.0.0.1:8026"\n')
    assert not any(w.startswith("api.address") for w in config_warnings(local))
    off = loads('[api]\naddress = "0.0.0.0:8026"\n')
    assert not any(w.startswith("api.address") for w in config_warnings(off))
