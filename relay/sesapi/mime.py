"""PURE: the RFC 5322 message of SendEmail's `Content.Simple`, and of `Content.Template` once
rendered (relay/sesapi/render.py).

Built with the standard library's EmailMessage under policy SMTP (CRLF, folded headers, RFC
2047 encoded words for non-ASCII subjects and display names, RFC 2231 file names,
quoted-printable or base64 bodies chosen by the stdlib so no line exceeds 998 octets), never
assembled by hand. The layout SES gives:
- text or HTML alone: one text/plain or text/html part; both: multipart/alternative;
- INLINE attachments with an HTML body: multipart/related around the HTML (so `cid:` works);
- any other attachment: multipart/mixed around the body.
From, To, Cc and Reply-To are written; Bcc never is (the envelope carries it). Message-ID and
Date are not written here: submission adds them when absent, as for SMTP
(relay/smtp/message.py `complete_and_list_fields`, fed by `scan_header_section(body, 0, ...)`).

Every value that reaches a header is checked first: a CR or LF (header injection), or a value
outside SES's limits, is a `MessageError` naming the field as the request spells it
("Content.Simple.Headers[2].Value: ..."), which the API answers as BadRequestException.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

# SES MessageHeader: a name of printable ASCII but ':' (at most 126), a value of printable
# ASCII (at most 995, name and value together at most 996), at most 15 of them.
MAX_HEADERS = 15
_HEADER_NAME = re.compile(r"[!-9;-~]{1,126}\Z")
_HEADER_VALUE = re.compile(r"[ -~]{1,995}\Z")
# Fields the message's own structure sets; a custom header may not replace them.
_RESERVED = frozenset({
    "from", "to", "cc", "bcc", "reply-to", "subject", "mime-version", "content-type",
    "content-transfer-encoding", "content-disposition"})
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})\Z")
_DISPOSITIONS = {"ATTACHMENT": "attachment", "INLINE": "inline"}
_ENCODINGS = {"BASE64": "base64", "QUOTED_PRINTABLE": "quoted-printable", "SEVEN_BIT": "7bit"}
# File extensions SES refuses in attachments ("Amazon SES unsupported attachment types",
# in the SES developer guide): extensions used often as attack vectors.
UNSUPPORTED_EXTENSIONS = frozenset({
    "ade", "adp", "app", "asp", "bas", "bat", "cer", "chm", "cmd", "com", "cpl", "crt", "csh",
    "der", "exe", "fxp", "gadget", "hlp", "hta", "inf", "ins", "isp", "its", "js", "jse",
    "ksh", "lib", "lnk", "mad", "maf", "mag", "mam", "maq", "mar", "mas", "mat", "mau", "mav",
    "maw", "mda", "mdb", "mde", "mdt", "mdw", "mdz", "msc", "msh", "msh1", "msh2", "mshxml",
    "msh1xml", "msh2xml", "msi", "msp", "mst", "ops", "pcd", "pif", "plg", "prf", "prg",
    "reg", "scf", "scr", "sct", "shb", "shs", "sys", "ps1", "ps1xml", "ps2", "ps2xml", "psc1",
    "psc2", "tmp", "url", "vb", "vbe", "vbs", "vps", "vsmacros", "vss", "vst", "vsw", "vxd",
    "ws", "wsc", "wsf", "wsh", "xnk"})
# Content types by extension when an attachment gives none (no mimetypes: it reads files).
_TYPES = {
    "pdf": "application/pdf", "zip": "application/zip", "json": "application/json",
    "txt": "text/plain", "csv": "text/csv", "html": "text/html", "htm": "text/html",
    "ics": "text/calendar", "xml": "application/xml", "png": "image/png",
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "svg": "image/svg+xml",
    "webp": "image/webp", "doc": "application/msword", "xls": "application/vnd.ms-excel",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


class MessageError(ValueError):
    """A request the message cannot be built from; the text names the field."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Attachment:
    raw_content: bytes
    file_name: str
    content_type: str = ""  # "": from the file name's extension
    disposition: str = "ATTACHMENT"  # or INLINE
    content_id: str = ""
    transfer_encoding: str = "BASE64"  # or QUOTED_PRINTABLE, SEVEN_BIT
    description: str = ""


@dataclass(frozen=True, slots=True)
class Body:
    data: str
    charset: str = ""  # "": UTF-8 (ASCII stays 7bit)


# ---------------------------------------------------------------------- checks

def _one_line(value: str, field_name: str) -> str:
    if not isinstance(value, str):
        raise MessageError(field_name, "expected a string")
    if "\r" in value or "\n" in value:
        raise MessageError(field_name, "must not contain a line break (CR or LF)")
    if "\x00" in value:
        raise MessageError(field_name, "must not contain a NUL character")
    return value


def _addresses(values: Sequence[str], field_name: str, *, indexed: bool = True
               ) -> list[Address]:
    out: list[Address] = []
    for i, value in enumerate(values):
        name = f"{field_name}[{i}]" if indexed else field_name
        _one_line(value, name)
        probe = EmailMessage(policy=SMTP)
        try:
            probe["To"] = value
            header: Any = probe["To"]
            found = list(header.addresses)
        except (ValueError, IndexError, TypeError) as e:
            raise MessageError(name, f"not an email address ({e})") from None
        if len(found) != 1 or "@" not in found[0].addr_spec \
                or not found[0].username or not found[0].domain:
            raise MessageError(name, f"expected one email address, got {value!r}")
        out.append(found[0])
    return out


def _custom_headers(headers: Sequence[tuple[str, str]], field_name: str
                    ) -> list[tuple[str, str]]:
    if len(headers) > MAX_HEADERS:
        raise MessageError(field_name, f"at most {MAX_HEADERS} headers, got {len(headers)}")
    out: list[tuple[str, str]] = []
    for i, (name, value) in enumerate(headers):
        where = f"{field_name}[{i}]"
        _one_line(name, f"{where}.Name")
        _one_line(value, f"{where}.Value")
        if not _HEADER_NAME.match(name):
            raise MessageError(f"{where}.Name", "expected 1-126 printable ASCII characters "
                               f"other than ':', got {name!r}")
        if not _HEADER_VALUE.match(value):
            raise MessageError(f"{where}.Value", "expected 1-995 printable ASCII characters")
        if len(name) + len(value) > 996:
            raise MessageError(where, "name and value together exceed 996 characters")
        if name.lower() in _RESERVED:
            raise MessageError(f"{where}.Name", f"{name} is set from the request's own "
                               "fields and cannot be given as a header")
        out.append((name, value))
    return out


def _charset(charset: str, field_name: str) -> str:
    if not charset:
        return "utf-8"
    _one_line(charset, field_name)
    try:
        "".encode(charset)
    except LookupError:
        raise MessageError(field_name, f"unknown character set {charset!r}") from None
    return charset


# ---------------------------------------------------------------------- building

def build_message(*, from_address: str, subject: str, text: Body | None = None,
                  html: Body | None = None, to: Sequence[str] = (), cc: Sequence[str] = (),
                  reply_to: Sequence[str] = (), headers: Sequence[tuple[str, str]] = (),
                  attachments: Sequence[Attachment] = (), field_prefix: str = "Content.Simple",
                  from_field: str = "FromEmailAddress") -> bytes:
    """The message bytes (CRLF line ends). MessageError names the offending field:
    From/To/Cc/Reply-To as `from_field` (SES v1: "Source"), Destination.ToAddresses[i], ...;
    the rest under `field_prefix` (SES v1: "Message")."""
    if text is None and html is None:
        raise MessageError(f"{field_prefix}.Body", "needs Text or Html")
    sender = _addresses([from_address], from_field, indexed=False)
    to_addrs = _addresses(to, "Destination.ToAddresses")
    cc_addrs = _addresses(cc, "Destination.CcAddresses")
    reply_addrs = _addresses(reply_to, "ReplyToAddresses")
    _one_line(subject, f"{field_prefix}.Subject.Data")
    extra = _custom_headers(headers, f"{field_prefix}.Headers")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender[0]
    if to_addrs:
        msg["To"] = to_addrs
    if cc_addrs:
        msg["Cc"] = cc_addrs
    if reply_addrs:
        msg["Reply-To"] = reply_addrs
    msg["Subject"] = subject
    for name, value in extra:
        msg[name] = value
    _set_body(msg, text, html, field_prefix)
    inline_html = html is not None
    for i, att in enumerate(attachments):
        _attach(msg, att, f"{field_prefix}.Attachments[{i}]", inline_html)
    for part in msg.walk():
        if part is not msg:  # the stdlib repeats it in parts it makes; once is enough
            del part["MIME-Version"]
    try:
        return msg.as_bytes(policy=SMTP)
    except (ValueError, UnicodeError) as e:  # anything the checks above let through
        raise MessageError(field_prefix, f"cannot be written as a message ({e})") from None


def _set_body(msg: EmailMessage, text: Body | None, html: Body | None, prefix: str) -> None:
    first = True
    for body, subtype, name in ((text, "plain", "Text"), (html, "html", "Html")):
        if body is None:
            continue
        where = f"{prefix}.Body.{name}"
        charset = _charset(body.charset, f"{where}.Charset")
        # Non-ASCII text goes quoted-printable, never 8bit (a next hop may lack 8BITMIME);
        # ASCII is 7bit unless a line is long (the stdlib then picks QP or base64).
        cte = None if body.data.isascii() else "quoted-printable"
        try:
            if first:
                msg.set_content(body.data, subtype=subtype, charset=charset, cte=cte)
            else:
                msg.add_alternative(body.data, subtype=subtype, charset=charset, cte=cte)
        except UnicodeError:
            raise MessageError(f"{where}.Data", f"cannot be encoded in {charset}") from None
        first = False


def _attach(msg: EmailMessage, att: Attachment, where: str, inline_html: bool) -> None:
    name = _one_line(att.file_name, f"{where}.FileName")
    if not name or len(name) > 255:
        raise MessageError(f"{where}.FileName", "expected 1-255 characters")
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    if extension in UNSUPPORTED_EXTENSIONS:
        raise MessageError(f"{where}.FileName", f"attachments of type .{extension} are not "
                           "accepted (SES's unsupported attachment types)")
    ctype = att.content_type or _TYPES.get(name.rpartition(".")[2].lower(),
                                           "application/octet-stream")
    _one_line(ctype, f"{where}.ContentType")
    m = _CONTENT_TYPE.match(ctype)
    if m is None or len(ctype) > 78:
        raise MessageError(f"{where}.ContentType", f"expected type/subtype, got {ctype!r}")
    disposition = _DISPOSITIONS.get(att.disposition or "ATTACHMENT")
    if disposition is None:
        raise MessageError(f"{where}.ContentDisposition",
                           f"expected ATTACHMENT or INLINE, got {att.disposition!r}")
    cte = _ENCODINGS.get(att.transfer_encoding or "BASE64")
    if cte is None:
        raise MessageError(f"{where}.ContentTransferEncoding", "expected BASE64, "
                           f"QUOTED_PRINTABLE or SEVEN_BIT, got {att.transfer_encoding!r}")
    if cte == "7bit" and (not att.raw_content.isascii() or b"\0" in att.raw_content or any(
            len(line) > 998 for line in att.raw_content.splitlines())):
        raise MessageError(f"{where}.ContentTransferEncoding", "SEVEN_BIT needs ASCII "
                           "content with lines of at most 998 characters")
    cid = _one_line(att.content_id, f"{where}.ContentId")
    if cid:
        cid = cid if cid.startswith("<") and cid.endswith(">") else f"<{cid}>"
        if len(cid) > 80 or any(c in cid[1:-1] for c in "<> \t"):
            raise MessageError(f"{where}.ContentId", "expected 1-78 characters without "
                               "spaces or angle brackets")
    description = _one_line(att.description, f"{where}.ContentDescription")
    if len(description) > 1000:
        raise MessageError(f"{where}.ContentDescription", "at most 1000 characters")
    headers = [f"Content-Description: {description}"] if description else None
    kwargs: dict[str, Any] = {"maintype": m.group(1), "subtype": m.group(2), "cte": cte,
                              "filename": name, "disposition": disposition,
                              "headers": headers}
    if cid:
        kwargs["cid"] = cid
    if disposition == "inline" and inline_html:
        html_part = msg.get_body(("related", "html"))
        if html_part is not None:
            html_part.add_related(att.raw_content, **kwargs)
            return
    msg.add_attachment(att.raw_content, **kwargs)


# ---------------------------------------------------------------------- request shapes

def _get(obj: Mapping[str, Any], key: str, where: str, kind: type, required: bool = False
         ) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise MessageError(f"{where}.{key}", "is required")
        return None
    if not isinstance(value, kind):
        raise MessageError(f"{where}.{key}", f"expected {kind.__name__}")
    return value


def _body(obj: Mapping[str, Any] | None, where: str) -> Body | None:
    if obj is None:
        return None
    if not isinstance(obj, Mapping):
        raise MessageError(where, "expected an object with Data")
    return Body(_get(obj, "Data", where, str, True), _get(obj, "Charset", where, str) or "")


def headers_of(value: Any, where: str) -> list[tuple[str, str]]:
    """SES's `Headers` list ([{Name, Value}]) as pairs."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MessageError(where, "expected a list of {Name, Value}")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise MessageError(here, "expected {Name, Value}")
        out.append((_get(item, "Name", here, str, True), _get(item, "Value", here, str, True)))
    return out


def attachments_of(value: Any, where: str) -> list[Attachment]:
    """SES's `Attachments` list. RawContent: bytes, or base64 text as the REST-JSON body
    carries a blob."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MessageError(where, "expected a list of attachments")
    out: list[Attachment] = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise MessageError(here, "expected an attachment object")
        raw = item.get("RawContent")
        if isinstance(raw, str):
            try:
                raw = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise MessageError(f"{here}.RawContent", "not valid base64") from None
        if not isinstance(raw, bytes | bytearray):
            raise MessageError(f"{here}.RawContent", "is required (base64)")
        out.append(Attachment(
            raw_content=bytes(raw), file_name=_get(item, "FileName", here, str, True),
            content_type=_get(item, "ContentType", here, str) or "",
            disposition=_get(item, "ContentDisposition", here, str) or "ATTACHMENT",
            content_id=_get(item, "ContentId", here, str) or "",
            transfer_encoding=_get(item, "ContentTransferEncoding", here, str) or "BASE64",
            description=_get(item, "ContentDescription", here, str) or ""))
    return out


def simple_message(simple: Mapping[str, Any], *, from_address: str, to: Sequence[str] = (),
                   cc: Sequence[str] = (), reply_to: Sequence[str] = (),
                   where: str = "Content.Simple", from_field: str = "FromEmailAddress"
                   ) -> bytes:
    """SendEmail's `Content.Simple` (the request's JSON object) as message bytes; SES v1's
    `Message` has the same shape (where="Message", from_field="Source")."""
    if not isinstance(simple, Mapping):
        raise MessageError(where, "expected an object")
    subject = _get(simple, "Subject", where, Mapping, True)
    body = _get(simple, "Body", where, Mapping, True)
    return build_message(
        from_address=from_address, to=to, cc=cc, reply_to=reply_to,
        subject=_get(subject, "Data", f"{where}.Subject", str, True),
        text=_body(body.get("Text"), f"{where}.Body.Text"),
        html=_body(body.get("Html"), f"{where}.Body.Html"),
        headers=headers_of(simple.get("Headers"), f"{where}.Headers"),
        attachments=attachments_of(simple.get("Attachments"), f"{where}.Attachments"),
        field_prefix=where, from_field=from_field)


def template_message(subject: str, text: str | None, html: str | None, *, from_address: str,
                     to: Sequence[str] = (), cc: Sequence[str] = (),
                     reply_to: Sequence[str] = (), template: Mapping[str, Any] | None = None,
                     where: str = "Content.Template") -> bytes:
    """A rendered template (relay/sesapi/render.py `Rendered`'s subject, text, html) as
    message bytes, with the `Content.Template` object's Headers and Attachments."""
    extra = template or {}
    return build_message(
        from_address=from_address, to=to, cc=cc, reply_to=reply_to, subject=subject,
        text=None if text is None else Body(text), html=None if html is None else Body(html),
        headers=headers_of(extra.get("Headers"), f"{where}.Headers"),
        attachments=attachments_of(extra.get("Attachments"), f"{where}.Attachments"),
        field_prefix=where)


def preview_message(subject: str, text: str | None, html: str | None) -> str:
    """TestRenderEmailTemplate's RenderedTemplate: the rendered parts as a MIME message
    (Subject and body; no addresses), as text."""
    _one_line(subject, "Subject")
    msg = EmailMessage(policy=SMTP)
    msg["Subject"] = subject
    _set_body(msg, None if text is None else Body(text),
              None if html is None else Body(html), "TemplateContent")
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]
    return msg.as_bytes(policy=SMTP).decode("ascii")
