"""JsonFile[T]: typed decode, atomic 0600 writes, an advisory lock, reload when the file changes."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import msgspec
import pytest

from relay.clock import FakeClock
from relay.jsonfile import JsonFile


class Thing(msgspec.Struct, frozen=True):
    name: str
    size: int = 0


class Things(msgspec.Struct):
    version: int = 1
    things: dict[str, Thing] = {}


class ThingError(Exception):
    pass


def things(path: Path, clock: FakeClock | None = None, recheck: float = 0.0
           ) -> JsonFile[Things]:
    return JsonFile(path, Things, what="things", error=ThingError, clock=clock or FakeClock(),
                    recheck=recheck)


def test_a_missing_file_reads_as_the_empty_value(tmp_path: Path) -> None:
    f = things(tmp_path / "things.json")
    assert f.read() == Things()
    assert f.current() == Things()


def test_write_is_indented_json_mode_0600_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "things.json"
    f = things(path)
    old = os.umask(0)
    try:
        f.write(Things(things={"a": Thing("a", 3)}))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == (b'{\n  "version": 1,\n  "things": {\n    "a": {\n'
                                 b'      "name": "a",\n      "size": 3\n    }\n  }\n}\n')
    assert sorted(p.name for p in path.parent.iterdir()) == ["things.json"]
    assert f.read() == Things(things={"a": Thing("a", 3)})


def test_a_file_of_the_wrong_shape_raises_the_stores_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "things.json"
    path.write_text('{"things": {"a": {"size": 1}}}')
    with pytest.raises(ThingError) as e:
        things(path).read()
    assert str(e.value) == (f"{path} is not a valid things file: Object missing required "
                            "field `name` - at `$.things[...]`")


def test_an_edit_by_another_process_is_read_at_the_next_look(tmp_path: Path) -> None:
    path = tmp_path / "things.json"
    server, cli = things(path), things(path)
    assert server.current().things == {}
    cli.write(Things(things={"a": Thing("a")}))
    assert list(server.current().things) == ["a"]
    unchanged = server.current()
    assert server.current() is unchanged  # same stat: not read again


def test_a_bad_edit_keeps_the_last_good_content_until_it_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "things.json"
    f = things(path)
    f.write(Things(things={"a": Thing("a")}))
    good = f.current()
    path.write_text("{not json")
    with pytest.raises(ThingError):
        f.current()
    assert f.value is good
    with pytest.raises(ThingError):  # looked at again, not taken as seen
        f.current()
    things(path).write(Things(things={"b": Thing("b")}))
    assert list(f.current().things) == ["b"]


def test_recheck_spaces_the_looks_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "things.json"
    clock = FakeClock()
    f = things(path, clock, recheck=0.5)
    assert f.current().things == {}
    things(path).write(Things(things={"a": Thing("a")}))
    assert f.current().things == {}          # within recheck: the last look stands
    assert list(f.current(force=True).things) == ["a"]
    things(path).write(Things())
    clock.advance(0.5)
    assert f.current().things == {}          # recheck passed: looked again


def test_locked_holds_the_lock_file_every_editor_takes(tmp_path: Path) -> None:
    path = tmp_path / "things.json"
    f = things(path)
    with f.locked():
        fd = os.open(tmp_path / "things.json.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert stat.S_IMODE((tmp_path / "things.json.lock").stat().st_mode) == 0o600
    with f.locked():  # released: taken again
        pass
