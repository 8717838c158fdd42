"""relay.config: value syntaxes, error reporting with key paths, and the annotated example."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from relay import config as C
from relay.config import ConfigError, loads
from relay.testing.submission import Tls

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "relay.toml"
EMBEDDED = ROOT / "relay" / "data" / "relay.dev.toml"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text)
    return info.value.problems


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("raw", "seconds"), [
    ("30s", 30), ("5m", 300), ("72h", 259200), ("90d", 7776000), ("2w", 1209600),
    ("500ms", 0.5), ("1.5h", 5400), (" 10 s ", 10), ("0s", 0), (45, 45), (2.5, 2.5), ("7", 7),
])
def test_duration_parses(raw: object, seconds: float) -> None:
    assert C.parse_duration(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "3 days", "5 min", "-1s", "h", "1e3s", -1, True,
                                 float("inf"), float("nan"), None, [1]])
def test_duration_rejects(raw: object) -> None:
    with pytest.raises(ValueError):
        C.parse_duration(raw)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(("raw", "size"), [
    (0, 0), (40000000, 40000000), ("40MB", 40_000_000), ("512KiB", 524288), ("1gib", 1 << 30),
    ("10 kb", 10_000), ("100", 100), ("7b", 7),
])
def test_size_parses(raw: object, size: int) -> None:
    assert C.parse_size(raw) == size


@pytest.mark.parametrize("raw", ["", "1.5MB", "40 megabytes", "-1", -1, True, 1.5, "MB"])
def test_size_rejects(raw: object) -> None:
    with pytest.raises(ValueError):
        C.parse_size(raw)


# --------------------------------------------------------------------------- host:port


@pytest.mark.parametrize(("raw", "default", "host", "port"), [
    ("127.0.0.1:587", None, "127.0.0.1", 587),
    ("mx.example.com:2525", None, "mx.example.com", 2525),
    ("[::1]:587", None, "::1", 587),
    ("[2001:db8::1]:25", 53, "2001:db8::1", 25),
    ("[::1]", 53, "::1", 53),
    ("::1", 53, "::1", 53),
    ("10.0.0.1", 53, "10.0.0.1", 53),
    ("ns.example.net", 25, "ns.example.net", 25),
    (" 1.1.1.1:5353 ", 53, "1.1.1.1", 5353),
])
def test_host_port_parses(raw: str, default: int | None, host: str, port: int) -> None:
    assert C.parse_host_port(raw, default) == C.HostPort(host, port)


@pytest.mark.parametrize(("raw", "default", "why"), [
    ("127.0.0.1", None, "port is missing"),
    ("[::1]", None, "port is missing"),
    ("::1", None, "port is missing"),
    ("host:0", None, "between 1 and 65535"),
    ("host:65536", None, "between 1 and 65535"),
    ("host:", None, "between 1 and 65535"),
    ("host:x", 25, "between 1 and 65535"),
    ("[::1]:x", None, "between 1 and 65535"),
    ("[mx.example.com]:25", None, "IPv6"),
    ("1::2::3", 53, "IPv6"),
    (":25", None, "host is missing"),
    ("", 25, "host:port"),
    (25, 25, "host:port"),
])
def test_host_port_rejects(raw: object, default: int | None, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        C.parse_host_port(raw, default)


def test_host_port_str_brackets_ipv6() -> None:
    assert str(C.HostPort("::1", 587)) == "[::1]:587"
    assert str(C.HostPort("127.0.0.1", 587)) == "127.0.0.1:587"


def test_default_ports_per_kind() -> None:
    cfg = loads('[dns]\nnameservers = ["192.0.2.53", "[::1]:5353"]\n'
                '[delivery.routes]\n"example.net" = "mx.internal"\n'
                '"example.org" = "[2001:db8::25]"\n')
    assert cfg.dns.nameservers == [C.Nameserver("192.0.2.53", 53), C.Nameserver("::1", 5353)]
    assert cfg.delivery.routes == {"example.net": C.NextHop("mx.internal", 25),
                                   "example.org": C.NextHop("2001:db8::25", 25)}
    assert problems('[[listener]]\naddress = "127.0.0.1"\n') == [
        'listener[0].address: expected "host:port" (the port is missing), got "127.0.0.1"']


# --------------------------------------------------------------------------- loading


def test_empty_file_is_all_defaults() -> None:
    assert loads("") == C.Config()


def test_units_are_converted() -> None:
    cfg = loads('[delivery]\nmax_delivery_time = "3d"\nretry_schedule = ["30s", 60]\n'
                '[limits]\nmax_message_size = "10MiB"\n[server]\ncommit_window = "5ms"\n')
    assert cfg.delivery.max_delivery_time == 3 * 86400.0
    assert cfg.delivery.retry_schedule == [30.0, 60.0]
    assert cfg.limits.max_message_size == 10 * 1024 * 1024
    assert cfg.server.commit_window == pytest.approx(0.005)


def test_unknown_keys_are_named_with_path() -> None:
    found = problems('bogus = 1\n[server]\nhostnme = "x"\n[[listener]]\naddress = "127.0.0.1:1"\n'
                     'colour = "red"\n[nope]\n')
    assert any(p.startswith("bogus: unknown key") for p in found)
    assert any(p.startswith("server.hostnme: unknown key (known keys: ") and "hostname" in p
               for p in found)
    assert any(p.startswith("listener[0].colour: unknown key") for p in found)
    assert any(p.startswith("nope: unknown key") for p in found)
    assert len(found) == 4


def test_missing_required_key() -> None:
    assert problems('[[listener]]\ntls = "implicit"\n') == [
        'listener[0].address: missing, expected "host:port"']


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        '[server]\nhostname = 7\ncommit_batch_max = 0\nlog_level = "loud"\n'
        '[[listener]]\naddress = "127.0.0.1:2587"\ntls = "ssl"\n'
        '[[listener]]\naddress = "127.0.0.1:99999"\ntrusted_networks = ["10.0.0.0/33"]\n'
        '[delivery]\nmax_delivery_time = "3 days"\nretry_jitter = 1.5\nport = 0\n'
        'retry_schedule = []\nverify_certificates = "yes"\n'
        '[limits]\nmax_message_size = "lots"\nmax_recipients = -1\n')
    assert found == [
        "server.hostname: expected a string, got 7",
        "server.commit_batch_max: expected an integer >= 1, got 0",
        'server.log_level: expected "debug" | "info" | "warning" | "error", got "loud"',
        'listener[0].tls: expected "starttls" | "implicit" | "none", got "ssl"',
        'listener[1].address: expected a port between 1 and 65535, got "127.0.0.1:99999"',
        'listener[1].trusted_networks[0]: expected a CIDR like "10.0.0.0/8", got "10.0.0.0/33"',
        "delivery.port: expected an integer between 1 and 65535, got 0",
        'delivery.max_delivery_time: expected a duration like "30s", "5m", "72h" or "90d", '
        'got "3 days"',
        'delivery.retry_schedule: expected a list (each a duration like "30s") with at least '
        "1 item(s), got []",
        "delivery.retry_jitter: expected a number in [0, 1), got 1.5",
        'delivery.verify_certificates: expected true or false, got "yes"',
        'limits.max_message_size: expected a size in bytes like 40000000 or "40MB", got "lots"',
        "limits.max_recipients: expected an integer >= 1, got -1",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("listener = 3\n", "listener: expected a list (each a table), got 3"),
    ("server = 3\n", "server: expected a table, got 3"),
    ("[[server]]\n", "server: expected a table, got [a table]"),
    ('[delivery]\nroutes = "x"\n', 'delivery.routes: expected a table (each value "host" or '
                                   '"host:port"), got "x"'),
    ("[server]\ncommit_batch_max = true\n", "server.commit_batch_max: expected an integer >= 1,"
                                            " got true"),
    ("[server]\ncommit_batch_max = 2.0\n", "server.commit_batch_max: expected an integer >= 1,"
                                           " got 2.0"),
])
def test_wrong_shapes(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_integers_are_accepted_for_floats() -> None:
    assert loads("[delivery]\nretry_jitter = 0\n").delivery.retry_jitter == 0.0


def test_not_toml() -> None:
    (only,) = problems("[server\n")
    assert only.startswith("not valid TOML: ")


def test_load_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text('[server]\nstate_dir = 1\n')
    with pytest.raises(ConfigError) as info:
        C.load(f)
    assert info.value.source == str(f)
    assert str(info.value) == f"{f}: server.state_dir: expected a string, got 1"
    with pytest.raises(ConfigError, match="cannot read config file: No such file"):
        C.load(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        C.load(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        C.load(tmp_path / "bin.toml")


# --------------------------------------------------------------------------- cross rules


def test_open_relay_is_refused() -> None:
    (only,) = problems('[[listener]]\naddress = "0.0.0.0:25"\nauth = "none"\n')
    assert only.startswith("listener[0]: auth = \"none\" on a submission listener needs "
                           "trusted_networks")
    loads('[[listener]]\naddress = "0.0.0.0:25"\nauth = "none"\n'
          'trusted_networks = ["10.0.0.0/8"]\n')
    loads('[[listener]]\naddress = "0.0.0.0:25"\nauth = "none"\nrole = "feedback"\n')


@pytest.mark.parametrize(("a", "b", "clash"), [
    ("127.0.0.1:587", "127.0.0.1:587", True),
    ("0.0.0.0:587", "127.0.0.1:587", True),
    ("[::]:587", "127.0.0.1:587", True),
    ("0.0.0.0:587", "[::1]:587", False),
    ("127.0.0.1:587", "127.0.0.2:587", False),
    ("127.0.0.1:587", "127.0.0.1:465", False),
])
def test_listener_address_clashes(a: str, b: str, clash: bool) -> None:
    text = f'[[listener]]\naddress = "{a}"\n[[listener]]\naddress = "{b}"\n'
    if clash:
        (only,) = problems(text)
        assert only.startswith("listener[1].address: ") and "clashes with listener[0]" in only
    else:
        loads(text)


def test_admin_clashes_with_listener_only_when_enabled() -> None:
    text = '[[listener]]\naddress = "127.0.0.1:8025"\n[admin]\nenabled = {}\n'
    loads(text.format("false"))
    assert problems(text.format("true")) == [
        'admin.address: "127.0.0.1:8025" clashes with listener[0].address "127.0.0.1:8025"']


def test_tls_files(tmp_path: Path) -> None:
    assert problems(f'[tls]\ncert = "{tmp_path}/c.pem"\n') == [
        "tls: cert and key must be given together (or both left out for a self-signed one)",
        f'tls.cert: file "{tmp_path}/c.pem" does not exist']
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    assert problems(f'[tls]\ncert = "{tmp_path}/c.pem"\nkey = "{tmp_path}/k.pem"\n') == [
        "tls.cert, tls.key: expected a PEM certificate chain and its unencrypted private "
        f"key, but {tmp_path}/c.pem has no PEM certificate (-----BEGIN CERTIFICATE-----)"]
    cert, key = Tls().write_files(tmp_path)
    cfg = loads(f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    assert cfg.tls.key == str(key)


# --------------------------------------------------------------------------- shipped files


def _fields(tp: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    return {f.encode_name: f for f in msgspec.structs.fields(tp)}


def _default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return msgspec.NODEFAULT


def test_example_documents_every_key_with_its_default() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    cfg = C.load(EXAMPLE)  # valid as a whole
    top = _fields(C.Config)
    assert set(raw) == set(top), "config/relay.toml must have exactly the sections of Config"
    for section, field in top.items():
        value = getattr(cfg, field.name)
        if isinstance(value, list):  # [[listener]]: an example entry, address required
            (item,) = value
            item_tp = type(item)
            assert set(raw[section][0]) == set(_fields(item_tp)), section
            for name, f in _fields(item_tp).items():
                if f.required:
                    continue
                assert getattr(item, f.name) == _default(f), f"{section}.{name}"
            continue
        assert set(raw[section]) == set(_fields(type(value))), (
            f"[{section}] in config/relay.toml must list exactly the keys of "
            f"{type(value).__name__}")
        for name, f in _fields(type(value)).items():
            assert getattr(value, f.name) == _default(f), (
                f"{section}.{name} in config/relay.toml differs from the default in config.py")


def test_embedded_dev_config_is_valid_and_on_loopback() -> None:
    cfg = C.load(EMBEDDED)
    assert cfg.server.hostname == "localhost"
    assert cfg.server.state_dir == "./var"
    assert cfg.server.dev_credential is True
    assert [(str(lst.address), lst.tls, lst.auth, lst.role) for lst in cfg.listener] == [
        ("127.0.0.1:2587", "starttls", "required", "submission"),
        ("127.0.0.1:2465", "implicit", "required", "submission"),
    ]
    assert (cfg.tls.cert, cfg.tls.key) == ("", "")


def test_dev_config_symlink_points_at_embedded() -> None:
    link = ROOT / "config" / "relay.dev.toml"
    assert link.is_symlink()
    assert link.resolve() == EMBEDDED.resolve()


def test_embedded_config_is_found_by_the_cli() -> None:
    from relay.cli import default_config_path

    assert default_config_path().read_text() == EMBEDDED.read_text()


# --------------------------------------------------------------------------- admin.public_url


@pytest.mark.parametrize("url", ["http://mail.example.com", "https://", "mail.example.com",
                                 "https://mail.example.com/?a=1", "https://mail.example.com/#x",
                                 "https://user:pw@mail.example.com", "https://mail.example.com:x",
                                 "https://mail example.com", "ftp://mail.example.com"])
def test_admin_public_url_must_be_a_plain_https_url(url: str) -> None:
    (problem,) = problems(f'[admin]\npublic_url = "{url}"\n')
    assert problem.startswith("admin.public_url: expected an https:// URL"), problem
    assert f'got "{url}"' in problem, problem


@pytest.mark.parametrize(("url", "base"), [
    ("", "https://relay.example.com/unsubscribe/"),
    ("https://mail.example.com", "https://mail.example.com/unsubscribe/"),
    ("https://mail.example.com:8443/relay/", "https://mail.example.com:8443/relay/unsubscribe/"),
])
def test_list_unsubscribe_urls_are_built_on_the_public_url(url: str, base: str) -> None:
    from relay.configsets import unsubscribe_base
    cfg = loads(f'[server]\nhostname = "relay.example.com"\n[admin]\npublic_url = "{url}"\n'
                '[[configuration_set]]\nname = "news"\nlist_unsubscribe = true\n'
                '[[configuration_set]]\nname = "plain"\n')
    assert unsubscribe_base(cfg, "news") == base
    assert unsubscribe_base(cfg, "plain") == ""


def test_tenant_owned_sets_pools_and_destinations() -> None:
    cfg = loads('[[pool]]\nname = "acme-ips"\nips = ["192.0.2.1"]\ntenant = "acme"\n'
                '[[configuration_set]]\nname = "news"\npool = "acme-ips"\ntenant = "acme"\n'
                '[[event_destination]]\nname = "hooks"\nconfiguration_set = "news"\n'
                'tenant = "acme"\n')
    assert (cfg.pool[0].tenant, cfg.configuration_set[0].tenant,
            cfg.event_destination[0].tenant) == ("acme", "acme", "acme")
    assert loads('[[configuration_set]]\nname = "x"\n').configuration_set[0].tenant == ""


@pytest.mark.parametrize(("text", "expected"), [
    ('[[configuration_set]]\nname = "x"\ntenant = "a b"\n',
     "configuration_set[0]: tenant 'a b': expected \"\" (shared) or a tenant name of 1-64"),
    ('[[pool]]\nname = "p"\nips = ["192.0.2.1"]\ntenant = "bad/name"\n',
     "pool[0]: tenant 'bad/name': expected"),
    ('[[event_destination]]\nname = "d"\ntenant = "' + "x" * 65 + '"\n',
     "event_destination[0]: tenant 'xxx"),
    # A set's pool must be shared or its own tenant's.
    ('[[pool]]\nname = "p"\nips = ["192.0.2.1"]\ntenant = "acme"\n'
     '[[configuration_set]]\nname = "news"\npool = "p"\ntenant = "beta"\n',
     'configuration_set[0].pool: pool "p" belongs to tenant "acme", expected a shared pool '
     'or one of tenant "beta"'),
    ('[[pool]]\nname = "p"\nips = ["192.0.2.1"]\ntenant = "acme"\n'
     '[[configuration_set]]\nname = "news"\npool = "p"\n',
     'configuration_set[0].pool: pool "p" belongs to tenant "acme"'),
    ('[[configuration_set]]\nname = "news"\ntenant = "acme"\n'
     '[[event_destination]]\nname = "d"\nconfiguration_set = "news"\ntenant = "beta"\n',
     'event_destination[0].configuration_set: configuration set "news" belongs to tenant '
     '"acme"'),
])
def test_tenant_ownership_problems_are_named(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


# --------------------------------------------------------------------------- api.region
def test_api_region_defaults_to_us_east_1_and_must_be_a_region_name() -> None:
    assert loads("").api.region == "us-east-1"
    assert loads('[api]\nregion = "eu-central-1"\n').api.region == "eu-central-1"
    (problem,) = problems('[api]\nregion = "EU West"\n')
    assert problem.startswith("api: region 'EU West': expected a region name"), problem


# --------------------------------------------------------------------------- history
def test_history_defaults() -> None:
    h = loads("").history
    assert (h.enabled, h.retention, h.stats_retention, h.flush, h.max_disk) == \
        (True, 30 * 86400, 15 * 86400, 0.5, 0)
    h = loads('[history]\nenabled = false\nretention = "7d"\nstats_retention = "14d"\n'
              'flush = "2s"\nmax_disk = "2GB"\n').history
    assert (h.enabled, h.retention, h.stats_retention, h.flush, h.max_disk) == \
        (False, 7 * 86400, 14 * 86400, 2.0, 2_000_000_000)


@pytest.mark.parametrize(("text", "expected"), [
    ('[history]\nstats_retention = "13d"\n',
     'history: stats_retention = "13d": expected at least 14d: sending statistics keep '
     '14 days'),
    ('[history]\nstats_retention = "1h"\n',
     'history: stats_retention = "1h": expected at least 14d'),
    ('[history]\nflush = "0s"\n', 'history: flush = "0s": expected a duration above 0'),
    ('[history]\nretention = 0\n', 'history: retention = "0s": expected a duration above 0'),
    ('[history]\nmax_disk = "lots"\n', 'history.max_disk: expected a size in bytes'),
    ('[history]\nkeep = "30d"\n', "history.keep: unknown key"),
])
def test_history_problems_name_key_value_and_expectation(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found
