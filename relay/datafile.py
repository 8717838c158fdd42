"""PURE: a data file shipped with relay (relay/data/*.toml) read into msgspec records, with
errors that name the key, the value and what was expected, as the config's do.

msgspec says "<problem> - at `$.provider[0].max_connections`"; `explain` turns that into
"provider[0].max_connections: expected `int` >= 0, got -1", and an unknown key into its
name with the keys its section knows.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from typing import TypeVar

import msgspec

T = TypeVar("T")


def load(text: str, source: str, into: type[T], sections: Mapping[str, type[msgspec.Struct]],
         error: Callable[[str], Exception], problems: Mapping[str, str] | None = None) -> T:
    """`text` (TOML) as `into`. `sections`: the record type of each named section (a
    table or array of tables; the file's own type for the top level, ""). `problems`:
    msgspec messages (by their start) said in the file's own words. Raises `error` with
    "<source>: <key>: <what was expected>, got <value>"."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{source}: not valid TOML: {e}") from None
    try:
        return msgspec.convert(raw, into)
    except msgspec.ValidationError as e:
        raise error(f"{source}: {explain(str(e), raw, sections, problems or {})}") from None


def explain(message: str, raw: object, sections: Mapping[str, type[msgspec.Struct]],
            problems: Mapping[str, str]) -> str:
    """msgspec's validation `message` as the file says it (see the module doc)."""
    problem, _, where = message.partition(" - at `$")
    key = where.rstrip("`").lstrip(".")
    path = re.findall(r"[^.\[\]]+|\[\d+\]", key)
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", problem)
    if unknown:
        section = next((p for p in reversed(path) if not p.startswith("[")), "")
        struct = sections.get(section, sections[""])
        known = ", ".join(sorted(f.encode_name for f in msgspec.structs.fields(struct)))
        return f"{key + '.' if key else ''}{unknown[1]}: unknown key (known keys: {known})"
    value: object = raw
    for part in path:
        if part.startswith("[") and isinstance(value, list):
            value = value[int(part[1:-1])]
        elif isinstance(value, dict):
            value = value.get(part)
    if ", got `" in problem:  # msgspec named the type it got: the value says more
        problem = problem.partition(", got `")[0]
    for start, said in problems.items():
        if problem.startswith(start):
            problem = said
    got = f", got {value!r}" if key and not isinstance(value, dict | list) else ""
    return f"{key or '(top level)'}: {problem[:1].lower()}{problem[1:]}{got}"
