"""Shared CLI output: aligned tables, `--json`, and a progress bar on stderr.

Every list command prints through `table()` (or `emit()` for the `--json` switch), so
columns line up the same way everywhere; long bulk operations wrap their work in
`progress()`, which draws on stderr only when stderr is a terminal (or when forced with
`--progress`), so pipes and tests see clean output. Must not: touch relay state.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    text = str(value)
    return text if text else "-"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str | tuple[str, str]], *,
          empty: str = "", out: TextIO | None = None) -> None:
    """Print `rows` as aligned columns under upper-case headers.

    A column is a row key, or (key, header). The last column is not padded. `empty` is
    printed instead of a lone header when there are no rows (if given)."""
    out = out or sys.stdout
    keys = [c if isinstance(c, str) else c[0] for c in columns]
    heads = [(c if isinstance(c, str) else c[1]).upper().replace("_", " ") for c in columns]
    if not rows and empty:
        print(empty, file=out)
        return
    cells = [[_cell(r.get(k)) for k in keys] for r in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(heads)]
    for line in [heads, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line[:-1], widths, strict=False))
              + ("  " if len(line) > 1 else "") + line[-1], file=out)


def emit(rows: Sequence[Mapping[str, Any]], columns: Sequence[str | tuple[str, str]], *,
         as_json: bool, empty: str = "") -> None:
    """`--json`: a JSON array of the rows (all their keys); otherwise `table()`."""
    if as_json:
        print(json.dumps(list(rows), default=str))
    else:
        table(rows, columns, empty=empty)


class Progress:
    """A one-line bar on stderr: `label [#####     ] done/total`."""

    def __init__(self, label: str, total: int | None, enabled: bool,
                 out: TextIO | None = None) -> None:
        self.label, self.total, self.enabled, self.done = label, total, enabled, 0
        self.out = out or sys.stderr

    def step(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            self.out.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total}")
        else:
            self.out.write(f"\r{self.label} {self.done}")
        self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


def wants_progress(forced: bool = False) -> bool:
    return forced or sys.stderr.isatty()


def progress(items: Iterable[T], total: int | None, *, label: str = "",
             enabled: bool | None = None) -> Iterator[T]:
    """Yield `items`, drawing a bar on stderr (when stderr is a TTY, or `enabled`)."""
    bar = Progress(label, total, wants_progress() if enabled is None else enabled)
    try:
        for item in items:
            yield item
            bar.step()
    finally:
        bar.close()
