"""Guards for tests that need a program from outside Python (swaks, postfix, openssl, ...).

`require_program("swaks")` skips the calling test with a clear reason when the
program is not on PATH. Under CI (`RELAY_REQUIRE_ALL=1`, set by .ci/run) the
same absence is a failure instead, so a missing apt package can never hide
behind a green run of skips.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_ALL_ENV = "RELAY_REQUIRE_ALL"


def require_all() -> bool:
    """True when missing outside programs must fail tests rather than skip them."""
    return os.environ.get(REQUIRE_ALL_ENV, "") not in ("", "0")


def require_program(name: str) -> None:
    """Skip (or, with RELAY_REQUIRE_ALL=1, fail) the current test when `name` is not on PATH."""
    if shutil.which(name) is not None:
        return
    reason = (f"{name!r} is not installed (not found on PATH); "
              f"add its Debian package to PACKAGES in .ci/run")
    if require_all():
        pytest.fail(f"{reason} [{REQUIRE_ALL_ENV}=1 turns this skip into a failure]",
                    pytrace=False)
    pytest.skip(reason)


def require_path(path: str | os.PathLike[str], how: str) -> None:
    """Skip (or, with RELAY_REQUIRE_ALL=1, fail) when `path` does not exist; `how` says how
    to make it (e.g. "npm ci --prefix tests/node")."""
    if os.path.exists(path):
        return
    reason = f"{os.fspath(path)!r} is missing; run `{how}` (as .ci/run does)"
    if require_all():
        pytest.fail(f"{reason} [{REQUIRE_ALL_ENV}=1 turns this skip into a failure]",
                    pytrace=False)
    pytest.skip(reason)
