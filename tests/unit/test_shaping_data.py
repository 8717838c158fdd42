"""Built-in provider shaping, shipped as relay/data/shaping.toml and validated like the config."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import msgspec
import pytest

from relay.config import Provider
from relay.warmup.providers import (
    BUILTIN_PROVIDER_NAMES,
    BUILTIN_PROVIDERS,
    ShapingError,
    parse_shaping,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "relay" / "data" / "shaping.toml"

ONE = """[[provider]]
name = "corp"
mx = ["*.corp.test"]
max_connections = 2
messages_per_connection = 5
messages_per_second = 1.5
messages_per_hour = 100
"""


def test_the_shipped_file_holds_the_big_providers_limits() -> None:
    rows = [(r.name, r.patterns, r.limits.max_connections, r.limits.messages_per_connection,
             r.limits.messages_per_second, r.limits.messages_per_hour)
            for r in BUILTIN_PROVIDERS]
    assert rows == [
        ("gmail", ("*.google.com", "*.googlemail.com"), 20, 100, 0.0, 0),
        ("microsoft", ("*.outlook.com", "*.hotmail.com", "*.msn.com"), 10, 20, 0.0, 0),
        ("yahoo", ("*.yahoodns.net", "*.yahoo.com", "*.aol.com"), 10, 20, 0.0, 0),
        ("apple", ("*.icloud.com", "*.me.com", "*.apple.com"), 10, 50, 0.0, 0),
    ]
    assert frozenset({"gmail", "microsoft", "yahoo", "apple"}) == BUILTIN_PROVIDER_NAMES
    assert parse_shaping(SHIPPED.read_text(encoding="utf-8")) == BUILTIN_PROVIDERS


def test_a_provider_there_has_the_keys_of_a_provider_in_the_config() -> None:
    """An operator copies a block from shaping.toml into relay.toml to change it."""
    shipped = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))["provider"]
    config_keys = {f.encode_name for f in msgspec.structs.fields(Provider)}
    assert all(set(p) == config_keys for p in shipped)


def test_the_file_is_package_data() -> None:
    """Shipped in the wheel: matched by pyproject's package-data for `relay`."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["relay"]
    assert any(fnmatch.fnmatch("data/shaping.toml", g) for g in globs)


def test_a_valid_file_gives_its_rules() -> None:
    (rule,) = parse_shaping(ONE)
    assert (rule.name, rule.patterns, rule.limits.messages_per_second,
            rule.limits.messages_per_hour) == ("corp", ("*.corp.test",), 1.5, 100)


@pytest.mark.parametrize(("text", "error"), [
    (ONE.replace("max_connections = 2", "max_connections = -1"),
     "x.toml: provider[0].max_connections: expected `int` >= 0, got -1"),
    (ONE.replace("messages_per_second = 1.5", 'messages_per_second = "fast"'),
     "x.toml: provider[0].messages_per_second: expected `float`, got 'fast'"),
    (ONE + "speed = 3\n",
     "x.toml: provider[0].speed: unknown key (known keys: max_connections, "
     "messages_per_connection, messages_per_hour, messages_per_second, mx, name)"),
    ("extra = 1\n" + ONE, "x.toml: extra: unknown key (known keys: provider)"),
    (ONE.replace("messages_per_hour = 100\n", ""),
     "x.toml: provider[0]: object missing required field `messages_per_hour`"),
    (ONE.replace('["*.corp.test"]', "[]"),
     "x.toml: provider[0].mx: expected `array` of length >= 1"),
    (ONE + ONE, "x.toml: provider[1].name: 'corp' is used twice"),
    (ONE.replace('"corp"', '"other"'),
     "x.toml: provider[0].name: 'other' is reserved for unknown MX hosts"),
    ("", "x.toml: (top level): object missing required field `provider`"),
    ("provider = [", "x.toml: not valid TOML: "),
])
def test_a_bad_file_is_refused_naming_the_key(text: str, error: str) -> None:
    with pytest.raises(ShapingError) as e:
        parse_shaping(text, "x.toml")
    assert str(e.value).startswith(error)
    assert str(e.value) == error or error.endswith(": ")
