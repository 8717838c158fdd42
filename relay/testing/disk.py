"""A real small disk for tests of a full disk: a tmpfs mounted on a temporary directory
(`mounted_tmpfs`), and `fill` to take its space away and give it back.

Mounting needs root (or CAP_SYS_ADMIN): without it the calling test is skipped with the
reason, or fails under RELAY_REQUIRE_ALL=1 (relay.testing.require), so a CI run can never
hide the disk-full tests behind skips. The mount is always removed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.testing.require import require_all


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount's syntax: "1m", "8m") on `mnt` (created) for the block."""
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root/CAP_SYS_ADMIN): {r.stderr.strip()}"
        if require_all():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the disk up to its last `leave` bytes (0: nothing left, ENOSPC); unlink the
    returned file to give the space back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, os.path.getsize(filler) - leave)
    return filler
