"""The account model end to end: real `relay serve` processes, real sockets (STARTTLS +
AUTH), the CLI as another process on the same spool, real ARF complaints to the feedback
listener, delivery to the sinks.

One relay per module (adminkit) with a feedback listener, low reputation lines
(min_volume 10, complaint lines 1 % / 5 %), paused mail rechecked every second and a
retry every second; each test uses tenants of its own, so they do not disturb each
other. The restart test starts its own relay.
"""

from __future__ import annotations

import email.policy
import importlib.util
import json
import re
import smtplib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from adminkit import PASSWORD, Admin, make_admin_relay, sink_policy

from relay.clock import SystemClock
from relay.dkim.keys import KeyStore
from relay.testing.dnsserver import DnsServer
from relay.testing.process import free_port, run_cli
from relay.testing.sink import Received, Sink
from relay.testing.wait import wait_until


def _feedback_reports() -> ModuleType:
    """tests/feedback/feedback_reports.py: real provider reports (ARF, DSN)."""
    path = Path(__file__).resolve().parents[1] / "feedback" / "feedback_reports.py"
    spec = importlib.util.spec_from_file_location("feedback_reports", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORTS = _feedback_reports()

RATE = "454 4.7.0 Throttling failure: Maximum sending rate exceeded."
DAILY = "454 4.7.0 Throttling failure: Daily message quota exceeded."
PAUSED = "554 5.7.1 Sending paused for this account"
SIMULATOR = "success@simulator.relay.test"

# Recipients the sinks answer 451 for while listed here (a message kept in the queue).
TEMPFAIL: set[str] = set()


def policy(stage: str, arg: str, envelope: Any) -> str | None:
    if stage == "rcpt" and arg.lower().strip("<>") in TEMPFAIL:
        return "451 4.2.0 try again later"
    if stage == "rcpt" and arg.lower().strip("<>").startswith("gone"):
        return "550 5.1.1 mailbox gone"
    return sink_policy(stage, arg, envelope)


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[Sink, Sink]]:
    first = Sink("127.0.0.2", 0, policy=policy).start()
    try:
        second = Sink("127.0.0.3", first.port, policy=policy).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def start_relay(tmp: Path, dns: DnsServer, sinks: tuple[Sink, Sink]) -> tuple[Admin, int]:
    submit_port, feedback_port = free_port(), free_port()
    a = make_admin_relay(
        tmp, dns, sinks,
        listener=[{"address": f"127.0.0.1:{submit_port}", "tls": "starttls",
                   "auth": "required"},
                  {"address": f"127.0.0.1:{feedback_port}", "tls": "none", "auth": "none",
                   "role": "feedback"}],
        delivery={"port": sinks[0].port, "retry_schedule": ["1s"], "retry_jitter": 0.0,
                  "connect_timeout": "5s", "command_timeout": "10s", "data_timeout": "10s",
                  "pool": "dedicated"},
        tenants={"paused_recheck": "1s", "sandbox_max_send_rate": 20.0},
        configuration_set=[{"name": "promo"}, {"name": "short", "max_delivery_time": "10s"}],
        event_destination=[{"name": "ta-events", "type": "file", "tenant": "ta"},
                           {"name": "tb-events", "type": "file", "tenant": "tb"}],
        reputation={"min_volume": 10, "complaint_review": 0.01, "complaint_pause": 0.05})
    a.submit_port = submit_port
    return a, feedback_port


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
          sinks: tuple[Sink, Sink]) -> Iterator[tuple[Admin, int]]:
    a, feedback_port = start_relay(tmp_path_factory.mktemp("tenants"), dns, sinks)
    try:
        yield a, feedback_port
    finally:
        a.relay.stop()


# ------------------------------------------------------------------ helpers


def cli(admin: Admin, *args: str, input: str | None = None) -> str:
    done = run_cli(*args, config=admin.config, input=input)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def tenant(admin: Admin, name: str, *args: str, api: dict[str, Any] | None = None) -> None:
    """A tenant (made by the CLI with `args`, or by POST /api/tenants with `api`) with a
    credential NAME-app that belongs to it."""
    if api is None:
        cli(admin, "tenant", "add", name, *args)
    else:
        status, body = admin.call("POST", "/api/tenants", {"TenantName": name, **api})
        assert status == 201, body
    cli(admin, "user", "add", f"{name}-app", "--tenant", name, "--password-stdin",
        input=PASSWORD + "\n")


def show(admin: Admin, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cli(admin, "tenant", "show", name, "--json"))
    return data


@contextmanager
def session(admin: Admin, user: str) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP("127.0.0.1", admin.submit_port, timeout=10) as s:
        s.starttls(context=admin.tls.client)
        s.login(user, PASSWORD)
        yield s


def message(subject: str, to: str = "", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = to or "list@ok.test"
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(f"tenants e2e: {subject}\n")
    return msg.as_bytes(policy=email.policy.SMTP)


def reply(got: tuple[int, bytes]) -> str:
    return f"{got[0]} {got[1].decode()}"


def queued(got: tuple[int, bytes]) -> str:
    assert got[0] == 250, got
    m = re.search(r"queued as (\S+)", got[1].decode())
    assert m is not None, got
    return m.group(1)


def send(admin: Admin, user: str, to: str, subject: str, **headers: str) -> str:
    """One message to one recipient; its queue id."""
    with session(admin, user) as s:
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt(to)[0] == 250, to
        return queued(s.data(message(subject, to, **headers)))


def send_many(admin: Admin, user: str, mail: list[tuple[str, str]]) -> list[str]:
    """One message per (recipient, subject), one session; their queue ids."""
    ids = []
    with session(admin, user) as s:
        for to, subject in mail:
            assert s.mail("app@example.com")[0] == 250
            assert s.rcpt(to)[0] == 250, to
            ids.append(queued(s.data(message(subject, to))))
    return ids


def events(admin: Admin, kind: str | None = None,
           path: str = "events.jsonl") -> list[dict[str, Any]]:
    """The events in a file destination (the event log by default), of `kind` or all."""
    file = admin.state / path
    lines = file.read_text().splitlines() if file.exists() else []
    return [ev for ev in map(json.loads, lines) if kind is None or ev["eventType"] == kind]


def of_message(admin: Admin, mid: str, kind: str) -> list[dict[str, Any]]:
    return [ev for ev in events(admin, kind) if ev["mail"]["messageId"] == mid]


def in_sink(admin: Admin, subject: str) -> list[Received]:
    return [m for m in admin.sinks[0].messages
            if BytesParser().parsebytes(m.data)["Subject"] == subject]


def delivered(admin: Admin, subject: str, timeout: float = 10) -> Received:
    found: list[Received] = wait_until(lambda: in_sink(admin, subject), timeout,
                                       f"delivery of {subject!r}")
    return found[0]


def rcpts_in_sink(admin: Admin, subject: str) -> list[str]:
    """Every recipient the sink got the message `subject` for (in one transaction or
    several)."""
    return sorted(r for m in in_sink(admin, subject) for r in m.rcpt_tos)


def complain(feedback_port: int, rcpt: str, return_path: str) -> None:
    """A mailbox provider's feedback loop reports `rcpt`'s complaint (RFC 5965 ARF)."""
    with smtplib.SMTP("127.0.0.1", feedback_port, timeout=10) as s:
        s.sendmail("", [return_path], REPORTS.yahoo_complaint(rcpt, return_path))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10) -> Any:
    return wait_until(check, timeout, what)


# ------------------------------------------------------------------ 1. quotas


def test_the_rate_454_at_the_recipient_that_crosses_it(relay: tuple[Admin, int]) -> None:
    admin, _ = relay
    tenant(admin, "rated", "--no-sandbox", "--max-send-rate", "1")
    with session(admin, "rated-app") as s:
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt("r1@ok.test")[0] == 250
        assert reply(s.rcpt("r2@ok.test")) == RATE  # the second within the same second
        mid = queued(s.data(message("rate one", "r1@ok.test")))
    got = delivered(admin, "rate one")
    assert got.rcpt_tos == ["r1@ok.test"]
    (ev,) = wait_for("the Send event", lambda: of_message(admin, mid, "Send"))
    assert ev["mail"]["destination"] == ["r1@ok.test"] and ev["tenant"] == "rated"

    # The simulator counts toward the rate: it takes the token, the next is refused.
    time.sleep(1.1)
    with session(admin, "rated-app") as s:
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt(SIMULATOR)[0] == 250
        assert reply(s.rcpt("r3@ok.test")) == RATE
        s.rset()
    # The refused recipients were never queued anywhere.
    assert not any("r2@ok.test" in m.rcpt_tos or "r3@ok.test" in m.rcpt_tos
                   for m in admin.sinks[0].messages)
    assert show(admin, "rated")["sent_last_24_hours"] == 1


def test_the_daily_454_rset_gives_back_and_the_simulator_is_free(
        relay: tuple[Admin, int]) -> None:
    admin, _ = relay
    tenant(admin, "daily", "--no-sandbox")
    cli(admin, "tenant", "quota", "daily", "--max-24h-send", "3")
    with session(admin, "daily-app") as s:
        # Reserved, then given back by RSET: they use none of the quota.
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt("d1@ok.test")[0] == 250
        assert s.rcpt("d2@ok.test")[0] == 250
        assert s.rset()[0] == 250
        assert s.mail("app@example.com")[0] == 250
        for to in ("d1@ok.test", SIMULATOR, "d2@ok.test", "d3@ok.test"):
            assert s.rcpt(to)[0] == 250, to  # the simulator is not counted
        assert reply(s.rcpt("d4@ok.test")) == DAILY
        mid = queued(s.data(message("daily one")))
    want = ["d1@ok.test", "d2@ok.test", "d3@ok.test"]
    wait_for("delivery of the three", lambda: rcpts_in_sink(admin, "daily one") == want)
    (ev,) = wait_for("the Send event", lambda: of_message(admin, mid, "Send"))
    assert ev["mail"]["destination"] == ["d1@ok.test", SIMULATOR, "d2@ok.test",
                                         "d3@ok.test"]
    wait_for("the simulator's delivery", lambda: of_message(admin, mid, "Delivery")
             and any(SIMULATOR in e["delivery"]["recipients"]
                     for e in of_message(admin, mid, "Delivery")))
    data = show(admin, "daily")
    assert data["sent_last_24_hours"] == 3
    assert data["send_quota"]["max_24h_send"] == 3
    status, body = admin.call("GET", "/api/tenants/daily")
    assert status == 200 and body["Tenant"]["SendQuota"]["SentLast24Hours"] == 3
    # Spent: the next message's first counted recipient is refused; the simulator is not.
    with session(admin, "daily-app") as s:
        assert s.mail("app@example.com")[0] == 250
        assert reply(s.rcpt("d5@ok.test")) == DAILY
        assert s.rcpt(SIMULATOR)[0] == 250
        s.rset()
    # Per-tenant series: its refusals by reason, its counted recipients.
    _, text = admin.call("GET", "/metrics", token=None)
    assert 'relay_tenant_refusals_total{reason="daily_quota",tenant="daily"} 2.0' in text
    assert 'relay_tenant_recipients_accepted_total{tenant="daily"} 3.0' in text
    # A disconnect without QUIT gives its reservations back, as RSET does.
    tenant(admin, "drop", "--no-sandbox", "--max-24h-send", "2")
    s = smtplib.SMTP("127.0.0.1", admin.submit_port, timeout=10)
    s.starttls(context=admin.tls.client)
    s.login("drop-app", PASSWORD)
    assert s.mail("app@example.com")[0] == 250
    assert s.rcpt("g1@ok.test")[0] == 250 and s.rcpt("g2@ok.test")[0] == 250
    assert reply(s.rcpt("g3@ok.test")) == DAILY
    s.close()  # the socket, no QUIT

    def both_free() -> bool:
        with session(admin, "drop-app") as s:
            s.mail("app@example.com")
            ok = s.rcpt("g4@ok.test")[0] == 250 and s.rcpt("g5@ok.test")[0] == 250
            s.rset()
            return ok
    wait_for("the units given back at the disconnect", both_free, 5)
    # A credential's own quota overrides its tenant's, counted in its own scope.
    cli(admin, "user", "add", "daily-small", "--tenant", "daily", "--password-stdin",
        input=PASSWORD + "\n")
    cli(admin, "tenant", "quota", "daily", "--max-24h-send", "100")
    cli(admin, "user", "quota", "daily-small", "--max-24h-send", "1")

    def override_holds() -> bool:
        with session(admin, "daily-small") as s:
            s.mail("app@example.com")
            ok = s.rcpt("o1@ok.test")[0] == 250 and reply(s.rcpt("o2@ok.test")) == DAILY
            s.rset()
            return ok
    wait_for("the credential's own quota", override_holds, 5)
    # Isolation: the default tenant's credential is not limited by it.
    with session(admin, "app") as s:
        assert s.mail("app@example.com")[0] == 250
        for i in range(5):
            assert s.rcpt(f"free{i}@ok.test")[0] == 250
        s.rset()


# ------------------------------------------------------------------ 2. sandbox


def publish_dkim(admin: Admin, dns: DnsServer, domain: str) -> None:
    cli(admin, "dkim", "keygen", domain)
    state = KeyStore.in_state_dir(admin.state, SystemClock()).get(domain)
    assert state is not None
    for gen in state.generations:
        for key in gen.keys:
            dns.set(f"{key.selector}._domainkey.{domain}", "TXT", [key.record])


def test_sandbox_verified_identities_and_the_simulator_only(
        relay: tuple[Admin, int], dns: DnsServer) -> None:
    admin, _ = relay
    tenant(admin, "sbx")  # a new tenant starts in the sandbox
    assert show(admin, "sbx")["sandbox"] is True
    cli(admin, "identity", "add", "friend@ok.test", "--tenant", "sbx")
    publish_dkim(admin, dns, "ok.test")
    cli(admin, "identity", "verify", "friend@ok.test")
    refused = ("554 5.7.1 Message rejected: Email address is not verified. The following "
               "identities failed the check: stranger@ok.test")

    def friend_accepted() -> bool:
        with session(admin, "sbx-app") as s:
            s.mail("app@example.com")
            return s.rcpt("friend@ok.test")[0] == 250
    wait_for("the verified identity in the server", friend_accepted)
    with session(admin, "sbx-app") as s:
        assert s.mail("app@example.com")[0] == 250
        assert reply(s.rcpt("stranger@ok.test")) == refused
        assert s.rcpt("friend@ok.test")[0] == 250
        assert s.rcpt(SIMULATOR)[0] == 250
        queued(s.data(message("sandboxed", "friend@ok.test")))
    assert delivered(admin, "sandboxed").rcpt_tos == ["friend@ok.test"]
    # Another tenant's verified identity is not this one's.
    tenant(admin, "sbx2")
    with session(admin, "sbx2-app") as s:
        assert s.mail("app@example.com")[0] == 250
        assert reply(s.rcpt("friend@ok.test")).endswith("failed the check: friend@ok.test")

    cli(admin, "tenant", "production", "sbx")

    def stranger_accepted() -> bool:
        with session(admin, "sbx-app") as s:
            s.mail("app@example.com")
            return s.rcpt("stranger@ok.test")[0] == 250
    wait_for("production access in the server", stranger_accepted, 5)


# ------------------------------------------------------------------ 3. auto-pause


def test_complaints_pause_a_while_b_delivers_and_resume_releases(
        relay: tuple[Admin, int]) -> None:
    admin, feedback_port = relay
    tenant(admin, "ta", api={"Sandbox": False})
    tenant(admin, "tb", api={"Sandbox": False})
    mids = send_many(admin, "ta-app", [(f"a{i}@ok.test", f"ta {i}") for i in range(10)])
    first = delivered(admin, "ta 0")
    for i in range(1, 10):
        delivered(admin, f"ta {i}")
    # A message of A kept in the queue by its receiver (451) when the pause comes.
    TEMPFAIL.add("later@ok.test")
    held_mid = send(admin, "ta-app", "later@ok.test", "ta held")
    wait_for("the first 451", lambda: of_message(admin, held_mid, "DeliveryDelay")
             or admin.call("GET", f"/api/queue/{held_mid}")[1]["recipients"][0]
             ["attempts"] >= 1)
    assert show(admin, "ta")["status"] == "Healthy"

    # One complaint over 11 sends: 9 % >= the 5 % pause line.
    complain(feedback_port, "a0@ok.test", first.mail_from)
    (change,) = wait_for("the ReputationStatusChange", lambda: [
        e for e in events(admin, "ReputationStatusChange") if e["tenant"] == "ta"])
    rsc = change["reputationStatusChange"]
    assert (rsc["scope"], rsc["name"], rsc["oldStatus"], rsc["newStatus"],
            rsc["automatic"]) == ("tenant", "ta", "Healthy", "Paused", True)
    assert rsc["volume"] == 11 and rsc["complaintRate"] == pytest.approx(1 / 11)
    _, text = admin.call("GET", "/metrics", token=None)
    assert re.search(r'relay_reputation_status_changes_total\{scope="tenant",'
                     r'status="Paused"\} [1-9]', text), text
    assert change["mail"]["tags"]["ses:tenant"] == ["ta"]
    shown = show(admin, "ta")
    assert shown["status"] == "Paused" and shown["status_record"]["automatic"] is True
    assert "complaint rate" in shown["status_record"]["reason"]
    assert of_message(admin, mids[0], "Complaint")[0]["tenant"] == "ta"
    # Each tenant's own destination gets its events only.
    own = wait_for("ta's destination", lambda: [
        e for e in events(admin, path="ta-events.jsonl")
        if e["eventType"] == "ReputationStatusChange"])
    assert own[0]["reputationStatusChange"]["newStatus"] == "Paused"
    assert {e["tenant"] for e in events(admin, path="ta-events.jsonl")} == {"ta"}
    assert not [e for e in events(admin, path="tb-events.jsonl") if e["tenant"] != "tb"]

    # A new message of A: refused at MAIL; B is untouched.
    def refused_at_mail() -> bool:
        with session(admin, "ta-app") as s:
            return reply(s.mail("app@example.com")) == PAUSED
    wait_for("the pause at MAIL", refused_at_mail, 5)
    TEMPFAIL.discard("later@ok.test")  # the receiver would take it now
    send(admin, "tb-app", "b1@ok.test", "tb after")
    delivered(admin, "tb after")
    # A's queued message is held: not delivered, not bounced, still queued.
    time.sleep(2.0)  # two rechecks
    assert not in_sink(admin, "ta held")
    assert not of_message(admin, held_mid, "Bounce")
    status, row = admin.call("GET", f"/api/queue/{held_mid}")
    assert status == 200, row
    assert row["recipients"][0]["state"] not in ("delivered", "bounced"), row
    assert "paused" in row["recipients"][0]["last_response"], row
    # One DeliveryDelay says it is held; the rechecks every second publish no more.
    paused_delays = [e for e in of_message(admin, held_mid, "DeliveryDelay")
                     if "sending paused" in e["deliveryDelay"]["delayedRecipients"][0]
                     ["diagnosticCode"]]
    assert len(paused_delays) == 1, paused_delays
    assert show(admin, "tb")["status"] == "Healthy"
    assert {e["tenant"] for e in events(admin, path="tb-events.jsonl")} == {"tb"}

    # The operator resumes A: the held message goes, a fresh window starts.
    status, body = admin.call("POST", "/api/tenants/ta/resume", {"Reason": "list cleaned"})
    assert status == 200, body
    rep = body["Tenant"]["ReputationStatus"]
    assert rep["Status"] == "Healthy" and rep["LastFreshStart"]
    delivered(admin, "ta held", 10)
    send(admin, "ta-app", "a10@ok.test", "ta after resume")
    delivered(admin, "ta after resume")
    # A late complaint about the old mail does not pause it again: the figures that
    # paused it were left behind by the fresh start.
    complain(feedback_port, "a1@ok.test", in_sink(admin, "ta 1")[0].mail_from)
    wait_for("the second complaint", lambda: of_message(admin, mids[1], "Complaint"))
    time.sleep(1.5)  # a flush and an evaluation of the monitor
    shown = show(admin, "ta")
    assert shown["status"] == "Healthy", shown
    assert shown["status_record"]["last_fresh_start"]
    assert [e["reputationStatusChange"]["newStatus"]
            for e in events(admin, "ReputationStatusChange") if e["tenant"] == "ta"] == \
        ["Paused"]


def test_hard_bounces_at_delivery_pause_a_tenant(relay: tuple[Admin, int]) -> None:
    # Ten recipients the receiver refuses with 550: a bounce rate of 100 % over 10
    # sends, past the 10 % pause line (SES's default) once the minimum volume is there.
    admin, _ = relay
    tenant(admin, "hb", api={"Sandbox": False})
    with session(admin, "hb-app") as s:
        assert s.mail("app@example.com")[0] == 250
        for i in range(10):
            assert s.rcpt(f"gone{i}@ok.test")[0] == 250
        mid = queued(s.data(message("to the gone")))
    (change,) = wait_for("the pause", lambda: [
        e for e in events(admin, "ReputationStatusChange") if e["tenant"] == "hb"])
    rsc = change["reputationStatusChange"]
    assert (rsc["newStatus"], rsc["volume"], rsc["bounceRate"]) == ("Paused", 10, 1.0)
    assert "bounce rate" in rsc["reason"]
    assert sum(len(e["bounce"]["bouncedRecipients"])
               for e in of_message(admin, mid, "Bounce")) == 10

    def refused_at_mail() -> bool:
        with session(admin, "hb-app") as s:
            return reply(s.mail("app@example.com")) == PAUSED
    wait_for("the pause at MAIL", refused_at_mail, 5)


def test_the_simulator_never_moves_reputation(relay: tuple[Admin, int]) -> None:
    admin, _ = relay
    tenant(admin, "tsim", api={"Sandbox": False})
    # 12 complaints over 12 sends, all the simulator's: nothing counts (SES's rule).
    with session(admin, "tsim-app") as s:
        assert s.mail("app@example.com")[0] == 250
        for i in range(12):
            assert s.rcpt(f"complaint+{i}@simulator.relay.test")[0] == 250
        mid = queued(s.data(message("to the simulator")))
    wait_for("the simulator's complaints", lambda: sum(
        len(e["complaint"]["complainedRecipients"])
        for e in of_message(admin, mid, "Complaint")) == 12)
    time.sleep(1.5)  # a flush and an evaluation of the monitor
    assert show(admin, "tsim")["status"] == "Healthy"
    assert not [e for e in events(admin, "ReputationStatusChange") if e["tenant"] == "tsim"]


def test_a_paused_configuration_set(relay: tuple[Admin, int]) -> None:
    admin, _ = relay
    tenant(admin, "cs", api={"Sandbox": False})
    cli(admin, "tenant", "pause", "promo", "--configuration-set", "--reason", "audit")

    def refused() -> str:
        with session(admin, "cs-app") as s:
            s.mail("app@example.com")
            s.rcpt("c1@ok.test")
            return reply(s.data(message("promo one", "c1@ok.test",
                                        X_SES_CONFIGURATION_SET="promo")))
    wait_for("the set's pause", lambda: refused() ==
             "554 5.7.1 Sending paused for configuration set promo", 5)
    send(admin, "cs-app", "c2@ok.test", "no set")  # the tenant itself still sends
    delivered(admin, "no set")
    cli(admin, "tenant", "resume", "promo", "--configuration-set")
    wait_for("the set's resume", lambda: refused().startswith("250 "), 5)
    delivered(admin, "promo one")


def test_held_mail_still_expires_at_its_max_delivery_time(relay: tuple[Admin, int]) -> None:
    # Held while its tenant is paused, not bounced for it; its max delivery time (10 s,
    # its configuration set's) still ends it, with the expiry's bounce event.
    admin, _ = relay
    tenant(admin, "tx", api={"Sandbox": False})
    TEMPFAIL.add("slow@ok.test")
    try:
        mid = send(admin, "tx-app", "slow@ok.test", "tx held", X_SES_CONFIGURATION_SET="short")
        wait_for("its first attempt", lambda: of_message(admin, mid, "DeliveryDelay"))
        cli(admin, "tenant", "pause", "tx")
        wait_for("the hold", lambda: any(
            "sending paused" in e["deliveryDelay"]["delayedRecipients"][0]["diagnosticCode"]
            for e in of_message(admin, mid, "DeliveryDelay")))
        assert not of_message(admin, mid, "Bounce")
        (bounce,) = wait_for("the expiry", lambda: of_message(admin, mid, "Bounce"), 16)
    finally:
        TEMPFAIL.discard("slow@ok.test")
    assert bounce["bounce"]["bounceType"] == "Transient", bounce
    assert bounce["tenant"] == "tx"
    assert not in_sink(admin, "tx held")


# ------------------------------------------------------------------ 4. X-SES-TENANT


def test_a_platform_credential_names_the_tenant_per_message(relay: tuple[Admin, int]) -> None:
    admin, _ = relay
    cli(admin, "tenant", "add", "pa", "--no-sandbox")
    cli(admin, "tenant", "add", "pb", "--no-sandbox")
    cli(admin, "tenant", "add", "pc", "--no-sandbox")
    cli(admin, "user", "add", "platform", "--tenant", "pa", "--tenants", "pb",
        "--password-stdin", input=PASSWORD + "\n")
    mid = send(admin, "platform", "p1@ok.test", "for pb", X_SES_TENANT="pb")
    got = delivered(admin, "for pb")
    head = got.data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-ses-tenant" not in head, head
    (ev,) = wait_for("the Send event", lambda: of_message(admin, mid, "Send"))
    assert ev["tenant"] == "pb" and ev["mail"]["tags"]["ses:tenant"] == ["pb"]
    (dev,) = wait_for("the Delivery event", lambda: of_message(admin, mid, "Delivery"))
    assert dev["tenant"] == "pb" and dev["mail"]["tags"]["ses:tenant"] == ["pb"]
    assert show(admin, "pb")["sent_last_24_hours"] == 1
    assert show(admin, "pa")["sent_last_24_hours"] == 0
    assert f"attempt {mid} tenant=pb domain=ok.test" in admin.relay.output(tail=200_000)
    # Without the header: its own tenant.
    mid = send(admin, "platform", "p2@ok.test", "for pa")
    (ev,) = wait_for("the Send event", lambda: of_message(admin, mid, "Send"))
    assert ev["tenant"] == "pa"
    # A tenant it may not use: refused at the end of DATA, nothing queued.
    with session(admin, "platform") as s:
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt("p3@ok.test")[0] == 250
        got_reply = reply(s.data(message("for pc", "p3@ok.test", X_SES_TENANT="pc")))
    assert got_reply.startswith("554 5.7.1 ") and "tenant pc is not allowed" in got_reply
    # A paused tenant named by the header: refused with the pause's answer.
    cli(admin, "tenant", "pause", "pb")

    def paused_at_data() -> bool:
        with session(admin, "platform") as s:
            s.mail("app@example.com")
            s.rcpt("p4@ok.test")
            return reply(s.data(message("for pb paused", "p4@ok.test",
                                        X_SES_TENANT="pb"))) == PAUSED
    wait_for("the named tenant's pause", paused_at_data, 5)
    assert show(admin, "pa")["status"] == "Healthy"
    send(admin, "platform", "p5@ok.test", "for pa still")  # its own tenant still sends
    delivered(admin, "for pa still")
    assert not in_sink(admin, "for pc") and not in_sink(admin, "for pb paused")
    assert show(admin, "pc")["sent_last_24_hours"] == 0
    assert show(admin, "pb")["sent_last_24_hours"] == 1


def test_a_platform_credentials_own_tenant_does_not_stop_the_others(
        relay: tuple[Admin, int]) -> None:
    # Its own tenant is new (so in the sandbox), paused and out of quota; the tenant a
    # message names is none of these, and that message is the named tenant's business.
    admin, _ = relay
    cli(admin, "tenant", "add", "qa", "--max-24h-send", "1")
    cli(admin, "tenant", "add", "qb", "--no-sandbox")
    cli(admin, "user", "add", "platform2", "--tenant", "qa", "--tenants", "qb",
        "--password-stdin", input=PASSWORD + "\n")
    cli(admin, "tenant", "pause", "qa")
    to = ["q1@ok.test", "q2@ok.test"]  # not verified identities of anyone

    def for_qb() -> str:
        with session(admin, "platform2") as s:
            s.mail("app@example.com")
            for rcpt in to:
                assert s.rcpt(rcpt)[0] == 250, rcpt
            return reply(s.data(message("for qb", ", ".join(to), X_SES_TENANT="qb")))
    wait_for("the message for qb accepted", lambda: for_qb().startswith("250 "), 5)
    wait_for("both recipients", lambda: rcpts_in_sink(admin, "for qb") == to)
    assert show(admin, "qb")["sent_last_24_hours"] == 2
    # Without the header the message is its own tenant's: refused whole, at DATA.
    with session(admin, "platform2") as s:
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt("q3@ok.test")[0] == 250
        assert reply(s.data(message("for qa", "q3@ok.test"))) == PAUSED
    cli(admin, "tenant", "resume", "qa")
    cli(admin, "tenant", "production", "qa")

    def for_qa() -> str:
        with session(admin, "platform2") as s:
            s.mail("app@example.com")
            s.rcpt("q3@ok.test")
            s.rcpt("q4@ok.test")
            return reply(s.data(message("for qa", "q3@ok.test")))
    # qa's quota of 1 refuses the two-recipient message whole (never half accepted).
    wait_for("qa's quota at DATA", lambda: for_qa() == DAILY, 5)
    assert show(admin, "qa")["sent_last_24_hours"] == 0
    assert not in_sink(admin, "for qa")


# ------------------------------------------------------------------ 5. suppression scope


def test_tenant_scoped_suppression_over_the_feedback_path(relay: tuple[Admin, int]) -> None:
    admin, feedback_port = relay
    tenant(admin, "sa", "--no-sandbox", "--suppression-scope", "tenant")
    tenant(admin, "sb", "--no-sandbox")
    address = "x@ok.test"
    mid = send(admin, "sa-app", address, "sa first")
    complain(feedback_port, address, delivered(admin, "sa first").mail_from)
    wait_for("the complaint", lambda: of_message(admin, mid, "Complaint"))
    # A's next message to x: suppressed (A's own list), never delivered.
    mid = send(admin, "sa-app", address, "sa second")
    (bounce,) = wait_for("the suppression bounce", lambda: of_message(admin, mid, "Bounce"))
    assert bounce["bounce"]["bounceSubType"] == "OnAccountSuppressionList"
    assert bounce["tenant"] == "sa"
    # B's message to the same address is delivered.
    send(admin, "sb-app", address, "sb first")
    delivered(admin, "sb first")
    assert not in_sink(admin, "sa second")
    # A's own list holds it (`relay suppression list --tenant`), the account's does not.
    own = [json.loads(line) for line in cli(
        admin, "suppression", "list", "--tenant", "sa", "--json").splitlines()]
    assert [(e["address"], e["reason"]) for e in own] == [(address, "COMPLAINT")], own
    assert address not in cli(admin, "suppression", "list", "--json")
    _, body = admin.call("GET", f"/api/suppression?prefix={address}")
    assert not any(e["address"] == address for e in body["entries"])


# ------------------------------------------------------------------ 6. restart


def test_counts_status_and_pause_survive_a_restart(
        tmp_path: Path, dns: DnsServer, sinks: tuple[Sink, Sink]) -> None:
    admin, _ = start_relay(tmp_path, dns, sinks)
    try:
        tenant(admin, "keep", "--no-sandbox", "--max-24h-send", "3")
        tenant(admin, "stop", "--no-sandbox")
        with session(admin, "keep-app") as s:
            assert s.mail("app@example.com")[0] == 250
            assert s.rcpt("k1@ok.test")[0] == 250
            assert s.rcpt("k2@ok.test")[0] == 250
            queued(s.data(message("keep one")))
        delivered(admin, "keep one")
        # A message of "stop" its receiver keeps answering 451 when the pause comes.
        TEMPFAIL.add("kept@ok.test")
        held_mid = send(admin, "stop-app", "kept@ok.test", "stop held")
        wait_for("its first attempt", lambda: of_message(admin, held_mid, "DeliveryDelay"))
        cli(admin, "tenant", "pause", "stop", "--reason", "audit")
        assert admin.relay.terminate() == 0  # SIGTERM
        TEMPFAIL.discard("kept@ok.test")
        admin.relay.start()
        assert show(admin, "keep")["sent_last_24_hours"] == 2
        stopped = show(admin, "stop")
        assert stopped["status"] == "Paused"
        assert stopped["status_record"]["reason"] == "audit"
        # The running server keeps them: one unit left of 3, and the pause.
        with session(admin, "keep-app") as s:
            assert s.mail("app@example.com")[0] == 250
            assert s.rcpt("k3@ok.test")[0] == 250
            assert reply(s.rcpt("k4@ok.test")) == DAILY
            s.rset()
        with session(admin, "stop-app") as s:
            assert reply(s.mail("app@example.com")) == PAUSED
        status, body = admin.call("GET", "/api/tenants/keep")
        assert status == 200 and body["Tenant"]["SendQuota"]["SentLast24Hours"] == 2
        # Its queued mail is still held after the restart, and goes at the resume.
        wait_for("the hold after the restart", lambda: "paused" in admin.call(
            "GET", f"/api/queue/{held_mid}")[1]["recipients"][0]["last_response"])
        assert not in_sink(admin, "stop held")
        cli(admin, "tenant", "resume", "stop")
        delivered(admin, "stop held")
        assert not of_message(admin, held_mid, "Bounce")
    finally:
        admin.relay.stop()


# ------------------------------------------------------------------ several workers


def test_a_daily_quota_holds_across_workers(
        tmp_path: Path, dns: DnsServer, sinks: tuple[Sink, Sink]) -> None:
    # server.workers = 2: two processes accept on the same port, each with its own quota
    # book; together they never accept more than the tenant's max_24h_send.
    admin = make_admin_relay(tmp_path, dns, sinks, workers=2)
    try:
        tenant(admin, "many", "--no-sandbox", "--max-24h-send", "4")
        accepted = 0
        for i in range(10):  # separate connections, spread over both workers
            with session(admin, "many-app") as s:
                assert s.mail("app@example.com")[0] == 250
                got = s.rcpt(f"w{i}@ok.test")
                if got[0] == 250:
                    queued(s.data(message(f"many {i}", f"w{i}@ok.test")))
                    accepted += 1
                else:
                    assert reply(got) == DAILY
        assert accepted <= 4, accepted
        assert show(admin, "many")["sent_last_24_hours"] == accepted
    finally:
        admin.relay.stop()
