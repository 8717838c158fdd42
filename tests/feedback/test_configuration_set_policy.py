"""Configuration sets at submission and delivery, through a whole in-process RelayApp.

Real SMTP on loopback both ways: submission with STARTTLS + AUTH, delivery to a sink
that offers no STARTTLS. Shown here: a set with tls = "require" never delivers in
plain text (451 4.7.5 deferral, even with a plain pooled connection to reuse); a
credential's default set applies when the message names none and the header wins
otherwise; an unknown set in the header is refused with 554 5.3.0 and a Reject event;
an unverified From: is refused with a Reject event too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from relay.app import RelayApp
from relay.config import from_dict
from relay.events.log import read_events
from relay.testing.process import free_port
from relay.testing.sink import Sink
from relay.testing.submission import send_starttls, verified_sender
from relay.testing.wait import wait_for

PASSWORD = "pw-for-app"


async def submit(port: int, subject: str, *, header_set: str = "",
                 header_from: str = "app@example.com") -> str:
    extra = f"X-SES-CONFIGURATION-SET: {header_set}\r\n" if header_set else ""
    data = (f"From: {header_from}\r\nTo: user@plain.test\r\nSubject: {subject}\r\n{extra}"
            "\r\nhello\r\n")
    return await send_starttls(port, PASSWORD, "user@plain.test", data)


async def test_tls_policy_default_set_unknown_set_and_rejects(tmp_path: Path) -> None:
    sink = Sink("127.0.0.2", 0).start()  # no STARTTLS offered
    smtp_port = free_port()
    verified_sender(tmp_path, PASSWORD, configuration_set="secure")
    cfg = from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
        "listener": [{"address": f"127.0.0.1:{smtp_port}"}],
        "delivery": {"routes": {"plain.test": f"127.0.0.2:{sink.port}"},
                     "retry_schedule": ["1h"]},
        "configuration_set": [{"name": "secure", "tls": "require"}, {"name": "loose"}],
    })
    app = RelayApp(cfg)
    await app.start()
    events = lambda: read_events(app.events.path)  # noqa: E731

    def of(subject: str) -> list[dict[str, Any]]:
        return [e for e in events() if e["mail"]["commonHeaders"].get("subject") == subject]

    try:
        # The header names a set without a TLS policy: delivered in plain text (and the
        # connection is pooled, so the next message could reuse it).
        await submit(smtp_port, "loose", header_set="loose")
        await wait_for("delivery", lambda: [e for e in of("loose")
                                            if e["eventType"] == "Delivery"])
        assert sink.message_count == 1
        assert of("loose")[0]["mail"]["tags"]["ses:configuration-set"] == ["loose"]
        assert app.sender.idle_connections() == 1

        # No header: the credential's default set "secure" (tls = require) applies.
        await submit(smtp_port, "secure")
        delay = await wait_for("a deferral", lambda: [e for e in of("secure")
                                                      if e["eventType"] == "DeliveryDelay"])
        diag = delay[0]["deliveryDelay"]["delayedRecipients"][0]
        assert diag["status"] == "4.7.5", diag
        assert "TLS" in diag["diagnosticCode"]
        assert of("secure")[0]["mail"]["tags"]["ses:configuration-set"] == ["secure"]
        assert sink.message_count == 1  # never sent in plain text
        (queued,) = [r for m, rs in app.store.messages() for r in rs if not r.state.final]
        assert queued.state.value == "deferred" and "4.7.5" in queued.last_response

        # An unknown set is refused after DATA, SES-style, with a Reject event.
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await submit(smtp_port, "unknown set", header_set="no-such-set")
        assert refused.value.code == 554
        assert "5.3.0" in refused.value.message
        assert "Configuration set no-such-set does not exist" in refused.value.message
        (reject,) = of("unknown set")
        assert reject["eventType"] == "Reject"
        assert reject["reject"]["reason"] == "Configuration set no-such-set does not exist"
        assert reject["mail"]["destination"] == ["user@plain.test"]

        # An unverified From: (envelope sender verified) is refused with a Reject event.
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await submit(smtp_port, "unverified", header_from="boss@unverified.test")
        assert refused.value.code == 554 and "5.7.1" in refused.value.message
        (reject,) = of("unverified")
        assert reject["eventType"] == "Reject"
        assert "boss@unverified.test" in reject["reject"]["reason"]
        assert reject["mail"]["tags"]["ses:configuration-set"] == ["secure"]
        assert app.store.message_count() == 1  # the deferred one; refusals never queued
    finally:
        await app.stop()
        sink.stop()
