"""A configuration set's tls = "require" means what delivery.tls = "require" means: with
delivery.verify_certificates = true the MX certificate must verify (chain and MX host
name) while the global policy stays opportunistic. A whole in-process RelayApp, real
loopback DNS, real TLS sinks with trustme certificates; the process trusts the test CA
through SSL_CERT_FILE (read by the default trust store), as an operator's would trust a
real one. A certificate for another name, or from an unknown CA, is a 4.7.5 deferral and
never a delivery, even when an unverified pooled connection to that MX is idle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

from relay.app import RelayApp
from relay.config import from_dict
from relay.events.log import read_events
from relay.testing.dnsserver import DnsServer
from relay.testing.process import free_port
from relay.testing.sink import Sink, server_tls
from relay.testing.submission import send_starttls, verified_sender
from relay.testing.wait import wait_for

PASSWORD = "pw-for-app"
ZONE = {
    "good.test": [("MX", "10 mx.good.test")],
    "mx.good.test": [("A", "127.0.0.2")],
    "wrongname.test": [("MX", "10 mx.wrongname.test")],
    "mx.wrongname.test": [("A", "127.0.0.3")],
    "unknownca.test": [("MX", "10 mx.unknownca.test")],
    "mx.unknownca.test": [("A", "127.0.0.4")],
}


async def submit(port: int, rcpt: str, subject: str, config_set: str = "") -> None:
    extra = f"X-SES-CONFIGURATION-SET: {config_set}\r\n" if config_set else ""
    data = f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: {subject}\r\n{extra}\r\nhello\r\n"
    await send_starttls(port, PASSWORD, rcpt, data)


async def test_set_requiring_tls_verifies_certificates_like_the_global_policy(
        tmp_path: Path, ns: DnsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    trusted, stranger = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "ca.pem"
    trusted.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    good = Sink("127.0.0.2", 0, tls_context=server_tls(trusted, "mx.good.test")).start()
    wrong = Sink("127.0.0.3", good.port,
                 tls_context=server_tls(trusted, "mx.elsewhere.test")).start()
    unknown = Sink("127.0.0.4", good.port,
                   tls_context=server_tls(stranger, "mx.unknownca.test")).start()
    smtp_port = free_port()
    verified_sender(tmp_path, PASSWORD)
    cfg = from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
        "listener": [{"address": f"127.0.0.1:{smtp_port}"}],
        "dns": {"nameservers": [f"127.0.0.1:{ns.port}"], "timeout": "1s"},
        "delivery": {"port": good.port, "tls": "opportunistic", "verify_certificates": True,
                     "mta_sts": False, "retry_schedule": ["1h"], "connect_timeout": "3s",
                     "command_timeout": "5s"},
        "configuration_set": [{"name": "secure", "tls": "require"}],
    })
    app = RelayApp(cfg)
    await app.start()

    def of(subject: str, *kinds: str) -> list[dict[str, Any]]:
        return [e for e in read_events(app.events.path)
                if e["eventType"] in kinds
                and e["mail"]["commonHeaders"].get("subject") == subject]

    async def outcome(subject: str) -> dict[str, Any]:
        """The first attempt's event: a Delivery or a DeliveryDelay."""
        (event,) = await wait_for(subject, lambda: of(subject, "Delivery", "DeliveryDelay"))
        return event

    try:
        # Without the set, opportunistic TLS takes the wrong-name certificate (unverified)
        # and the connection is pooled.
        await submit(smtp_port, "user@wrongname.test", "loose")
        await wait_for("the loose delivery", lambda: of("loose", "Delivery"))
        assert wrong.message_count == 1
        assert app.sender.idle_connections("wrongname.test") == 1

        # The set requires TLS: the pooled unverified connection is not reused, and a new
        # one fails verification (certificate for another name): deferred, not sent.
        await submit(smtp_port, "user@wrongname.test", "wrong name", "secure")
        delay = await outcome("wrong name")
        assert delay["eventType"] == "DeliveryDelay", delay
        diag = delay["deliveryDelay"]["delayedRecipients"][0]
        assert diag["status"] == "4.7.5", diag
        assert wrong.message_count == 1

        # A certificate for the right name from a CA nobody trusts: deferred too.
        await submit(smtp_port, "user@unknownca.test", "unknown ca", "secure")
        delay = await outcome("unknown ca")
        assert delay["eventType"] == "DeliveryDelay", delay
        diag = delay["deliveryDelay"]["delayedRecipients"][0]
        assert diag["status"] == "4.7.5", diag
        assert unknown.message_count == 0

        # A certificate that verifies: delivered under the same set.
        await submit(smtp_port, "user@good.test", "verified", "secure")
        assert (await outcome("verified"))["eventType"] == "Delivery"
        assert good.message_count == 1
        assert of("wrong name", "Delivery") == [] and of("unknown ca", "Delivery") == []
    finally:
        await app.stop()
        for sink in (good, wrong, unknown):
            sink.stop()
