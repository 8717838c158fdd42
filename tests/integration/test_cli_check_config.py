"""`relay check-config FILE` as a user runs it: a real subprocess, exit codes, every problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def check(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RELAY_CONFIG"}
    return subprocess.run([sys.executable, "-m", "relay", "check-config", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd or ROOT, env=env)


def test_valid_file_ok_with_summary(tmp_path: Path) -> None:
    f = tmp_path / "ok.toml"
    f.write_text('[server]\nhostname = "relay.example.com"\n'
                 '[[listener]]\naddress = "127.0.0.1:2587"\n'
                 '[[listener]]\naddress = "[::1]:2465"\ntls = "implicit"\n')
    r = check(str(f))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{f}: ok"
    assert any("127.0.0.1:2587" in ln and "starttls" in ln for ln in lines)
    assert any("[::1]:2465" in ln and "implicit" in ln for ln in lines)
    assert r.stderr == ""


def test_three_errors_all_reported(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[[listener]]\naddress = "127.0.0.1:2587"\ntls = "ssl"\n'
                 '[delivery]\nmax_delivery_time = "three days"\n'
                 '[server]\nhostnam = "x"\n')
    r = check(str(f))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    err = r.stderr.splitlines()
    assert err[0] == f"{f}: 3 problems"
    assert '  listener[0].tls: expected "starttls" | "implicit" | "none", got "ssl"' in err
    assert ('  delivery.max_delivery_time: expected a duration like "30s", "5m", "72h" or '
            '"90d", got "three days"') in err
    assert any(ln.startswith("  server.hostnam: unknown key") for ln in err)
    assert len(err) == 4
    assert r.stdout == ""


def test_missing_file(tmp_path: Path) -> None:
    r = check(str(tmp_path / "absent.toml"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{tmp_path / 'absent.toml'}: 1 problem" in r.stderr
    assert "cannot read config file: No such file or directory" in r.stderr


def test_not_toml_and_not_text(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[server\n")
    (tmp_path / "b.toml").write_bytes(b"\x00\xff\xfe")
    for name, msg in (("a.toml", "not valid TOML"), ("b.toml", "not UTF-8")):
        r = check(str(tmp_path / name))
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr


def test_shipped_configs_are_valid() -> None:
    for f in ("config/relay.toml", "config/relay.dev.toml"):
        r = check(f)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"{f}: ok")


def test_default_is_the_embedded_config() -> None:
    r = check()
    assert r.returncode == 0, r.stderr
    assert "relay.dev.toml: ok" in r.stdout.splitlines()[0]


def test_json(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[delivery]\nport = 0\n')
    r = check("--json", str(f))
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out == {"file": str(f), "ok": False,
                   "problems": ["delivery.port: expected an integer between 1 and 65535, got 0"],
                   "warnings": []}
    r = check("--json", "config/relay.dev.toml")
    assert r.returncode == 0
    assert [x["address"] for x in json.loads(r.stdout)["listeners"]] == [
        "127.0.0.1:2587", "127.0.0.1:2465"]


def test_help_and_usage_error() -> None:
    assert check("--help").returncode == 0
    assert check("a.toml", "b.toml").returncode == 2


def test_tls_file_problems_are_reported_beside_other_problems(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[server]\nhostname = "relay.example.com"\nhostnam = "typo"\n'
                 '[[listener]]\naddress = "127.0.0.1:2587"\ntls = "ssl"\n'
                 f'[tls]\ncert = "{tmp_path}/absent-cert.pem"\nkey = "{tmp_path}/absent-key.pem"\n')
    r = check(str(f))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = r.stderr.splitlines()
    assert err[0] == f"{f}: 4 problems", r.stderr
    assert any(ln.startswith("  server.hostnam: unknown key") for ln in err)
    assert '  listener[0].tls: expected "starttls" | "implicit" | "none", got "ssl"' in err
    assert f'  tls.cert: file "{tmp_path}/absent-cert.pem" does not exist' in err
    assert f'  tls.key: file "{tmp_path}/absent-key.pem" does not exist' in err


def test_a_tls_key_that_is_not_the_certificates_is_a_problem(tmp_path: Path) -> None:
    from relay.testing.submission import Tls
    cert, _ = Tls().write_files(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = Tls().write_files(other)
    f = tmp_path / "bad.toml"
    f.write_text(f'[tls]\ncert = "{cert}"\nkey = "{wrong_key}"\n'
                 '[delivery]\nport = 0\n')
    r = check(str(f))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{f}: 2 problems" in r.stderr
    assert "delivery.port" in r.stderr
    assert "tls.cert, tls.key:" in r.stderr
    assert "the private key does not belong to the certificate" in r.stderr


def test_hostname_must_be_a_host_name(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    for bad in ("not a host name!", "-relay.example.com", "relay..example.com", "a" * 64,
                "relay_1.example.com", ""):
        f.write_text(f'[server]\nhostname = "{bad}"\n')
        r = check(str(f))
        assert r.returncode == 1, (bad, r.stdout)
        assert 'server.hostname: expected a host name (RFC 1123' in r.stderr, r.stderr
        assert f'got "{bad}"' in r.stderr
    # ... and is still named when another section has a problem too.
    f.write_text('[server]\nhostname = "not a host name!"\n[delivery]\nport = "x"\n')
    r = check(str(f))
    assert f"{f}: 2 problems" in r.stderr and "server.hostname" in r.stderr
    for good in ("localhost", "mail.example.com", "MX-1.Example.COM", "relay.test"):
        f.write_text(f'[server]\nhostname = "{good}"\n')
        assert check(str(f)).returncode == 0, good


def test_sender_authorization_off_warns_outside_the_development_config(
        tmp_path: Path) -> None:
    f = tmp_path / "prod.toml"
    f.write_text('[server]\nhostname = "relay.example.com"\nsender_authorization = "off"\n')
    r = check(str(f))
    assert r.returncode == 0, r.stderr  # a warning, not a problem
    assert r.stdout.startswith(f"{f}: ok")
    warning = [ln for ln in r.stderr.splitlines() if "warning:" in ln]
    assert len(warning) == 1 and "server.sender_authorization" in warning[0], r.stderr
    assert '"verified"' in warning[0]
    as_json = json.loads(check(str(f), "--json").stdout)
    assert as_json["ok"] is True and len(as_json["warnings"]) == 1
    # Beside real problems it is still said.
    f.write_text('[server]\nsender_authorization = "off"\n[delivery]\nport = "x"\n')
    r = check(str(f))
    assert r.returncode == 1 and "warning: server.sender_authorization" in r.stderr
    # The development config (dev_credential = true) says nothing.
    f.write_text('[server]\nsender_authorization = "off"\ndev_credential = true\n')
    r = check(str(f))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert check().stderr == ""  # the embedded development config
