"""How problems name types and values: "expected <the type's description>, got <the value
as written in TOML>", for the schema walk (load.py) and the cross-section checks (checks.py).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

import msgspec

from relay.config.types import DESCRIPTIONS


def _bounds(meta: msgspec.Meta) -> str:
    if meta.ge is not None and meta.le is not None:
        return f"between {meta.ge} and {meta.le}"
    if meta.ge is not None and meta.lt is not None:
        return f"in [{meta.ge}, {meta.lt})"
    parts = [f"{op} {v}" for op, v in ((">=", meta.ge), (">", meta.gt), ("<=", meta.le),
                                        ("<", meta.lt)) if v is not None]
    if meta.min_length is not None:
        parts.append(f"with at least {meta.min_length} item(s)")
    return " and ".join(parts)


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        bounds = [_bounds(m) for m in extras if isinstance(m, msgspec.Meta)]
        return " ".join([describe(base), *[b for b in bounds if b]])
    if origin is Literal:
        return " | ".join(repr(a).replace("'", '"') for a in typing.get_args(tp))
    if origin is list:
        return f"a list (each {describe(typing.get_args(tp)[0])})"
    if origin is dict:
        return f"a table (each value {describe(typing.get_args(tp)[1])})"
    if tp in DESCRIPTIONS:
        return DESCRIPTIONS[tp]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)
