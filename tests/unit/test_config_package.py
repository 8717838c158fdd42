"""relay.config as a package: small modules with one job each, and one import surface."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import msgspec

import relay.config
from relay.config import Config

PACKAGE = Path(relay.config.__file__).parent


def test_each_module_says_its_job_and_stays_small() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 1
    for path in modules:
        text = path.read_text(encoding="utf-8")
        assert ast.get_docstring(ast.parse(text)), f"{path.name} has no module docstring"
        assert len(text.splitlines()) < 400, f"{path.name} has grown past 400 lines"


def _section_types(tp: object, seen: set[type]) -> None:
    """Every Struct reachable from `tp` through its fields (lists, tables, Annotated)."""
    for arg in typing.get_args(tp):
        _section_types(arg, seen)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct) and tp not in seen:
        seen.add(tp)
        for field_tp in typing.get_type_hints(tp, include_extras=True).values():
            _section_types(field_tp, seen)


def test_every_section_and_value_struct_is_importable_from_relay_config() -> None:
    structs: set[type] = set()
    _section_types(Config, structs)
    assert len(structs) > 20
    for tp in structs:
        assert getattr(relay.config, tp.__name__, None) is tp, (
            f"{tp.__name__} ({tp.__module__}) is not re-exported by relay.config")
        assert tp.__name__ in relay.config.__all__


def test_every_exported_name_resolves() -> None:
    for name in relay.config.__all__:
        assert getattr(relay.config, name) is not None, name
