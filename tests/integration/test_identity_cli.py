"""`relay dkim ...`, `relay identity ...` and `relay user add --allow` as real processes,
with `identity verify` querying a real DNS server on loopback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    return dns_server({})


@pytest.fixture
def config(tmp_path: Path, dns_server: DnsServer) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\nhostname = "relay.test"\n'
        f'[dns]\nnameservers = ["{dns_server.nameserver}"]\ntimeout = "2s"\n'
        '[[identity]]\ndomain = "example.com"\nmail_from = "bounce.example.com"\n')
    return path


def relay(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", *args[:2], "--config", str(config),
                           *args[2:]], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "RELAY_CONFIG": ""})


def test_keygen_dns_identity_verify(config: Path, tmp_path: Path,
                                    dns_server: DnsServer) -> None:
    r = relay(config, "dkim", "keygen", "example.com", "--selector", "s1")
    assert r.returncode == 0, r.stderr
    assert "s1-rsa._domainkey.example.com. IN TXT" in r.stdout
    keydir = tmp_path / "state" / "dkim" / "example.com"
    for f in keydir.iterdir():
        if f.suffix in (".pem", ".ed25519"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    r = relay(config, "dkim", "keygen", "example.com")
    assert r.returncode == 1 and "dkim rotate" in r.stderr and r.stderr.count("\n") == 1

    r = relay(config, "dkim", "dns", "example.com", "--json")
    records = json.loads(r.stdout)
    assert {x["algorithm"] for x in records} == {"rsa", "ed25519"}
    rsa = next(x for x in records if x["algorithm"] == "rsa")
    assert len(rsa["strings"]) == 2 and all(len(s) <= 255 for s in rsa["strings"])

    assert relay(config, "identity", "add", "example.com").returncode == 0
    assert relay(config, "identity", "add", "example.com").returncode == 1
    assert relay(config, "identity", "add", "not a domain").returncode == 1
    r = relay(config, "identity", "verify", "example.com")
    assert r.returncode == 1 and "NOT VERIFIED" in r.stdout
    assert "add:      s1-rsa._domainkey.example.com. IN TXT" in r.stdout
    assert "bounce.example.com. IN MX 10 relay.test" in r.stdout

    for x in records:
        dns_server.set(x["name"], "TXT", [x["value"]])
    r = relay(config, "identity", "verify", "example.com", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["verified"] is True
    listed = json.loads(relay(config, "identity", "list", "--json").stdout)
    assert listed == [{"name": "example.com", "kind": "domain", "verified": True,
                       "verified_at": listed[0]["verified_at"],
                       "mail_from": "bounce.example.com", "tenant": "",
                       "on_mx_failure": "use_default"}]

    r = relay(config, "dkim", "rotate", "example.com", "--selector", "s2")
    assert r.returncode == 0 and "s2-ed._domainkey.example.com" in r.stdout


def test_user_add_with_allowed_identities(config: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "relay", "--config", str(config), "user", "add",
                        "app", "--password-stdin", "--allow", "example.com", "--allow",
                        "ops@other.org"], input="pw-long-enough\n", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    users = json.loads((tmp_path / "state" / "users.json").read_text())
    assert users["users"]["app"]["allow"] == ["example.com", "ops@other.org"]
    r = subprocess.run([sys.executable, "-m", "relay", "--config", str(config), "user",
                        "allow", "app", "*@news.example.com"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    users = json.loads((tmp_path / "state" / "users.json").read_text())
    assert users["users"]["app"]["allow"] == ["*@news.example.com"]
