"""Which process runs what of the history with `server.workers = 2` (relay/app.py): every
worker records (its own attempts and events), only worker 0 prunes, as only worker 0
replays the journal: one pruner per spool. Each RelayApp is started and stopped in turn
on one state dir, as the supervisor's workers would run."""

from __future__ import annotations

from pathlib import Path

from relay.app import RelayApp
from relay.config import from_dict


async def test_every_worker_records_only_worker_0_prunes(tmp_path: Path) -> None:
    cfg = from_dict({"server": {"hostname": "relay.test", "state_dir": str(tmp_path),
                                "workers": 2}})
    seen = {}
    for index in (1, 0):
        app = RelayApp(cfg, worker=(index, 2))
        await app.start()
        try:
            seen[index] = (app.history_recorder is not None, app.history_pruner is not None)
            assert app.history_recorder is app.parts.recorder
        finally:
            await app.stop()
    assert seen == {0: (True, True), 1: (True, False)}


async def test_history_off_runs_neither(tmp_path: Path) -> None:
    app = RelayApp(from_dict({"server": {"hostname": "relay.test",
                                         "state_dir": str(tmp_path)},
                              "history": {"enabled": False}}))
    await app.start()
    try:
        assert (app.history_recorder, app.history_pruner) == (None, None)
    finally:
        await app.stop()
