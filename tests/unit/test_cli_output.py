"""relay/cli/output.py: aligned tables, --json rows, and the stderr progress bar."""

from __future__ import annotations

import io
import json

import pytest

from relay.cli.output import Progress, emit, progress, table


def test_table_aligns_columns_under_headers() -> None:
    out = io.StringIO()
    table([{"name": "app", "pool": "", "allow": ["example.com", "x.org"]},
           {"name": "a-much-longer-name", "pool": "warm", "allow": []}],
          ["name", ("pool", "default pool"), "allow"], out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split("  ")[0].strip() == "NAME"
    assert "DEFAULT POOL" in lines[0]
    col = lines[0].index("DEFAULT POOL")
    assert lines[1][col:].startswith("-") and lines[2][col:].startswith("warm")
    assert lines[1].endswith("example.com, x.org") and lines[2].endswith("-")


def test_table_empty_message() -> None:
    out = io.StringIO()
    table([], ["name"], empty="no users", out=out)
    assert out.getvalue() == "no users\n"


def test_emit_json(capsys: pytest.CaptureFixture[str]) -> None:
    emit([{"name": "app", "n": 1}], ["name"], as_json=True)
    assert json.loads(capsys.readouterr().out) == [{"name": "app", "n": 1}]


def test_progress_draws_only_when_enabled(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(3), 3, label="retry", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    assert list(progress(range(4), 4, label="retry", enabled=True)) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert "retry [" in err and "4/4" in err and err.endswith("\n")
    bar = Progress("import", None, True, out=io.StringIO())
    bar.step(5)
    assert "import 5" in bar.out.getvalue()  # type: ignore[attr-defined]
