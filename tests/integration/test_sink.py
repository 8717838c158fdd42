"""relay.testing.sink: a real SMTP sink on loopback, driven here by stdlib smtplib."""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme

from relay.testing.sink import Rules, Sink


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink("127.0.0.2") as s:
        yield s


def _send(host: str, port: int, rcpts: list[str], body: bytes = b"Subject: t\r\n\r\nhi\r\n",
          source: str | None = None) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(host, port, local_hostname="client.test",
                      source_address=(source, 0) if source else None, timeout=5) as c:
        return c.sendmail("from@a.test", rcpts, body)


def test_records_envelope_data_peer_and_ehlo(sink: Sink) -> None:
    assert sink.port > 0
    _send("127.0.0.2", sink.port, ["r1@b.test", "r2@b.test"], source="127.0.0.10")
    (m,) = sink.wait_for(1, 5)
    assert m.mail_from == "from@a.test"
    assert m.rcpt_tos == ["r1@b.test", "r2@b.test"]
    assert m.data == b"Subject: t\r\n\r\nhi\r\n"
    assert m.peer == "127.0.0.10"
    assert m.ehlo == "client.test"
    assert m.tls is False
    assert sink.connections == 1
    assert sink.connection_peers == ["127.0.0.10"]


def test_same_port_on_two_addresses() -> None:
    with Sink("127.0.0.2") as a, Sink("127.0.0.3", a.port) as b:
        assert a.port == b.port
        _send("127.0.0.2", a.port, ["x@b.test"])
        _send("127.0.0.3", b.port, ["y@b.test"])
        assert [m.rcpt_tos for m in a.messages] == [["x@b.test"]]
        assert [m.rcpt_tos for m in b.messages] == [["y@b.test"]]


def test_rules_rcpt_and_data_and_temp_fail() -> None:
    rules = Rules(rcpt={"nouser": "550 5.1.1 no such user"},
                  data_for={"later": "451 4.3.0 later"}, temp_fail_next=1)
    with Sink("127.0.0.2", policy=rules) as s:
        with pytest.raises(smtplib.SMTPDataError) as e1:
            _send("127.0.0.2", s.port, ["ok@b.test"])
        assert e1.value.smtp_code == 451
        refused = _send("127.0.0.2", s.port, ["ok@b.test", "nouser@b.test"])
        assert refused == {"nouser@b.test": (550, b"5.1.1 no such user")}
        with pytest.raises(smtplib.SMTPDataError):
            _send("127.0.0.2", s.port, ["later@b.test"])
        assert [m.rcpt_tos for m in s.messages] == [["ok@b.test"]]


def test_starttls_with_trustme(ca: trustme.CA) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.sink.test", "127.0.0.2").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with Sink("127.0.0.2", tls_context=server_ctx) as s, \
            smtplib.SMTP("127.0.0.2", s.port, timeout=5) as c:
        c.ehlo("client.test")
        assert c.has_extn("starttls")
        c.starttls(context=client_ctx)
        c.ehlo("client.test")
        c.sendmail("a@a.test", ["b@b.test"], b"x\r\n")
        assert s.wait_for(1)[0].tls is True


def test_wait_for_times_out(sink: Sink) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        sink.wait_for(1, 0.2)
    assert time.monotonic() - t0 < 2


def test_many_messages_from_threads(sink: Sink) -> None:
    def worker(i: int) -> None:
        with smtplib.SMTP("127.0.0.2", sink.port, timeout=5) as c:
            for j in range(25):
                c.sendmail("a@a.test", [f"r{i}-{j}@b.test"], b"x\r\n")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sink.wait_for(100, 10)) == 100
    assert sink.connections == 4


def test_stop_frees_the_port() -> None:
    s = Sink("127.0.0.2").start()
    port = s.port
    s.stop()
    with Sink("127.0.0.2", port) as again:
        assert again.port == port
