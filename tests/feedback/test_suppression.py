"""Suppression policy (pure) and `relay suppression` on a real spool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import ConfigurationSet, Suppression
from relay.configsets import requested_set, strip_headers
from relay.suppression.policy import FailureClass, Reason, classify_failure, reasons_for


@pytest.mark.parametrize(("response", "klass"), [
    ("550 5.1.1 <x@gmail.com>: user unknown", FailureClass.RECIPIENT),
    ("556 5.1.10 Recipient address has null MX (x.test)", FailureClass.RECIPIENT),
    ("550 5.1.2 Recipient domain x.test does not exist", FailureClass.RECIPIENT),
    ("550 5.5.0 Requested action not taken: mailbox unavailable", FailureClass.RECIPIENT),
    ("550-5.7.1 ... very low reputation of the sending IP address", FailureClass.REPUTATION),
    ("554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org",
     FailureClass.REPUTATION),
    ("550 5.7.26 Unauthenticated email is not accepted (DMARC policy)",
     FailureClass.REPUTATION),
    ("554 Your IP is listed on a blocklist", FailureClass.REPUTATION),
    ("552 5.2.2 Mailbox full", FailureClass.OTHER),
    ("552 5.3.4 Message too big", FailureClass.OTHER),
])
def test_classify_before_suppressing(response: str, klass: FailureClass) -> None:
    assert classify_failure(response) is klass


def test_configuration_set_overrides_reasons() -> None:
    account = Suppression()
    assert reasons_for(account, None) == {Reason.BOUNCE, Reason.COMPLAINT}
    only_bounce = ConfigurationSet(name="tx", suppression_reasons=["BOUNCE"])
    assert reasons_for(account, only_bounce) == {Reason.BOUNCE}
    assert reasons_for(Suppression(enabled=False), None) == frozenset()


def test_configuration_set_and_tag_headers_are_stripped() -> None:
    body = (b"Received: x\r\nX-SES-CONFIGURATION-SET: tx\r\nSubject: hi\r\n"
            b"X-SES-MESSAGE-TAGS: a=1,\r\n b=2\r\nX-Relay-Configuration-Set: tx\r\n\r\n"
            b"X-SES-CONFIGURATION-SET: in the body stays\r\n")
    assert requested_set(body) == "tx"
    assert strip_headers(body) == (b"Received: x\r\nSubject: hi\r\n\r\n"
                                   b"X-SES-CONFIGURATION-SET: in the body stays\r\n")


def _relay(cfg: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "--config", str(cfg), *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_cli_add_list_remove_import_export(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path}"\n')
    assert _relay(cfg, "suppression", "add", "A@Example.com", "--reason",
                  "complaint").returncode == 0
    listed = _relay(cfg, "suppression", "list", "--json")
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["address"], row["reason"]) == ("a@example.com", "COMPLAINT")
    rows = "address,reason\n" + "".join(f"user{i}@example.org,BOUNCE\n" for i in range(3000))
    src = tmp_path / "in.csv"
    src.write_text(rows + "not-an-address,BOUNCE\n")
    imp = _relay(cfg, "suppression", "import", str(src), "--progress", "--json")
    assert imp.returncode == 1  # one bad row, reported
    assert json.loads(imp.stdout.strip().splitlines()[-1])["new"] == 3000
    assert "3000/3000" in imp.stderr and "not an address" in imp.stderr
    out = tmp_path / "out.csv"
    assert _relay(cfg, "suppression", "export", str(out)).returncode == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "address,reason,created_at,message_id" and len(lines) == 3002
    assert _relay(cfg, "suppression", "remove", "a@example.com").returncode == 0
    assert _relay(cfg, "suppression", "remove", "a@example.com").returncode == 1
    assert _relay(cfg, "suppression", "add", "bogus").returncode == 1
