"""CPU seconds spent by a server's whole process tree, from /proc/<pid>/stat.

A server whose processes come and go during a run (Postfix's smtpd, cleanup and smtp
processes exit after max_use connections or max_idle seconds and new ones are forked) is
not measured by summing the live processes before and after: a process that exited
takes its CPU with it. But when a parent reaps a child, the kernel adds the child's
utime + stime (and the child's own reaped children's) to the parent's cutime + cstime.
So the sum over the live processes of the tree of utime + stime + cutime + cstime counts
every tick the tree ever spent exactly once, as long as the roots stay alive: the
difference of two such sums is the CPU spent in between, exited processes included.
(A child that exited but is not yet reaped, a zombie, still shows its own utime and
stime in /proc until it is.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stats() -> dict[int, tuple[int, int]]:
    """pid → (ppid, utime + stime + cutime + cstime in ticks) of every process."""
    out: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command (2nd field) may hold spaces and parentheses: split after the last ")".
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        # fields[0] is the state (3rd field of the line): ppid is the 4th, utime the 14th,
        # stime, cutime, cstime the 15th to 17th.
        out[int(stat.parent.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    return out


def tree_pids(roots: Iterable[int], stats: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """`roots` and all their live descendants."""
    stats = _stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in stats]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return seen


def tree_cpu(roots: Iterable[int]) -> float:
    """CPU seconds (user + system) the trees under `roots` have spent, reaped children
    included (see the module docstring)."""
    stats = _stats()
    return sum(stats[p][1] for p in tree_pids(roots, stats)) / _TICK


def settled_cpu(roots: Iterable[int], quiet: float = 0.3, limit: float = 5.0) -> float:
    """`tree_cpu(roots)` once the tree has gone quiet (at most one tick spent over `quiet`
    seconds, at most `limit` seconds of waiting): the work a delivery leaves behind after
    the message is at the sink (the queue file's removal, the settle) is counted too."""
    roots = list(roots)
    last = tree_cpu(roots)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = tree_cpu(roots)
        if now - last <= 1.0 / _TICK:
            return now
        last = now
    return last
