"""The header fields a queued message keeps for events (`mail.headers`, cut at 10 KB with
`headersTruncated`) are those of the message as stored, through a whole in-process
RelayApp: submission over STARTTLS + AUTH, the configuration-set and tag fields removed
before storing, Message-ID and Date added, "From :" written "From:", a stray line ending
the header section. The messages are held (a set with tls = "require", a sink without
STARTTLS), so their stored bodies can be read back."""

from __future__ import annotations

from pathlib import Path

from relay.app import RelayApp
from relay.config import from_dict
from relay.events.headers import header_fields
from relay.testing.process import free_port
from relay.testing.sink import Sink
from relay.testing.submission import send_starttls, verified_sender
from relay.testing.wait import wait_for

PASSWORD = "pw-for-app"
HELD = "X-SES-CONFIGURATION-SET: held\r\n"
MESSAGES = [
    f"From: app@example.com\r\nTo: user@plain.test\r\nSubject: usual\r\n{HELD}"
    "X-SES-MESSAGE-TAGS: campaign=spring, tier=gold\r\nX-Folded: first\r\n\tsecond\r\n"
    "\r\nhello\r\n",
    f"From : app@example.com\r\nSubject: obsolete name and a stray line\r\n{HELD}"
    "From nobody Mon Dec  7 10:00:00 2026\r\nX-After: the stray line\r\n\r\nhello\r\n",
    f"From: app@example.com\r\nSubject: over 10 KB\r\n{HELD}"
    + "".join(f"X-Filler-{i:03d}: {'y' * 200}\r\n" for i in range(60)) + "\r\nhello\r\n",
    f"From: app@example.com\r\nSubject: headers only\r\n{HELD}"
    "X-SES-MESSAGE-TAGS: a=1\r\n",
]


async def test_the_kept_header_fields_are_those_of_the_stored_message(tmp_path: Path) -> None:
    sink = Sink("127.0.0.2", 0).start()  # no STARTTLS offered: the "held" set defers
    smtp_port = free_port()
    verified_sender(tmp_path, PASSWORD)
    app = RelayApp(from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
        "listener": [{"address": f"127.0.0.1:{smtp_port}"}],
        "delivery": {"routes": {"plain.test": f"127.0.0.2:{sink.port}"},
                     "retry_schedule": ["1h"]},
        "configuration_set": [{"name": "held", "tls": "require"}],
    }))
    await app.start()
    try:
        for data in MESSAGES:
            await send_starttls(smtp_port, PASSWORD, "user@plain.test", data)

        def deferred() -> list[str]:
            return [m.id for m, rs in app.store.messages()
                    if rs and all(r.state.value == "deferred" for r in rs)]

        ids = await wait_for("every message held", lambda: len(deferred()) == 4 and deferred())
        truncated = []
        for mid in ids:
            record, body = app.store.message(mid), app.store.body(mid)
            assert record is not None and body is not None
            assert b"X-SES-CONFIGURATION-SET" not in body.partition(b"\r\n\r\n")[0]
            assert (record.header_fields, record.headers_truncated) == header_fields(body)
            names = [name for name, _ in record.header_fields]
            assert names[0] == "Received" and "X-SES-MESSAGE-TAGS" not in names
            truncated.append(record.headers_truncated)
        assert sorted(truncated) == [False, False, False, True]
        assert sink.message_count == 0
    finally:
        await app.stop()
        sink.stop()
