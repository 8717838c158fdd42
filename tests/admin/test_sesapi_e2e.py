"""The SES HTTP API end to end with the real client: boto3's `sesv2` with endpoint_url
against a real `relay serve` ([api] on), access keys made with `relay user keys create`,
delivery to the sinks on 127.0.0.2/.3 through the loopback DNS server. What is shown:
SendEmail (Raw and Simple) reaches the sink DKIM-signed with the Send and Delivery events
naming the API and the key; refusals are the exception classes boto3 raises for SES
(signature, unknown key, skewed clock, quota, sender authorization, unsupported
operation); GetAccount; an oversized body refused before it is read."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from adminkit import PASSWORD, Admin, make_admin_relay

from relay.clock import SystemClock
from relay.dkim.keys import KeyStore
from relay.testing.dnsserver import DnsServer
from relay.testing.process import free_port, run_cli, write_config
from relay.testing.sink import Received, Sink

boto3 = pytest.importorskip("boto3")
import botocore.auth  # noqa: E402
import botocore.exceptions  # noqa: E402
from botocore.config import Config as BotoConfig  # noqa: E402

REGION = "us-east-1"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
          sinks: tuple[Sink, Sink]) -> Iterator[Admin]:
    api_port = free_port()
    a = make_admin_relay(tmp_path_factory.mktemp("sesapi"), dns, sinks,
                         api={"enabled": True, "address": f"127.0.0.1:{api_port}",
                              "max_body_size": "1MB"},
                         configuration_set=[{"name": "promo"},
                                            {"name": "strict", "tls": "require",
                                             "suppression_reasons": ["BOUNCE"]}])
    a.data["api_port"] = api_port
    try:
        yield a
    finally:
        a.relay.stop()


def cli(admin: Admin, *args: str, input: str | None = None) -> str:
    done = run_cli(*args, config=admin.config, input=input)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def new_key(admin: Admin, user: str) -> tuple[str, str]:
    made = json.loads(cli(admin, "user", "keys", "create", user, "--json"))
    return made["AccessKeyId"], made["SecretAccessKey"]


def client(admin: Admin, key: tuple[str, str]) -> Any:
    return boto3.client(
        "sesv2", region_name=REGION, endpoint_url=f"http://127.0.0.1:{admin.data['api_port']}",
        aws_access_key_id=key[0], aws_secret_access_key=key[1],
        config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=5,
                          read_timeout=15))


def publish_dkim(admin: Admin, dns: DnsServer, domain: str) -> None:
    cli(admin, "dkim", "keygen", domain)
    state = KeyStore.in_state_dir(admin.state, SystemClock()).get(domain)
    assert state is not None
    for gen in state.generations:
        for key in gen.keys:
            dns.set(f"{key.selector}._domainkey.{domain}", "TXT", [key.record])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def in_sink(admin: Admin, subject: str) -> list[Received]:
    return [m for m in admin.sinks[0].messages
            if BytesParser().parsebytes(m.data)["Subject"] == subject]


def events(admin: Admin, mid: str, kind: str) -> list[dict[str, Any]]:
    file = admin.state / "events.jsonl"
    lines = file.read_text().splitlines() if file.exists() else []
    return [ev for ev in map(json.loads, lines)
            if ev["eventType"] == kind and ev["mail"]["messageId"] == mid]


def raw_message(subject: str, to: str, sender: str = "app@example.com") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"api test: {subject}\n")
    return msg.as_bytes()  # bare LF line ends, as most applications write them


# ------------------------------------------------------------------ sending


def test_raw_and_simple_reach_the_sink_dkim_signed_with_their_events(
        relay: Admin, dns: DnsServer) -> None:
    publish_dkim(relay, dns, "example.com")
    key = new_key(relay, "app")
    ses = client(relay, key)
    raw = ses.send_email(
        FromEmailAddress="app@example.com",
        Destination={"ToAddresses": ["raw@ok.test"]},
        Content={"Raw": {"Data": raw_message("api raw", "raw@ok.test")}},
        EmailTags=[{"Name": "campaign", "Value": "launch"}])
    simple = ses.send_email(
        FromEmailAddress="App <app@example.com>",
        Destination={"ToAddresses": ["simple@ok.test"], "BccAddresses": ["hidden@ok.test"]},
        ReplyToAddresses=["help@example.com"],
        Content={"Simple": {"Subject": {"Data": "api simple"},
                            "Body": {"Text": {"Data": "plain words"},
                                     "Html": {"Data": "<p>html words</p>"}}}})
    for answer, subject in ((raw, "api raw"), (simple, "api simple")):
        mid = answer["MessageId"]
        got = wait_for(f"{subject} in the sink", lambda s=subject: in_sink(relay, s))
        data = got[0].data
        assert b"DKIM-Signature:" in data and b"d=example.com" in data
        assert b"\r\nMessage-ID: " in data or b"\r\nMessage-Id: " in data
        assert b"\n\n" not in data.replace(b"\r\n", b"")  # CRLF throughout
        send = wait_for("the Send event", lambda m=mid: events(relay, m, "Send"))[0]
        tags = send["mail"]["tags"]
        assert tags["ses:operation"] == ["SendEmail"]
        assert tags["ses:caller-identity"] == [key[0]]
        wait_for("the Delivery event", lambda m=mid: events(relay, m, "Delivery"))
    assert events(relay, raw["MessageId"], "Send")[0]["mail"]["tags"]["campaign"] == \
        ["launch"]
    smtp_id = relay.send("smtp@ok.test", subject="smtp beside the api")
    smtp_send = wait_for("the SMTP Send event", lambda: events(relay, smtp_id, "Send"))[0]
    assert smtp_send["mail"]["tags"]["ses:operation"] == ["SendSmtpEmail"]
    assert "ses:caller-identity" not in smtp_send["mail"]["tags"]
    simple_msg = in_sink(relay, "api simple")
    assert sorted(r for m in simple_msg for r in m.rcpt_tos) == \
        ["hidden@ok.test", "simple@ok.test"]
    parsed = BytesParser().parsebytes(simple_msg[0].data)
    assert parsed["Bcc"] is None and parsed["Reply-To"] == "help@example.com"
    assert parsed.get_content_type() == "multipart/alternative"


def test_a_raw_message_without_destination_goes_to_its_header_recipients(
        relay: Admin) -> None:
    key = new_key(relay, "app")
    ses = client(relay, key)
    data = raw_message("api header rcpts", "hdr@ok.test").replace(
        b"\n\n", b"\nX-SES-MESSAGE-TAGS: team=a, ses:configuration-set=promo, "
        b"ses:caller-identity=AKIAFAKEFAKEFAKEFAKE\n\n", 1)
    mid = ses.send_email(Content={"Raw": {"Data": data}})["MessageId"]
    got = wait_for("the message", lambda: in_sink(relay, "api header rcpts"))
    assert got[0].rcpt_tos == ["hdr@ok.test"]
    assert b"X-SES-MESSAGE-TAGS" not in got[0].data
    tags = wait_for("Send", lambda: events(relay, mid, "Send"))[0]["mail"]["tags"]
    assert tags["team"] == ["a"] and tags["ses:caller-identity"] == [key[0]]
    assert "ses:configuration-set" not in tags  # a client's ses: tags are dropped


# ------------------------------------------------------------------ refusals


def test_signature_failures_are_the_sdk_exceptions(relay: Admin,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    key_id, secret = new_key(relay, "app")
    wrong = client(relay, (key_id, secret[:-1] + ("A" if secret[-1] != "A" else "B")))
    with pytest.raises(wrong.exceptions.ClientError) as caught:
        wrong.get_account()
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    unknown = client(relay, ("AKIA" + "Z" * 16, secret))
    with pytest.raises(unknown.exceptions.ClientError) as caught:
        unknown.get_account()
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # A request signed ten minutes ago (a replay, or a client with a wrong clock).
    skewed = client(relay, (key_id, secret))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: past)
    with pytest.raises(skewed.exceptions.ClientError) as caught:
        skewed.get_account()
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    monkeypatch.undo()
    assert client(relay, (key_id, secret)).get_account()["SendingEnabled"] is True
    # A body changed after it was signed (a proxy or an attacker rewriting the recipient).
    tampered = client(relay, (key_id, secret))

    def rewrite(request: Any, **kwargs: Any) -> None:
        request.body = request.body.replace(b"real@ok.test", b"evil@ok.test")

    tampered.meta.events.register("before-send.sesv2.SendEmail", rewrite)
    with pytest.raises(tampered.exceptions.ClientError) as caught:
        tampered.send_email(FromEmailAddress="app@example.com",
                            Destination={"ToAddresses": ["real@ok.test"]},
                            Content={"Simple": {"Subject": {"Data": "api tampered"},
                                                "Body": {"Text": {"Data": "x"}}}})
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_daily_quota_is_limit_exceeded_429(relay: Admin) -> None:
    cli(relay, "tenant", "add", "tq", "--no-sandbox", "--max-24h-send", "1")
    cli(relay, "user", "add", "tq-app", "--tenant", "tq", "--password-stdin",
        input=PASSWORD + "\n")
    ses = client(relay, new_key(relay, "tq-app"))
    account = ses.get_account()
    assert account["SendQuota"]["Max24HourSend"] == 1.0
    assert account["SendQuota"]["SentLast24Hours"] == 0.0
    assert account["ProductionAccessEnabled"] is True
    assert account["EnforcementStatus"] == "HEALTHY"
    request = {"FromEmailAddress": "app@example.com",
               "Destination": {"ToAddresses": ["quota@ok.test"]},
               "Content": {"Simple": {"Subject": {"Data": "api quota"},
                                      "Body": {"Text": {"Data": "x"}}}}}

    def first_accepted() -> bool:
        # The tenant store re-reads the spool every half second: retry until it knows tq.
        try:
            ses.send_email(**request)
        except ses.exceptions.ClientError:
            return False
        return True

    wait_for("the first message", first_accepted, timeout=5)
    with pytest.raises(ses.exceptions.LimitExceededException) as caught:
        ses.send_email(**request)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert "Daily message quota exceeded" in str(caught.value)
    assert ses.get_account()["SendQuota"]["SentLast24Hours"] == 1.0


def test_a_sender_the_credential_may_not_use_is_message_rejected(relay: Admin) -> None:
    cli(relay, "user", "add", "narrow", "--allow", "news@example.com", "--password-stdin",
        input=PASSWORD + "\n")
    ses = client(relay, new_key(relay, "narrow"))
    with pytest.raises(ses.exceptions.MessageRejected):
        ses.send_email(FromEmailAddress="ceo@example.com",
                       Destination={"ToAddresses": ["x@ok.test"]},
                       Content={"Simple": {"Subject": {"Data": "no"},
                                           "Body": {"Text": {"Data": "x"}}}})
    # The envelope is allowed, the From: header is not: refused as SMTP refuses it.
    with pytest.raises(ses.exceptions.MessageRejected):
        ses.send_email(FromEmailAddress="news@example.com",
                       Destination={"ToAddresses": ["x@ok.test"]},
                       Content={"Raw": {"Data": raw_message("no", "x@ok.test",
                                                            "ceo@example.com")}})


def test_bad_requests_and_unsupported_operations_name_the_field(relay: Admin) -> None:
    ses = client(relay, new_key(relay, "app"))
    with pytest.raises(ses.exceptions.BadRequestException) as caught:
        ses.send_email(FromEmailAddress="app@example.com",
                       Destination={"ToAddresses": ["x@ok.test"]},
                       Content={"Simple": {"Subject": {"Data": "x"}, "Body": {}}})
    assert "Content.Simple.Body" in str(caught.value)
    # A header smuggled into a parameter that becomes a header field.
    with pytest.raises(ses.exceptions.BadRequestException) as caught:
        ses.send_email(FromEmailAddress="app@example.com",
                       ConfigurationSetName="promo\r\nBcc: spy@ok.test",
                       Destination={"ToAddresses": ["x@ok.test"]},
                       Content={"Simple": {"Subject": {"Data": "x"},
                                           "Body": {"Text": {"Data": "x"}}}})
    assert "ConfigurationSetName" in str(caught.value)
    with pytest.raises(ses.exceptions.BadRequestException) as caught:
        ses.create_contact_list(ContactListName="people")
    assert "CreateContactList" in str(caught.value)
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.send_email(FromEmailAddress="app@example.com", ConfigurationSetName="nope",
                       Destination={"ToAddresses": ["x@ok.test"]},
                       Content={"Simple": {"Subject": {"Data": "x"},
                                           "Body": {"Text": {"Data": "x"}}}})


def test_identities_are_listed_for_the_key(relay: Admin) -> None:
    cli(relay, "identity", "add", "listed.example")
    ses = client(relay, new_key(relay, "app"))
    names = wait_for("the identity", lambda: [
        i["IdentityName"] for i in ses.list_email_identities()["EmailIdentities"]
        if i["IdentityName"] == "listed.example"])
    assert names == ["listed.example"]
    got = ses.get_email_identity(EmailIdentity="listed.example")
    assert got["IdentityType"] == "DOMAIN" and got["VerifiedForSendingStatus"] is False
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_email_identity(EmailIdentity="absent.example")


def test_an_oversized_body_is_refused_before_it_is_read(relay: Admin) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", relay.data["api_port"], timeout=10)
    conn.putrequest("POST", "/v2/email/outbound-emails")
    conn.putheader("Content-Length", str(50 * 1000 * 1000))
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    conn.send(b"{" + b" " * 1000)  # the rest never comes: the answer must not wait for it
    resp = conn.getresponse()
    assert resp.status == 413
    assert resp.getheader("x-amzn-ErrorType") == "RequestEntityTooLargeException"
    conn.close()
    # Unsigned: refused as AWS refuses it, never processed.
    conn = http.client.HTTPConnection("127.0.0.1", relay.data["api_port"], timeout=10)
    body = json.dumps({"Content": {"Raw": {"Data": base64.b64encode(b"x").decode()}}})
    conn.request("POST", "/v2/email/outbound-emails", body=body)
    resp = conn.getresponse()
    assert resp.status == 403
    assert resp.getheader("x-amzn-ErrorType") == "MissingAuthenticationTokenException"


def test_rate_sandbox_and_pause_are_the_ses_exceptions(relay: Admin) -> None:
    cli(relay, "tenant", "add", "tr", "--no-sandbox", "--max-send-rate", "1")
    cli(relay, "user", "add", "tr-app", "--tenant", "tr", "--password-stdin",
        input=PASSWORD + "\n")
    cli(relay, "tenant", "add", "ts")  # in the sandbox
    cli(relay, "user", "add", "ts-app", "--tenant", "ts", "--password-stdin",
        input=PASSWORD + "\n")
    simple = {"Subject": {"Data": "api limits"}, "Body": {"Text": {"Data": "x"}}}

    def send(ses: Any, to: str) -> None:
        ses.send_email(FromEmailAddress="app@example.com",
                       Destination={"ToAddresses": [to]}, Content={"Simple": simple})

    rate = client(relay, new_key(relay, "tr-app"))

    def rate_refused() -> str:
        # The tenant store re-reads the spool every half second; one message a second
        # passes, the next within that second is refused.
        try:
            send(rate, "r1@ok.test")
            send(rate, "r2@ok.test")
        except rate.exceptions.TooManyRequestsException as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            return str(e)
        return ""

    assert "Maximum sending rate exceeded" in wait_for("a rate refusal", rate_refused)
    sandbox = client(relay, new_key(relay, "ts-app"))

    def sandbox_refused() -> str:
        try:
            send(sandbox, "stranger@ok.test")
        except sandbox.exceptions.MessageRejected as e:
            return str(e)
        return ""

    assert "not verified" in wait_for("a sandbox refusal", sandbox_refused)
    cli(relay, "tenant", "pause", "tr")

    def pause_refused() -> bool:
        time.sleep(1.0)  # a second apart: the rate limit is not what refuses
        try:
            send(rate, "r3@ok.test")
        except rate.exceptions.SendingPausedException:
            return True
        return False

    assert wait_for("a pause refusal", pause_refused)
    assert rate.get_account()["SendingEnabled"] is False


def test_suppressed_destinations_put_get_list_delete(relay: Admin) -> None:
    ses = client(relay, new_key(relay, "app"))
    ses.put_suppressed_destination(EmailAddress="Gone@OK.test", Reason="BOUNCE")
    ses.put_suppressed_destination(EmailAddress="angry@ok.test", Reason="COMPLAINT")
    got = ses.get_suppressed_destination(EmailAddress="gone@ok.test")["SuppressedDestination"]
    assert got["EmailAddress"] == "gone@ok.test" and got["Reason"] == "BOUNCE"
    assert isinstance(got["LastUpdateTime"], dt.datetime)
    listed = ses.list_suppressed_destinations(Reasons=["COMPLAINT"])
    assert [s["EmailAddress"] for s in listed["SuppressedDestinationSummaries"]] == \
        ["angry@ok.test"]
    first = ses.list_suppressed_destinations(PageSize=1)
    assert len(first["SuppressedDestinationSummaries"]) == 1 and "NextToken" in first
    second = ses.list_suppressed_destinations(PageSize=1, NextToken=first["NextToken"])
    assert second["SuppressedDestinationSummaries"] != first["SuppressedDestinationSummaries"]
    # A suppressed recipient is accepted, then not delivered (as SES).
    mid = ses.send_email(FromEmailAddress="app@example.com",
                         Destination={"ToAddresses": ["gone@ok.test"]},
                         Content={"Simple": {"Subject": {"Data": "api suppressed"},
                                             "Body": {"Text": {"Data": "x"}}}})["MessageId"]
    wait_for("the Bounce event", lambda: events(relay, mid, "Bounce"))
    assert not in_sink(relay, "api suppressed")
    ses.delete_suppressed_destination(EmailAddress="gone@ok.test")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_suppressed_destination(EmailAddress="gone@ok.test")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.delete_suppressed_destination(EmailAddress="gone@ok.test")
    with pytest.raises(ses.exceptions.BadRequestException):
        ses.put_suppressed_destination(EmailAddress="x@ok.test", Reason="TIRED")


def test_templates_crud_render_send_and_a_rendering_failure(relay: Admin) -> None:
    ses = client(relay, new_key(relay, "app"))
    ses.create_email_template(TemplateName="welcome", TemplateContent={
        "Subject": "Hello {{name}}",
        "Text": ("Dear {{name}},{{#if vip}} a gift awaits.{{/if}}"
                 "{{#each items}} [{{this}}]{{/each}}"),
        "Html": "<p>Dear {{name}}</p>"})
    with pytest.raises(ses.exceptions.AlreadyExistsException):
        ses.create_email_template(TemplateName="welcome",
                                  TemplateContent={"Subject": "x", "Text": "y"})
    assert ses.get_email_template(TemplateName="welcome")["TemplateContent"]["Subject"] == \
        "Hello {{name}}"
    assert "welcome" in [t["TemplateName"] for t in
                         ses.list_email_templates()["TemplatesMetadata"]]
    rendered = ses.test_render_email_template(
        TemplateName="welcome", TemplateData=json.dumps({"name": "Ann", "vip": True,
                                                         "items": ["a", "b"]}))
    assert "Subject: Hello Ann" in rendered["RenderedTemplate"]
    mid = ses.send_email(
        FromEmailAddress="app@example.com", Destination={"ToAddresses": ["tpl@ok.test"]},
        Content={"Template": {"TemplateName": "welcome", "TemplateData": json.dumps(
            {"name": "Bo", "vip": True, "items": ["x", "y"]})}})["MessageId"]
    got = wait_for("the templated message", lambda: in_sink(relay, "Hello Bo"))
    text = BytesParser().parsebytes(got[0].data)
    plain = next(p for p in text.walk() if p.get_content_type() == "text/plain")
    assert "Dear Bo, a gift awaits. [x] [y]" in plain.get_payload(decode=True).decode()
    assert events(relay, mid, "Send")
    # Data without `name`: accepted, nothing sent, a Rendering Failure event (as SES).
    failed = ses.send_email(
        FromEmailAddress="app@example.com", Destination={"ToAddresses": ["tpl2@ok.test"]},
        Content={"Template": {"TemplateName": "welcome", "TemplateData": "{}"}})["MessageId"]
    event = wait_for("the Rendering Failure", lambda: events(relay, failed,
                                                             "Rendering Failure"))[0]
    assert event["failure"]["templateName"] == "welcome"
    assert "name" in event["failure"]["errorMessage"]
    assert not events(relay, failed, "Send")
    ses.update_email_template(TemplateName="welcome",
                              TemplateContent={"Subject": "Hi {{name}}", "Text": "t"})
    ses.delete_email_template(TemplateName="welcome")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_email_template(TemplateName="welcome")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.send_email(FromEmailAddress="app@example.com",
                       Destination={"ToAddresses": ["tpl@ok.test"]},
                       Content={"Template": {"TemplateName": "welcome",
                                             "TemplateData": "{}"}})


def test_https_with_the_configured_certificate(tmp_path: Path, dns: DnsServer,
                                               sinks: tuple[Sink, Sink]) -> None:
    port = free_port()
    # make_admin_relay writes its SMTP certificate to tmp_path; the API serves it too.
    admin = make_admin_relay(tmp_path, dns, sinks, api={
        "enabled": True, "address": f"127.0.0.1:{port}",
        "tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")})
    try:
        assert f"SES API on 127.0.0.1:{port} port {port} (https)" in admin.relay.stdout()
        ca = tmp_path / "ca.pem"
        admin.tls.ca.cert_pem.write_to_path(str(ca))
        key = new_key(admin, "app")
        ses = boto3.client("sesv2", region_name=REGION, endpoint_url=f"https://127.0.0.1:{port}",
                           aws_access_key_id=key[0], aws_secret_access_key=key[1],
                           verify=str(ca), config=BotoConfig(retries={"total_max_attempts": 1}))
        assert ses.get_account()["SendingEnabled"] is True
    finally:
        admin.relay.stop()


def test_ses_v1_send_raw_email_send_email_and_quota(relay: Admin) -> None:
    key = new_key(relay, "app")
    ses = boto3.client(
        "ses", region_name=REGION, endpoint_url=f"http://127.0.0.1:{relay.data['api_port']}",
        aws_access_key_id=key[0], aws_secret_access_key=key[1],
        config=BotoConfig(retries={"total_max_attempts": 1}))
    raw = ses.send_raw_email(Source="app@example.com", Destinations=["v1raw@ok.test"],
                             RawMessage={"Data": raw_message("api v1 raw", "v1raw@ok.test")},
                             Tags=[{"Name": "kind", "Value": "v1"}])
    simple = ses.send_email(Source="app@example.com",
                            Destination={"ToAddresses": ["v1@ok.test"]},
                            Message={"Subject": {"Data": "api v1 simple"},
                                     "Body": {"Text": {"Data": "words"}}})
    for answer, subject in ((raw, "api v1 raw"), (simple, "api v1 simple")):
        wait_for(subject, lambda s=subject: in_sink(relay, s))
        send = wait_for("Send", lambda a=answer: events(relay, a["MessageId"], "Send"))[0]
        assert send["mail"]["tags"]["ses:caller-identity"] == [key[0]]
    assert events(relay, raw["MessageId"], "Send")[0]["mail"]["tags"]["kind"] == ["v1"]
    assert ses.get_send_quota()["Max24HourSend"] == -1.0
    with pytest.raises(ses.exceptions.ClientError) as caught:
        ses.send_email(Source="app@example.com", Destination={"ToAddresses": []},
                       Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}})
    assert caught.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "recipient" in str(caught.value)
    with pytest.raises(ses.exceptions.ConfigurationSetDoesNotExistException):
        ses.send_raw_email(Source="app@example.com", Destinations=["x@ok.test"],
                           ConfigurationSetName="nope",
                           RawMessage={"Data": raw_message("x", "x@ok.test")})
    with pytest.raises(ses.exceptions.ClientError) as caught:
        ses.verify_email_identity(EmailAddress="a@example.com")
    assert caught.value.response["Error"]["Code"] == "InvalidAction"
    assert "VerifyEmailIdentity" in str(caught.value)
    wrong = boto3.client(
        "ses", region_name=REGION, endpoint_url=f"http://127.0.0.1:{relay.data['api_port']}",
        aws_access_key_id=key[0], aws_secret_access_key="x" * 40,
        config=BotoConfig(retries={"total_max_attempts": 1}))
    with pytest.raises(wrong.exceptions.ClientError) as caught:
        wrong.get_send_quota()
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_bulk_email_per_entry_data_and_results(relay: Admin) -> None:
    ses = client(relay, new_key(relay, "app"))
    ses.create_email_template(TemplateName="bulk", TemplateContent={
        "Subject": "Bulk for {{name}}", "Text": "Hi {{name}} from {{team}}"})
    got = ses.send_bulk_email(
        FromEmailAddress="app@example.com",
        DefaultContent={"Template": {"TemplateName": "bulk",
                                     "TemplateData": json.dumps({"name": "all",
                                                                 "team": "ops"})}},
        DefaultEmailTags=[{"Name": "run", "Value": "r1"}],
        BulkEmailEntries=[
            {"Destination": {"ToAddresses": ["b1@ok.test"]},
             "ReplacementEmailContent": {"ReplacementTemplate": {
                 "ReplacementTemplateData": json.dumps({"name": "Cy", "team": "web"})}}},
            {"Destination": {"ToAddresses": ["b2@ok.test"]}},
            {"Destination": {"ToAddresses": ["not an address"]}},
            {"Destination": {"ToAddresses": ["b4@ok.test"]},
             "ReplacementEmailContent": {"ReplacementTemplate": {
                 "ReplacementTemplateData": "{}"}}},
        ])["BulkEmailEntryResults"]
    assert [r["Status"] for r in got] == ["SUCCESS", "SUCCESS", "INVALID_PARAMETER",
                                          "SUCCESS"]
    assert "not an address" in got[2]["Error"]
    first = wait_for("entry 1", lambda: in_sink(relay, "Bulk for Cy"))[0]
    assert first.rcpt_tos == ["b1@ok.test"] and b"Hi Cy from web" in first.data
    second = wait_for("entry 2", lambda: in_sink(relay, "Bulk for all"))[0]
    assert second.rcpt_tos == ["b2@ok.test"]
    send = wait_for("Send", lambda: events(relay, got[0]["MessageId"], "Send"))[0]
    assert send["mail"]["tags"]["run"] == ["r1"]
    failure = wait_for("Rendering Failure", lambda: events(
        relay, got[3]["MessageId"], "Rendering Failure"))[0]
    assert failure["failure"]["templateName"] == "bulk"


def test_configuration_sets_and_dkim_tokens(relay: Admin) -> None:
    ses = client(relay, new_key(relay, "app"))
    assert ses.list_configuration_sets()["ConfigurationSets"] == ["promo", "strict"]
    strict = ses.get_configuration_set(ConfigurationSetName="strict")
    assert strict["DeliveryOptions"]["TlsPolicy"] == "REQUIRE"
    assert strict["SuppressionOptions"]["SuppressedReasons"] == ["BOUNCE"]
    assert strict["SendingOptions"]["SendingEnabled"] is True
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_configuration_set(ConfigurationSetName="absent")
    cli(relay, "dkim", "keygen", "tokens.example")
    cli(relay, "identity", "add", "tokens.example")
    dkim = wait_for("the identity", lambda: _identity(ses, "tokens.example"))["DkimAttributes"]
    assert dkim["Tokens"] and dkim["Status"] == "PENDING" and dkim["SigningEnabled"] is True


def _identity(ses: Any, name: str) -> dict[str, Any] | None:
    try:
        got: dict[str, Any] = ses.get_email_identity(EmailIdentity=name)
    except ses.exceptions.NotFoundException:
        return None
    return got


def test_create_and_delete_an_email_identity_with_its_dkim_tokens(relay: Admin) -> None:
    ses = client(relay, new_key(relay, "app"))
    made = ses.create_email_identity(EmailIdentity="made.example")
    assert made["IdentityType"] == "DOMAIN" and made["VerifiedForSendingStatus"] is False
    tokens = made["DkimAttributes"]["Tokens"]
    assert tokens and made["DkimAttributes"]["Status"] == "PENDING"
    state = KeyStore.in_state_dir(relay.state, SystemClock()).get("made.example")
    assert state is not None and state.active is not None
    assert tokens == [k.selector for k in state.active.keys]
    with pytest.raises(ses.exceptions.AlreadyExistsException):
        ses.create_email_identity(EmailIdentity="made.example")
    with pytest.raises(ses.exceptions.BadRequestException):
        ses.create_email_identity(EmailIdentity="not a domain")
    address = ses.create_email_identity(EmailIdentity="someone@made.example")
    assert address["IdentityType"] == "EMAIL_ADDRESS"
    ses.delete_email_identity(EmailIdentity="made.example")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.get_email_identity(EmailIdentity="made.example")
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.delete_email_identity(EmailIdentity="made.example")


def test_tenant_name_picks_a_tenant_the_credential_may_use(relay: Admin) -> None:
    cli(relay, "tenant", "add", "tp", "--no-sandbox")
    cli(relay, "user", "add", "platform", "--tenants", "tp", "--password-stdin",
        input=PASSWORD + "\n")
    ses = client(relay, new_key(relay, "platform"))
    simple = {"Subject": {"Data": "api tenant"}, "Body": {"Text": {"Data": "x"}}}

    def sent_as_tp() -> str:
        try:
            return str(ses.send_email(FromEmailAddress="app@example.com", TenantName="tp",
                                      Destination={"ToAddresses": ["tenant@ok.test"]},
                                      Content={"Simple": simple})["MessageId"])
        except ses.exceptions.ClientError:
            return ""  # until the tenant store has re-read the spool

    mid = wait_for("a message of tenant tp", sent_as_tp, timeout=5)
    send = wait_for("Send", lambda: events(relay, mid, "Send"))[0]
    assert send["tenant"] == "tp" and send["mail"]["tags"]["ses:tenant"] == ["tp"]
    with pytest.raises(ses.exceptions.MessageRejected) as caught:
        ses.send_email(FromEmailAddress="app@example.com", TenantName="tq",
                       Destination={"ToAddresses": ["tenant@ok.test"]},
                       Content={"Simple": simple})
    assert "tenant tq is not allowed" in str(caught.value)


def test_a_raw_line_over_998_octets_is_refused_as_data_refuses_it(relay: Admin) -> None:
    ses = client(relay, new_key(relay, "app"))
    data = (b"From: app@example.com\nTo: long@ok.test\nSubject: api long line\n\n"
            + b"x" * 999 + b"\n")
    with pytest.raises(ses.exceptions.MessageRejected) as caught:
        ses.send_email(Content={"Raw": {"Data": data}})
    assert "998" in str(caught.value)
    ses.send_email(Content={"Raw": {"Data": data.replace(b"x" * 999, b"x" * 998)}})


def test_a_reload_changes_the_region_clients_sign_for(tmp_path: Path, dns: DnsServer,
                                                      sinks: tuple[Sink, Sink]) -> None:
    port = free_port()
    admin = make_admin_relay(tmp_path, dns, sinks,
                             api={"enabled": True, "address": f"127.0.0.1:{port}"})
    try:
        admin.data["api_port"] = port
        key = new_key(admin, "app")
        assert client(admin, key).get_account()["SendingEnabled"] is True
        data = dict(admin.data)
        data["api"] = {"enabled": True, "address": f"127.0.0.1:{port}",
                       "region": "eu-west-1"}
        data.pop("api_port")
        write_config(admin.config, data)
        os.kill(admin.relay.pid, signal.SIGHUP)
        line = wait_for("the reload", lambda: next(
            (x for x in admin.relay.stdout().splitlines() if "relay: reload" in x), ""))
        assert "relay: reloaded" in line and "[api]" not in line, line
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            client(admin, key).get_account()
        assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
        eu = boto3.client("sesv2", region_name="eu-west-1",
                          endpoint_url=f"http://127.0.0.1:{port}",
                          aws_access_key_id=key[0], aws_secret_access_key=key[1])
        assert eu.get_account()["SendingEnabled"] is True
    finally:
        admin.relay.stop()


def test_mail_from_attributes_put_get_and_the_return_path_at_the_sink(
        relay: Admin, dns: DnsServer) -> None:
    ses = client(relay, new_key(relay, "app"))
    ses.create_email_identity(EmailIdentity="mf.example")
    assert "MailFromAttributes" not in ses.get_email_identity(EmailIdentity="mf.example")
    dns.set("bounce.mf.example", "MX", "10 mx.ok.test")
    ses.put_email_identity_mail_from_attributes(
        EmailIdentity="mf.example", MailFromDomain="bounce.mf.example",
        BehaviorOnMxFailure="REJECT_MESSAGE")
    got = ses.get_email_identity(EmailIdentity="mf.example")["MailFromAttributes"]
    assert got == {"MailFromDomain": "bounce.mf.example", "MailFromDomainStatus": "SUCCESS",
                   "BehaviorOnMxFailure": "REJECT_MESSAGE"}

    def send(subject: str) -> None:
        ses.send_email(FromEmailAddress="app@mf.example",
                       Destination={"ToAddresses": ["mf@ok.test"]},
                       Content={"Simple": {"Subject": {"Data": subject},
                                           "Body": {"Text": {"Data": "x"}}}})

    send("custom mail from")
    (msg,) = wait_for("the message", lambda: in_sink(relay, "custom mail from"))
    assert msg.mail_from.endswith("@bounce.mf.example"), msg.mail_from
    # REJECT_MESSAGE and no MX: refused at submission, as SES does.
    ses.put_email_identity_mail_from_attributes(
        EmailIdentity="mf.example", MailFromDomain="nomx.mf.example",
        BehaviorOnMxFailure="REJECT_MESSAGE")
    assert ses.get_email_identity(EmailIdentity="mf.example")["MailFromAttributes"][
        "MailFromDomainStatus"] == "FAILED"
    with pytest.raises(ses.exceptions.MailFromDomainNotVerifiedException):
        send("no mx")
    # An empty MailFromDomain clears it: the default return path again.
    ses.put_email_identity_mail_from_attributes(EmailIdentity="mf.example",
                                                MailFromDomain="")
    assert "MailFromAttributes" not in ses.get_email_identity(EmailIdentity="mf.example")
    send("default mail from")
    (msg,) = wait_for("the message", lambda: in_sink(relay, "default mail from"))
    assert not msg.mail_from.endswith("mf.example"), msg.mail_from
    with pytest.raises(ses.exceptions.BadRequestException) as caught:
        ses.put_email_identity_mail_from_attributes(EmailIdentity="mf.example",
                                                    MailFromDomain="bounce.other.example")
    assert "MailFromDomain" in str(caught.value)
    with pytest.raises(ses.exceptions.BadRequestException) as caught:
        ses.put_email_identity_mail_from_attributes(
            EmailIdentity="mf.example", MailFromDomain="b.mf.example",
            BehaviorOnMxFailure="SOMETIMES")
    assert "BehaviorOnMxFailure" in str(caught.value)
    with pytest.raises(ses.exceptions.NotFoundException):
        ses.put_email_identity_mail_from_attributes(EmailIdentity="absent.example",
                                                    MailFromDomain="b.absent.example")


def test_mail_from_attributes_only_on_the_keys_tenant_identities(relay: Admin) -> None:
    cli(relay, "tenant", "add", "mt", "--no-sandbox")
    cli(relay, "user", "add", "mt-app", "--tenant", "mt", "--password-stdin",
        input=PASSWORD + "\n")
    mine = client(relay, new_key(relay, "mt-app"))
    default = client(relay, new_key(relay, "app"))
    default.create_email_identity(EmailIdentity="shared-mf.example")

    def made() -> bool:
        try:
            mine.create_email_identity(EmailIdentity="mt-mf.example")
        except mine.exceptions.ClientError:
            return False  # until the tenant store has re-read the spool
        return True

    wait_for("mt's identity", made, timeout=5)
    mine.put_email_identity_mail_from_attributes(EmailIdentity="mt-mf.example",
                                                 MailFromDomain="b.mt-mf.example")
    assert mine.get_email_identity(EmailIdentity="mt-mf.example")["MailFromAttributes"][
        "MailFromDomain"] == "b.mt-mf.example"
    with pytest.raises(default.exceptions.NotFoundException):
        default.put_email_identity_mail_from_attributes(EmailIdentity="mt-mf.example",
                                                        MailFromDomain="c.mt-mf.example")
    with pytest.raises(mine.exceptions.BadRequestException):
        mine.put_email_identity_mail_from_attributes(EmailIdentity="shared-mf.example",
                                                     MailFromDomain="b.shared-mf.example")
