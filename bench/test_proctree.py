"""bench/proctree.py: a server's CPU includes the processes that exited during the run.

Postfix forks an smtpd per connection batch and lets it exit; its CPU must still be
counted (through the parent's cutime/cstime once reaped), or the comparison would
undercount Postfix. No time is asserted: the child burns a fixed amount of its own CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

from proctree import tree_cpu, tree_pids

BURN = 0.3   # CPU seconds the short-lived child spends before it exits

_PARENT = f"""
import os, sys, time
print("ready", flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    while time.process_time() < {BURN}:
        pass
    os._exit(0)
os.waitpid(pid, 0)
print("done", flush=True)
sys.stdin.readline()
"""


def test_the_cpu_of_a_child_that_exited_during_the_run_is_counted() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdin is not None and parent.stdout is not None
    try:
        assert parent.stdout.readline().strip() == "ready"
        before = tree_cpu([parent.pid])
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "done"
        # The child is gone: only its parent is left in the tree.
        assert tree_pids([parent.pid]) == {parent.pid}
        spent = tree_cpu([parent.pid]) - before
        assert spent >= BURN - 0.02, spent   # one clock tick of rounding either way
    finally:
        parent.stdin.close()
        parent.wait(10)


def test_a_tree_is_its_root_and_every_descendant() -> None:
    # A child that starts a grandchild: all three are in the tree, nothing else is.
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen(['sleep', '30']);"
         " print(p.pid, flush=True); sys.stdin.readline(); p.kill(); p.wait()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        grandchild = int(child.stdout.readline())
        assert tree_pids([os.getpid()]) >= {os.getpid(), child.pid, grandchild}
        assert tree_pids([child.pid]) == {child.pid, grandchild}
    finally:
        child.stdin.close()
        child.wait(10)
