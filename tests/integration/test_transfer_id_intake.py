"""A message handed over by `relay queue transfer` carries X-Relay-Transfer-Id: an
authenticated submission keeps its value as the tag "relay:transferred-from" (Send event
and record); a client that did not authenticate (a trusted network) cannot forge one. The
field never stays in the stored message either way. A whole in-process RelayApp."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from relay.app import RelayApp
from relay.config import from_dict
from relay.configsets import TRANSFERRED_TAG
from relay.testing.process import free_port
from relay.testing.sink import Sink
from relay.testing.submission import send_starttls, verified_sender
from relay.testing.wait import wait_for

PASSWORD = "pw-for-app"


def _message(subject: str, transfer_id: str) -> str:
    return (f"From: app@example.com\r\nSubject: {subject}\r\n"
            f"X-Relay-Transfer-Id: {transfer_id}\r\nX-SES-CONFIGURATION-SET: held\r\n"
            "\r\nhello\r\n")


async def test_transfer_id_is_read_from_authenticated_sessions_only(tmp_path: Path) -> None:
    sink = Sink("127.0.0.2", 0).start()  # no STARTTLS: the "held" set keeps them queued
    auth_port, trusted_port = free_port(), free_port()
    verified_sender(tmp_path, PASSWORD)
    app = RelayApp(from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
        "listener": [{"address": f"127.0.0.1:{auth_port}"},
                     {"address": f"127.0.0.1:{trusted_port}", "tls": "none", "auth": "none",
                      "trusted_networks": ["127.0.0.0/8"]}],
        "delivery": {"routes": {"plain.test": f"127.0.0.2:{sink.port}"},
                     "retry_schedule": ["1h"]},
        "configuration_set": [{"name": "held", "tls": "require"}],
    }))
    await app.start()
    try:
        await send_starttls(auth_port, PASSWORD, "user@plain.test",
                            _message("handed over", "Q0001@node-a.test"))

        def forged() -> None:
            with smtplib.SMTP("127.0.0.1", trusted_port, timeout=10) as s:
                s.sendmail("app@example.com", ["user@plain.test"],
                           _message("forged", "Q0002@node-x.test").encode())

        await asyncio.to_thread(forged)
        messages = await wait_for("both queued", lambda: (
            found if len(found := list(app.store.messages())) == 2 else None))
        by_subject = {m.headers["Subject"]: m for m, _ in messages}
        assert by_subject["handed over"].tags.get(TRANSFERRED_TAG) == ["Q0001@node-a.test"]
        assert TRANSFERRED_TAG not in by_subject["forged"].tags
        for m in by_subject.values():
            body = app.store.body(m.id)
            assert body is not None and b"X-Relay-Transfer-Id" not in body
    finally:
        await app.stop()
        sink.stop()
    sends = [line for line in (tmp_path / "events.jsonl").read_text().splitlines()
             if '"Send"' in line]
    assert sum(TRANSFERRED_TAG in line for line in sends) == 1
