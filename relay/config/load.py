"""TOML -> Config: read the file, walk the raw TOML against the declared Structs and
collect *every* problem (unknown key, wrong type, bad unit, out of range) with its key
path, the value it saw and what it expected, then run the cross-section checks on what
is valid; ConfigError carries them all, so `relay check-config` prints them at once.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import msgspec

from relay.config.checks import check_whole, config_warnings
from relay.config.describe import describe, show
from relay.config.root import Config
from relay.config.types import PARSERS


class ConfigError(Exception):
    """Every problem found in one config file, each naming key path, value and expectation."""

    def __init__(self, problems: list[str], source: str = "",
                 warnings: list[str] | None = None) -> None:
        self.problems = problems
        self.source = source
        self.warnings = warnings or []  # relay.config.config_warnings of what was valid
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


def _within(value: Any, meta: msgspec.Meta) -> bool:
    return not (
        (meta.ge is not None and value < meta.ge) or (meta.gt is not None and value <= meta.gt)
        or (meta.le is not None and value > meta.le) or (meta.lt is not None and value >= meta.lt)
        or (meta.min_length is not None and len(value) < meta.min_length))


def _walk(raw: object, tp: Any, path: str, problems: list[str]) -> Any:
    """Convert raw TOML data to `tp`, appending every problem to `problems`."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        inner: list[str] = []
        value = _walk(raw, base, path, inner)
        if inner:  # a bare number names its bounds too; a container keeps item-level detail
            problems.extend([f"{path}: expected {describe(tp)}, got {show(raw)}"]
                            if base in (int, float) else inner)
            return None
        for meta in extras:
            if isinstance(meta, msgspec.Meta) and not _within(value, meta):
                problems.append(f"{path}: expected {describe(tp)}, got {show(raw)}")
                return None
        return value
    if tp in PARSERS:
        try:
            return PARSERS[tp](raw)
        except ValueError as e:
            problems.append(f"{path}: {e}, got {show(raw)}")
            return None
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if not isinstance(raw, dict):
            problems.append(f"{path}: expected a table, got {show(raw)}")
            return None
        fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
        for key in raw:
            if key not in fields:
                known = ", ".join(sorted(fields))
                problems.append(f"{path}.{key}: unknown key (known keys: {known})".lstrip("."))
        values: dict[str, Any] = {}
        before = len(problems)
        hints = typing.get_type_hints(tp, include_extras=True)
        for name, field in fields.items():
            sub = f"{path}.{name}" if path else name
            if name in raw:
                values[field.name] = _walk(raw[name], hints[field.name], sub, problems)
            elif field.required:
                problems.append(f"{sub}: missing, expected {describe(hints[field.name])}")
        if len(problems) > before:
            return None
        try:
            return tp(**values)
        except (ValueError, TypeError) as e:
            problems.append(f"{path or '(top level)'}: {e}")
            return None
    if origin is list:
        if not isinstance(raw, list):
            problems.append(f"{path}: expected {describe(tp)}, got {show(raw)}")
            return None
        (item_tp,) = typing.get_args(tp)
        return [_walk(item, item_tp, f"{path}[{i}]", problems) for i, item in enumerate(raw)]
    if origin is dict:
        if not isinstance(raw, dict):
            problems.append(f"{path}: expected {describe(tp)}, got {show(raw)}")
            return None
        _, val_tp = typing.get_args(tp)
        return {k: _walk(v, val_tp, f"{path}.{k}", problems) for k, v in raw.items()}
    if origin in (typing.Union, types.UnionType):
        try:
            return msgspec.convert(raw, tp, strict=True)
        except msgspec.ValidationError:
            problems.append(f"{path}: expected {describe(tp)}, got {show(raw)}")
            return None
    try:
        if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        return msgspec.convert(raw, tp, strict=True)
    except msgspec.ValidationError:
        problems.append(f"{path}: expected {describe(tp)}, got {show(raw)}")
        return None


_SECTION = re.compile(r"[A-Za-z_]+")


def _partial(raw: dict[str, Any], problems: list[str]) -> tuple[Config | None, set[str]]:
    """The config made of the sections that passed their own validation (defaults for the
    others) and the names of the failed ones, so the cross-section rules and warnings
    still look at what is good: one run reports every problem."""
    failed = {m.group(0) for p in problems if (m := _SECTION.match(p))}
    known = set(Config.__struct_fields__)
    good = {k: v for k, v in raw.items() if k in known and k not in failed}
    scratch: list[str] = []
    partial = _walk(good, Config, "", scratch)
    return (partial if isinstance(partial, Config) and not scratch else None), failed


def from_dict(raw: dict[str, Any], source: str = "") -> Config:
    problems: list[str] = []
    cfg = _walk(raw, Config, "", problems)
    if isinstance(cfg, Config):
        problems.extend(check_whole(cfg))
        if problems:
            raise ConfigError(problems, source, config_warnings(cfg))
        return cfg
    warnings: list[str] = []
    if isinstance(raw, dict):
        partial, failed = _partial(raw, problems)
        if partial is not None:
            problems.extend(check_whole(partial, skip=failed))
            if "server" not in failed:
                warnings = config_warnings(partial)
    raise ConfigError(problems, source, warnings)


def loads(text: str, source: str = "") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], source) from None
    return from_dict(raw, source)


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"cannot read config file: {e.strerror}"], str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError(["config file is not UTF-8 text"], str(p)) from None
    return loads(text, str(p))
