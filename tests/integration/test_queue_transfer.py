"""`relay queue transfer` against a real SMTP peer (a loopback sink): a message is removed
from the spool only after the peer's 250; a refused one stays queued as it was, named on
stderr; an unreachable peer changes nothing. The peer sees the queue id in
X-Relay-Transfer-Id. Also the spool ops: a message with a delivery in flight is skipped.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from transferkit import queue, states

from relay.clock import SystemClock
from relay.queue.records import State
from relay.queue.store import QueueStore
from relay.queue.transfer import Claim, claim_op, give_back_op
from relay.testing.process import free_port, relay_command, run_cli, write_config
from relay.testing.sink import Sink

SPRING = {"campaign": ["spring"]}


def _refuse_nobody(stage: str, arg: str, envelope: Any) -> str | None:
    if stage == "rcpt" and "nobody@" in arg.lower():
        return "550 5.1.1 no such user"
    return None


def _config(tmp: Path) -> Path:
    return write_config(tmp / "relay.toml", {
        "server": {"hostname": "node-a.test", "state_dir": str(tmp / "state")},
        "listener": [{"address": f"127.0.0.1:{free_port()}", "tls": "starttls"}]})


def test_transfer_removes_only_what_the_peer_accepted(tmp_path: Path) -> None:
    config = _config(tmp_path)
    ids = queue(tmp_path / "state",
                [["a@x.test"], ["nobody@x.test"], ["b@x.test", "c@x.test"]], SPRING)
    with Sink("127.0.0.2", 0, policy=_refuse_nobody) as peer:
        done = run_cli("queue", "transfer", "--to", f"127.0.0.2:{peer.port}", "--tls", "none",
                       config=config)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "2 transferred, 0 already at the peer (duplicates), 1 failed" in done.stdout
        assert f"{ids[1]}: not transferred, stays queued: RCPT TO:<nobody@x.test> answered " \
               "550" in done.stderr
        got = peer.messages
    assert [m.rcpt_tos for m in got] == [["a@x.test"], ["b@x.test", "c@x.test"]]
    for msg, mid in zip(got, (ids[0], ids[2]), strict=True):
        text = msg.data.decode()
        assert f"X-Relay-Transfer-Id: {mid}@node-a.test\r\n" in text
        assert "X-SES-MESSAGE-TAGS: campaign=spring\r\n" in text
    # The refused message is still queued, its recipient back to "queued".
    assert states(tmp_path / "state") == {ids[1]: [State.QUEUED]}


def test_unreachable_peer_changes_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    ids = queue(tmp_path / "state", [["a@x.test"], ["b@x.test"]], SPRING)
    done = run_cli("queue", "transfer", "--to", f"127.0.0.1:{free_port()}", "--tls", "none",
                   config=config)
    assert done.returncode == 1
    assert "cannot reach the peer" in done.stderr and "Traceback" not in done.stderr
    assert states(tmp_path / "state") == {mid: [State.QUEUED] for mid in ids}


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    config = _config(tmp_path)
    queue(tmp_path / "state", [["a@x.test"]], SPRING)
    for args, expected in (
        (["--to", "nohost"], "--to 'nohost'"),
        (["--to", "127.0.0.1:25", "--user", "u"], "--user needs --password-stdin"),
        (["--to", "127.0.0.1:25", "--limit", "-1"], "--limit -1"),
    ):
        done = run_cli("queue", "transfer", *args, config=config)
        assert done.returncode == 1 and expected in done.stderr, done.stderr


def test_claim_skips_a_message_in_flight_and_gives_back_as_it_was(tmp_path: Path) -> None:
    (mid,) = queue(tmp_path / "state", [["a@x.test", "b@x.test"]], SPRING)
    store = QueueStore(tmp_path / "state" / "queue", SystemClock())
    try:
        now = SystemClock().now()
        claim = store.write_now(claim_op(store.dbs, mid, now))
        assert isinstance(claim, Claim) and claim.addresses == ["a@x.test", "b@x.test"]
        assert [r.state for r in store.recipients(mid)] == [State.INFLIGHT] * 2
        # A second claim (another transfer, or the scheduler's lease) finds it in flight.
        assert store.write_now(claim_op(store.dbs, mid, now)) == "in flight"
        assert store.write_now(give_back_op(store.dbs, claim, now)) == 2
        after = store.recipients(mid)
        assert [r.state for r in after] == [State.QUEUED] * 2
        assert [r.next_attempt_at for r in after] == \
            [r.next_attempt_at for _, r in claim.recipients]
        assert store.write_now(claim_op(store.dbs, "0" * len(mid), now)) == "gone"
    finally:
        store.close_sync()


def test_hundreds_of_messages_each_delivered_once_with_progress(tmp_path: Path) -> None:
    config = _config(tmp_path)
    ids = queue(tmp_path / "state", [[f"r{i}@x.test"] for i in range(300)], SPRING)
    with Sink("127.0.0.2", 0) as peer:
        done = run_cli("queue", "transfer", "--to", f"127.0.0.2:{peer.port}", "--tls", "none",
                       config=config, timeout=120)
        got = peer.messages
    assert done.returncode == 0, done.stderr
    assert "300 transferred, 0 already at the peer (duplicates), 0 failed" in done.stdout
    assert "relay: transfer: 300 of 300 sent" in done.stderr
    seen = [line.split(": ", 1)[1].split("@")[0] for m in got
            for line in m.data.decode().split("\r\n") if line.startswith("X-Relay-Transfer-Id")]
    assert sorted(seen) == sorted(ids)  # every one, none twice
    assert states(tmp_path / "state") == {}


def test_interrupted_transfer_gives_its_chunk_back(tmp_path: Path) -> None:
    """^C in the middle of a chunk: the claimed messages are given back at once (none left
    in flight until the relay's next start), and every message is either still queued or
    at the peer."""
    config = _config(tmp_path)
    ids = queue(tmp_path / "state", [[f"r{i}@x.test"] for i in range(40)], SPRING)
    blocked, release = threading.Event(), threading.Event()

    def hold_the_sixth(stage: str, arg: str, envelope: Any) -> str | None:
        if stage == "rcpt" and arg.strip("<>").lower() == "r5@x.test":
            blocked.set()
            release.wait(30)
        return None

    with Sink("127.0.0.2", 0, policy=hold_the_sixth) as peer:
        proc = subprocess.Popen(relay_command(
            "queue", "transfer", "--to", f"127.0.0.2:{peer.port}", "--tls", "none",
            "--connections", "1", config=config), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            assert blocked.wait(30), "the transfer never reached the sixth message"
            proc.send_signal(signal.SIGINT)
        finally:
            release.set()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        delivered = {line.split(": ", 1)[1].split("@")[0] for m in peer.messages
                     for line in m.data.decode().split("\r\n")
                     if line.startswith("X-Relay-Transfer-Id")}
    left = states(tmp_path / "state")
    assert all(s == [State.QUEUED] for s in left.values()), left
    assert set(ids) == set(left) | delivered  # nothing lost
    assert len(left) >= 34  # the chunk in hand is back in the queue
