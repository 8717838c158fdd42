"""BDAT/CHUNKING (RFC 3030) on delivery against real peers: the private Postfix's smtpd
(which offers CHUNKING and PIPELINING, and logs the commands it got) and the bench sink.
MAIL, RCPT, "BDAT <n> LAST" and the message go in one write; what arrives is the message
as relay had it."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import Delivery
from relay.delivery.client import Sender
from relay.dns.route import Target
from relay.testing.postfix import instance_dir, postfix, write_config
from relay.testing.process import free_port
from relay.testing.require import require_program
from relay.testing.sink import Sink
from relay.testing.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import sinkserver  # noqa: E402

# A leading dot on a line, a bare LF and 8-bit text: what BDAT sends without stuffing.
BODY = (b"From: app@example.com\r\nTo: rcpt@ok.test\r\nSubject: chunked\r\n"
        b"Date: Tue, 08 Dec 2026 03:00:00 +0000\r\nMessage-ID: <chunked@example.com>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b".a line with a leading dot\r\nbare lf line\n" + "naïve\r\n".encode() + b"end\r\n")
SENT = BODY.replace(b"line\n", b"line\r\n")


def _maillog(base: Path) -> str:
    path = base / "maillog"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def postfix_dir() -> Iterator[Path]:
    path = instance_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_bdat_to_postfix_arrives_whole(postfix_dir: Path) -> None:
    require_program("postfix")
    base = postfix_dir
    conf = base / "postfix"
    conf.mkdir()
    listen = free_port()
    with Sink("127.0.0.9") as sink:
        # Postfix passes what relay sent on to the sink (DATA there), so the bytes it
        # stored are seen.
        write_config(conf, base, listen, "postfix.test", [
            f"relayhost = [127.0.0.9]:{sink.port}", "smtpd_delay_reject = no",
            "smtp_tls_security_level = none"])
        (base / "queue").mkdir()
        checked = postfix(conf, "check")
        assert checked.returncode == 0, checked.stderr + _maillog(base)
        started = postfix(conf, "start")
        assert started.returncode == 0, started.stderr + _maillog(base)
        sender = Sender(Delivery(port=listen), hostname="relay.test")
        try:
            result = await sender.send("ok.test", [Target("postfix.test", "127.0.0.1", listen,
                                                          0)],
                                       "app@example.com", ["rcpt@ok.test"], BODY)
            await sender.close()
            assert [o.kind for o in result.outcomes] == ["delivered"], result
            got = await asyncio.to_thread(sink.wait_for, 1, 30)
            assert got[0].data.endswith(SENT)  # after Postfix's Received line
            # smtpd's summary of the session: BDAT, not DATA.
            wait_until(lambda: "bdat=1" in _maillog(base), 15, "postfix's session summary")
            summary = re.findall(r"disconnect from .*", _maillog(base))
            assert summary and "bdat=1" in summary[0] and "data=" not in summary[0], summary
        finally:
            postfix(conf, "stop")
            wait_until(lambda: postfix(conf, "status").returncode != 0, 15, "postfix to stop")


async def test_bdat_to_the_bench_sink_in_one_write(tmp_path: Path) -> None:
    """The bench sink with --chunking takes the chunk as sent (stored without change) and
    its reply comes after one write: MAIL, RCPT, BDAT and the message together."""
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "sinkserver.py"),
                             "--host", "127.0.0.10", "--expect", "2", "--timeout", "20",
                             "--grace", "0", "--chunking", "--store", str(store)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(re.findall(r'"port": (\d+)', proc.stdout.readline())[0])
        sender = Sender(Delivery(port=port), hostname="relay.test")
        target = [Target("sink.bench", "127.0.0.10", port, 0)]
        for _ in range(2):  # the second on the pooled connection
            result = await sender.send("ok.test", target, "app@example.com",
                                       ["rcpt@ok.test"], BODY)
            assert [o.kind for o in result.outcomes] == ["delivered"], result
        assert result.reused
        await sender.close()
        assert proc.wait(20) == 0
        assert list(sinkserver.stored_messages(store)) == [SENT, SENT]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
