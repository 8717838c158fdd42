"""Would a separate LMDB environment for the message history lower relay's RSS?

A process drains a queue environment (each "delivery" reads its message and deletes its
message and body records, as settling a delivered message does) and writes each
delivery's history (a record and two timeline entries of the sizes the compact form
stores) either into the same environment ("one") or into an environment of its own
("two"), 40 deliveries per write transaction. Measured: the process's file-backed RSS
(RssFile: the LMDB pages it has touched through its maps) before and after the drain,
and the data files' sizes. Both maps count in VmRSS; what differs is whether the
history's new pages can reuse the pages the deliveries free (already mapped) or grow a
file of their own. Runs in a temp dir under /tmp, bounded by --deliveries.

    .venv/bin/python bench/history_envsplit.py --queued 300000 --deliveries 100000
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import lmdb

RECORD, ATTEMPT, EVENT = 200, 110, 110       # bytes per value (the compact form's sizes)
MESSAGE, BODY = 150, 300
BATCH = 40


def _rss_file_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "RssFile":
            return int(value.split()[0]) / 1024
    return 0.0


def _open(path: Path) -> Any:
    return lmdb.open(str(path), map_size=8 << 30, max_dbs=8, sync=False, metasync=False,
                     writemap=False, readahead=False)


def child(mode: str, work: Path, queued: int, deliveries: int) -> None:
    """One measurement in a fresh process: build, reopen (nothing mapped), drain."""
    rnd = random.Random(1)
    env = _open(work / "queue")
    msgs, bodies = env.open_db(b"messages"), env.open_db(b"bodies")
    with env.begin(write=True) as txn:
        for i in range(queued):
            key = f"{i:020x}".encode()
            txn.put(key, rnd.randbytes(MESSAGE), db=msgs)
            txn.put(key, rnd.randbytes(BODY), db=bodies)
    env.close()
    qenv = _open(work / "queue")
    msgs, bodies = qenv.open_db(b"messages"), qenv.open_db(b"bodies")
    henv = qenv if mode == "one" else _open(work / "history")
    hist, tl = henv.open_db(b"history"), henv.open_db(b"history_tl")
    before = _rss_file_mib()
    for first in range(0, deliveries, BATCH):
        keys = [f"{i:020x}".encode() for i in range(first, min(deliveries, first + BATCH))]
        with qenv.begin(write=True) as txn:
            for k in keys:
                txn.get(k, db=msgs)
                txn.delete(k, db=msgs)
                txn.delete(k, db=bodies)
            if mode == "one":
                _history(txn, hist, tl, keys, rnd)
        if mode != "one":
            with henv.begin(write=True) as txn:
                _history(txn, hist, tl, keys, rnd)
    after = _rss_file_mib()
    files = {p.parent.name: round(p.stat().st_size / 2**20, 1)
             for p in sorted(work.glob("*/data.mdb"))}
    print(f"{mode}: RssFile {before:.1f} -> {after:.1f} MiB "
          f"(+{(after - before) * 1024 / deliveries:.2f} KiB a delivery); data files {files}")


def _history(txn: Any, hist: Any, tl: Any, keys: list[bytes], rnd: random.Random) -> None:
    for k in keys:
        txn.put(k, rnd.randbytes(RECORD), db=hist)
        txn.put(k + b"\x00" * 12, rnd.randbytes(ATTEMPT), db=tl)
        txn.put(k + b"\x01" * 12, rnd.randbytes(EVENT), db=tl)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queued", type=int, default=300_000)
    p.add_argument("--deliveries", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("_child", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        mode, work = a._child
        child(mode, Path(work), a.queued, min(a.deliveries, a.queued))
        return 0
    for _ in range(a.rounds):
        for mode in ("one", "two"):
            work = Path(tempfile.mkdtemp(prefix="relay-bench-envsplit-", dir="/tmp"))
            try:
                for sub in ("queue", "history"):
                    os.makedirs(work / sub)
                subprocess.run([sys.executable, __file__, "--queued", str(a.queued),
                                "--deliveries", str(a.deliveries), mode, str(work)],
                               check=True, timeout=600)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
