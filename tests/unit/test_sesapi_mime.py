"""The message of SendEmail's Content.Simple and of a rendered Content.Template
(relay/sesapi/mime.py), read back with the standard library's parser: structure, non-ASCII
subjects, names and bodies, attachments, line lengths, and header injection refused naming
the field. Submission then adds Message-ID and Date as it does for SMTP."""

from __future__ import annotations

import base64
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

import pytest

from relay.sesapi.mime import (
    MessageError,
    preview_message,
    simple_message,
    template_message,
)
from relay.sesapi.render import compile_template, render
from relay.smtp.message import complete_and_list_fields, header_refusal, scan_header_section

FROM = "sender@example.com"


def parse(raw: bytes) -> EmailMessage:
    """Read back as a mail reader does (the stdlib parser wants LF line ends)."""
    msg = message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=default)
    assert isinstance(msg, EmailMessage)
    return msg


def simple(subject: str = "Hi", text: str | None = "plain", html: str | None = None,
           **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if text is not None:
        body["Text"] = {"Data": text}
    if html is not None:
        body["Html"] = {"Data": html}
    return {"Subject": {"Data": subject}, "Body": body, **extra}


def check_wire_form(raw: bytes) -> None:
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert raw.isascii()  # encoded words, quoted-printable, base64: no 8bit


def test_text_only_message_has_the_addresses_but_not_bcc() -> None:
    raw = simple_message(simple(), from_address=f"Sender <{FROM}>",
                         to=["a@example.org", "B <b@example.org>"], cc=["c@example.org"],
                         reply_to=["reply@example.com"])
    check_wire_form(raw)
    msg = parse(raw)
    assert msg["From"] == f"Sender <{FROM}>"
    assert msg["To"] == "a@example.org, B <b@example.org>"
    assert msg["Cc"] == "c@example.org"
    assert msg["Reply-To"] == "reply@example.com"
    assert msg["Bcc"] is None and msg["Message-ID"] is None and msg["Date"] is None
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content() == "plain\n"


def test_text_and_html_make_multipart_alternative() -> None:
    msg = parse(simple_message(simple(text="t", html="<p>h</p>"), from_address=FROM))
    assert msg.get_content_type() == "multipart/alternative"
    kinds = [p.get_content_type() for p in msg.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    html_part = msg.get_body(("html",))
    assert html_part is not None and html_part.get_content() == "<p>h</p>\n"


def test_non_ascii_subject_names_and_bodies_are_encoded() -> None:
    raw = simple_message(
        simple(subject="Grüße, 日本", text="Ünïcödé " + "long " * 400,
               html="<p>é</p>"),
        from_address=f"Jöhn Dœ <{FROM}>", to=["Zoë <z@example.org>"])
    check_wire_form(raw)
    assert b"=?utf-8?" in raw
    msg = parse(raw)
    assert msg["Subject"] == "Grüße, 日本"
    assert msg["From"].addresses[0].display_name == "Jöhn Dœ"
    assert msg["To"].addresses[0].display_name == "Zoë"
    plain = msg.get_body(("plain",))
    assert plain is not None and plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert plain.get_content().startswith("Ünïcödé long")


def test_a_body_charset_is_honoured_or_refused_naming_the_field() -> None:
    content = simple(text=None)
    content["Body"]["Text"] = {"Data": "café", "Charset": "ISO-8859-1"}
    msg = parse(simple_message(content, from_address=FROM))
    assert msg.get_content_charset() == "iso-8859-1" and msg.get_content() == "café\n"
    content["Body"]["Text"] = {"Data": "日本", "Charset": "ISO-8859-1"}
    with pytest.raises(MessageError, match=r"^Content\.Simple\.Body\.Text\.Data: cannot be "
                                           "encoded in ISO-8859-1"):
        simple_message(content, from_address=FROM)
    content["Body"]["Text"] = {"Data": "x", "Charset": "klingon"}
    with pytest.raises(MessageError, match=r"Body\.Text\.Charset: unknown character set"):
        simple_message(content, from_address=FROM)


def test_attachments_make_multipart_mixed_and_inline_ones_related() -> None:
    pdf = b"%PDF-1.4\x00\xff binary"
    logo = b"\x89PNG\r\n\x1a\n"
    raw = simple_message(simple(text="t", html='<img src="cid:logo">', Attachments=[
        {"RawContent": base64.b64encode(pdf).decode(), "FileName": "rapport été.pdf",
         "ContentDescription": "the report"},
        {"RawContent": logo, "FileName": "logo.png", "ContentDisposition": "INLINE",
         "ContentId": "logo"},
        {"RawContent": b"a,b\r\n1,2\r\n", "FileName": "data.csv",
         "ContentTransferEncoding": "SEVEN_BIT", "ContentType": "text/csv"},
    ]), from_address=FROM, to=["a@example.org"])
    check_wire_form(raw)
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/mixed"
    body, *files = list(msg.iter_parts())
    assert body.get_content_type() == "multipart/alternative"
    html_part = [p for p in body.iter_parts()][1]
    assert html_part.get_content_type() == "multipart/related"
    img = list(html_part.iter_parts())[1]
    assert img["Content-ID"] == "<logo>" and img.get_content_disposition() == "inline"
    assert img.get_content() == logo
    assert [f.get_filename() for f in files] == ["rapport été.pdf", "data.csv"]
    assert files[0].get_content_type() == "application/pdf"  # from the extension
    assert files[0]["Content-Description"] == "the report"
    assert files[0].get_content() == pdf
    assert files[1]["Content-Transfer-Encoding"] == "7bit"
    assert all(p["MIME-Version"] is None for p in msg.walk() if p is not msg)


@pytest.mark.parametrize("change, field", [
    ({"from_address": f"{FROM}\r\nBcc: victim@example.org"}, "FromEmailAddress"),
    ({"to": ["a@example.org\nBcc: victim@example.org"]}, r"Destination\.ToAddresses\[0\]"),
    ({"cc": ["ok@example.org", "x@example.org\r"]}, r"Destination\.CcAddresses\[1\]"),
    ({"reply_to": ["r@example.org\n"]}, r"ReplyToAddresses\[0\]"),
    ({"subject": "Hi\r\nBcc: victim@example.org"}, r"Content\.Simple\.Subject\.Data"),
    ({"headers": [{"Name": "X-A", "Value": "1\r\nBcc: victim@example.org"}]},
     r"Content\.Simple\.Headers\[0\]\.Value"),
    ({"headers": [{"Name": "X-A\nBcc", "Value": "1"}]}, r"Content\.Simple\.Headers\[0\]\.Name"),
    ({"attachments": [{"RawContent": b"x", "FileName": "a\r\nBcc: v@x.org"}]},
     r"Content\.Simple\.Attachments\[0\]\.FileName"),
    ({"attachments": [{"RawContent": b"x", "FileName": "a", "ContentId": "c\r\nX: y"}]},
     r"Content\.Simple\.Attachments\[0\]\.ContentId"),
])
def test_header_injection_is_refused_naming_the_field(change: dict[str, Any],
                                                      field: str) -> None:
    content = simple(subject=change.get("subject", "Hi"))
    if "headers" in change:
        content["Headers"] = change["headers"]
    if "attachments" in change:
        content["Attachments"] = change["attachments"]
    kwargs = {k: v for k, v in change.items()
              if k in ("from_address", "to", "cc", "reply_to")}
    kwargs.setdefault("from_address", FROM)
    with pytest.raises(MessageError, match=f"^{field}: must not contain a line break"):
        simple_message(content, **kwargs)


@pytest.mark.parametrize("headers, reason", [
    ([{"Name": "Subject", "Value": "other"}], r"Headers\[0\]\.Name: Subject is set from"),
    ([{"Name": "Bad:Name", "Value": "v"}], r"Headers\[0\]\.Name: expected 1-126"),
    ([{"Name": "X-U", "Value": "é"}], r"Headers\[0\]\.Value: expected 1-995 printable"),
    ([{"Name": f"X-{i}", "Value": "v"} for i in range(16)], "at most 15 headers"),
])
def test_custom_headers_follow_ses_rules(headers: list[dict[str, str]], reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        simple_message(simple(Headers=headers), from_address=FROM)
    ok = simple_message(simple(Headers=[{"Name": "List-Unsubscribe",
                                         "Value": "<https://example.com/u>"}]),
                        from_address=FROM)
    assert parse(ok)["List-Unsubscribe"] == "<https://example.com/u>"


@pytest.mark.parametrize("content, reason", [
    ({"Subject": {"Data": "s"}, "Body": {}}, r"Content\.Simple\.Body: needs Text or Html"),
    ({"Body": {"Text": {"Data": "t"}}}, r"Content\.Simple\.Subject: is required"),
    ({"Subject": {"Data": "s"}, "Body": {"Text": {}}}, r"Body\.Text\.Data: is required"),
    (simple(Attachments=[{"RawContent": "@@@", "FileName": "a"}]),
     r"Attachments\[0\]\.RawContent: not valid base64"),
    (simple(Attachments=[{"RawContent": "", "FileName": "a", "ContentType": "nope"}]),
     r"Attachments\[0\]\.ContentType: expected type/subtype"),
    (simple(Attachments=[{"RawContent": "", "FileName": "a",
                          "ContentDisposition": "HIDDEN"}]),
     r"Attachments\[0\]\.ContentDisposition: expected ATTACHMENT or INLINE"),
    (simple(Attachments=[{"RawContent": base64.b64encode(b"\xff").decode(), "FileName": "a",
                          "ContentTransferEncoding": "SEVEN_BIT"}]),
     r"Attachments\[0\]\.ContentTransferEncoding: SEVEN_BIT needs ASCII"),
])
def test_bad_content_is_refused_naming_the_field(content: dict[str, Any], reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        simple_message(content, from_address=FROM)


def test_addresses_must_be_addresses() -> None:
    for bad in ("not an address", "a@b.org, c@d.org", ""):
        with pytest.raises(MessageError, match=r"^Destination\.ToAddresses\[0\]: "):
            simple_message(simple(), from_address=FROM, to=[bad])


def test_a_rendered_template_becomes_a_message_with_its_headers_and_attachments() -> None:
    tpl = compile_template("Order {{id}}", "Thanks {{name}}", "<p>Thanks {{name}}</p>")
    out = render(tpl, {"id": 42, "name": "Zoë"})
    raw = template_message(out.subject, out.text, out.html, from_address=FROM,
                           to=["a@example.org"], template={
                               "Headers": [{"Name": "X-Order", "Value": "42"}],
                               "Attachments": [{"RawContent": b"r", "FileName": "r.txt"}]})
    check_wire_form(raw)
    msg = parse(raw)
    assert msg["Subject"] == "Order 42" and msg["X-Order"] == "42"
    plain = msg.get_body(("plain",))
    assert plain is not None and plain.get_content() == "Thanks Zoë\n"
    with pytest.raises(MessageError, match=r"^Content\.Template\.Headers\[0\]\.Name"):
        template_message("s", "t", None, from_address=FROM,
                         template={"Headers": [{"Name": "To", "Value": "x@y.org"}]})


def test_submission_completes_the_message_as_for_smtp() -> None:
    """What the API path hands to submission passes the DATA checks, and gains Message-ID
    and Date there, once."""
    raw = simple_message(simple(text="t", html="<p>h</p>"), from_address=FROM,
                         to=["a@example.org"])
    section = scan_header_section(raw, 0, 50)
    assert header_refusal(section, 50) is None
    assert section.from_value == FROM and not section.has_message_id
    body, added, _ = complete_and_list_fields(raw, section, hostname="relay.test",
                                              now=1_700_000_000.0, unique="u-1")
    assert added == {"Message-ID": "<u-1@relay.test>", "Date": "Tue, 14 Nov 2023 22:13:20 +0000"}
    msg = parse(body)
    assert msg["Message-ID"] == "<u-1@relay.test>" and msg.get_content_type() == \
        "multipart/alternative"


def test_preview_is_the_rendered_mime_message() -> None:
    text = preview_message("Hi Zoë", "t", "<p>h</p>")
    msg = parse(text.encode("ascii"))
    assert msg["Subject"] == "Hi Zoë" and msg.get_content_type() == "multipart/alternative"


def test_attachment_types_ses_refuses_are_refused() -> None:
    for name in ("setup.exe", "run.BAT", "x.tar.js", "macro.vbs"):
        with pytest.raises(MessageError, match=r"^Content\.Simple\.Attachments\[0\]\.FileName: "
                                               "attachments of type"):
            simple_message(simple(Attachments=[{"RawContent": b"x", "FileName": name}]),
                           from_address=FROM)
    ok = simple_message(simple(Attachments=[{"RawContent": b"x", "FileName": "exe"}]),
                        from_address=FROM)  # no extension: accepted
    assert b'filename="exe"' in ok


def test_ses_v1_message_shape_names_its_own_fields() -> None:
    with pytest.raises(MessageError, match=r"^Source: must not contain a line break"):
        simple_message(simple(), from_address="a@b.org\r\nX: y", where="Message",
                       from_field="Source")
    with pytest.raises(MessageError, match=r"^Message\.Subject\.Data: "):
        simple_message(simple(subject="a\nb"), from_address=FROM, where="Message",
                       from_field="Source")
