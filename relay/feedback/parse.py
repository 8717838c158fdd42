"""PURE parsing of feedback mail: DSN (RFC 3464), ARF (RFC 5965), auto-replies, text bounces.

`parse(data)` never raises on bad input: anything it cannot make sense of is a Report of
kind "unknown" (kept by the processor under state_dir/feedback/unparsed/). No I/O.
"""

from __future__ import annotations

import email
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?:[ :-]|$)")
_ADDR = re.compile(r"<?([A-Za-z0-9._%+=\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,})>?")
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|failure notice|returned mail|"
    r"mail delivery (failed|failure|subsystem)|undelivered mail|delivery failure|"
    r"non[- ]?delivery|could not be delivered|delivery has failed", re.IGNORECASE)
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery (subsystem|system)",
                     re.IGNORECASE)
_AUTOREPLY_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?(reply|response)|"
    r"autoreply|auto:|away from|on vacation|abwesenheit|absence|r[ée]ponse automatique)",
    re.IGNORECASE)


@dataclass
class RecipientStatus:
    address: str
    action: str          # failed | delayed | delivered | relayed | expanded
    status: str          # RFC 3463 code, e.g. "5.1.1"
    diagnostic: str      # e.g. "smtp; 550 5.1.1 user unknown"
    remote_mta: str = ""


@dataclass
class Report:
    kind: str                                   # dsn | arf | autoreply | text | unknown
    recipients: list[RecipientStatus] = field(default_factory=list)
    reporting_mta: str = ""
    feedback_type: str = ""                     # ARF Feedback-Type
    user_agent: str = ""
    arrival_date: float | None = None
    candidates: list[str] = field(default_factory=list)   # possible VERP return paths
    original_message_id: str = ""
    reason: str = ""                            # why a report is "unknown"
    refused: str = ""                           # over a MIME bound: refused, not parsed


def _field(msg: Message, name: str) -> str:
    value = msg.get(name)
    return re.sub(r"\s+", " ", str(value)).strip() if value is not None else ""


def _typed(value: str) -> str:
    """`rfc822; a@b` → `a@b`; `dns; mx.example` → `mx.example`."""
    return value.split(";", 1)[1].strip() if ";" in value else value.strip()


def _headers_of(part: Message) -> Message | None:
    """The headers of an attached original message (message/rfc822 or text/rfc822-headers)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    if isinstance(payload, str):
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else payload
        return HeaderParser(policy=compat32).parsestr(text, headersonly=True)
    return None


def _blocks(part: Message) -> list[Message]:
    """The field blocks of message/delivery-status or message/feedback-report."""
    payload = part.get_payload()
    if isinstance(payload, list) and all(isinstance(p, Message) for p in payload):
        return list(payload)
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    out = []
    for chunk in re.split(r"\r?\n\s*\r?\n", text.strip()):
        if chunk.strip():
            out.append(HeaderParser(policy=compat32).parsestr(chunk + "\n", headersonly=True))
    return out


def _candidates_from(headers: Message | None) -> list[str]:
    if headers is None:
        return []
    out: list[str] = []
    for name in ("Return-Path", "X-Original-Return-Path", "Sender", "Errors-To"):
        for value in headers.get_all(name) or []:
            out.extend(a for _, a in email.utils.getaddresses([str(value)]) if a)
    return out


def _date(value: str) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed is not None else None


def is_autoreply(msg: Message) -> bool:
    """RFC 3834 Auto-Submitted, the common vendor headers, or an out-of-office subject."""
    auto = _field(msg, "Auto-Submitted").lower()
    if auto.startswith("auto-replied") or (
            auto.startswith("auto-generated")
            and _AUTOREPLY_SUBJECT.search(_field(msg, "Subject"))):
        return True
    if any(msg.get(h) is not None for h in ("X-Autoreply", "X-Autorespond",
                                            "X-Auto-Response-Suppress-Reply")):
        return True
    if _field(msg, "Precedence").lower() == "auto_reply":
        return True
    return bool(_AUTOREPLY_SUBJECT.search(_field(msg, "Subject"))) \
        and not _DAEMON.search(_field(msg, "From"))


def parse(data: bytes) -> Report:
    try:
        msg = email.message_from_bytes(data, policy=compat32)
    except Exception as e:  # the email package is lenient; this is belt and braces
        return Report("unknown", reason=f"not a message: {e}")
    return parse_message(msg)


def parse_message(msg: Message) -> Report:
    """`parse` of a message the email package has already read."""
    try:
        return _parse(msg)
    except Exception as e:
        return Report("unknown", reason=f"parse error: {type(e).__name__}: {e}")


def _parse(msg: Message) -> Report:
    ctype = msg.get_content_type()
    report_type = str(msg.get_param("report-type", "") or "").lower()
    if ctype == "multipart/report" and report_type == "delivery-status":
        return _parse_dsn(msg)
    if ctype == "multipart/report" and report_type == "feedback-report":
        return _parse_arf(msg)
    if ctype == "multipart/report":  # a report-type we do not know: look at the parts
        for part in msg.walk():
            if part.get_content_type() == "message/delivery-status":
                return _parse_dsn(msg)
            if part.get_content_type() == "message/feedback-report":
                return _parse_arf(msg)
    if is_autoreply(msg):
        return Report("autoreply", candidates=[])
    return _parse_text(msg)


def _parse_dsn(msg: Message) -> Report:
    report = Report("dsn")
    for part in msg.walk():
        ct = part.get_content_type()
        if ct == "message/delivery-status":
            blocks = _blocks(part)
            if not blocks:
                continue
            per_msg, per_rcpt = blocks[0], blocks[1:]
            report.reporting_mta = _typed(_field(per_msg, "Reporting-MTA"))
            report.arrival_date = _date(_field(per_msg, "Arrival-Date"))
            for block in per_rcpt:
                final = _typed(_field(block, "Final-Recipient")
                               or _field(block, "Original-Recipient"))
                if not final:
                    continue
                status = _field(block, "Status")
                m = _ENHANCED.search(status)
                report.recipients.append(RecipientStatus(
                    address=final.strip("<>"), action=_field(block, "Action").lower(),
                    status=m.group(0) if m else status,
                    diagnostic=_field(block, "Diagnostic-Code"),
                    remote_mta=_typed(_field(block, "Remote-MTA"))))
        elif ct in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            headers = _headers_of(part)
            report.candidates.extend(_candidates_from(headers))
            if headers is not None and not report.original_message_id:
                report.original_message_id = _field(headers, "Message-ID")
    if not report.recipients:
        report.kind, report.reason = "unknown", "delivery-status report without recipients"
    return report


def _parse_arf(msg: Message) -> Report:
    report = Report("arf")
    for part in msg.walk():
        ct = part.get_content_type()
        if ct == "message/feedback-report":
            blocks = _blocks(part)
            if not blocks:
                continue
            fields = blocks[0]
            report.feedback_type = _field(fields, "Feedback-Type").lower() or "abuse"
            report.user_agent = _field(fields, "User-Agent")
            report.arrival_date = _date(_field(fields, "Arrival-Date")
                                        or _field(fields, "Received-Date"))
            report.reporting_mta = _typed(_field(fields, "Reporting-MTA"))
            for value in fields.get_all("Original-Mail-From") or []:
                report.candidates.extend(
                    a for _, a in email.utils.getaddresses([str(value)]) if a)
            for value in fields.get_all("Original-Rcpt-To") or []:
                for _, a in email.utils.getaddresses([str(value)]):
                    if a:
                        report.recipients.append(RecipientStatus(a, "complained", "", ""))
        elif ct in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            headers = _headers_of(part)
            report.candidates.extend(_candidates_from(headers))
            if headers is not None and not report.original_message_id:
                report.original_message_id = _field(headers, "Message-ID")
    if not report.feedback_type:
        report.kind, report.reason = "unknown", "feedback report without Feedback-Type"
    return report


def _text_of(msg: Message) -> str:
    parts: list[str] = []
    for part in msg.walk():
        if part.get_content_maintype() == "multipart":
            continue
        if part.get_content_type() in ("text/plain", "text/rfc822-headers") or (
                part.get_content_type() == "text/html" and not parts):
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    parts.append(raw.decode(charset, "replace"))
                except LookupError:
                    parts.append(raw.decode("utf-8", "replace"))
        elif part.get_content_type() == "message/rfc822":
            headers = _headers_of(part)
            if headers is not None:
                parts.append("".join(f"{k}: {v}\n" for k, v in headers.items()))
    return "\n".join(parts)


def _parse_text(msg: Message) -> Report:
    """Best effort for bounces that are not RFC 3464 (qmail, old Yahoo, Exchange text)."""
    subject, sender = _field(msg, "Subject"), _field(msg, "From")
    if not (_BOUNCE_SUBJECT.search(subject) or _DAEMON.search(sender)):
        return Report("unknown", reason="neither a report nor a recognisable bounce")
    text = _text_of(msg)
    report = Report("text", reporting_mta=email.utils.parseaddr(sender)[1].rpartition("@")[2])
    for m in re.finditer(r"(?im)^return-path:\s*<?([^>\s]+)>?", text):
        report.candidates.append(m.group(1))
    # The diagnostic: the first line with an SMTP reply code (and its address, if any).
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    diag_line = next((ln for ln in lines if _SMTP_CODE.search(ln) or _ENHANCED.search(ln)), "")
    code = _SMTP_CODE.search(diag_line)
    enhanced = _ENHANCED.search(diag_line)
    status = enhanced.group(0) if enhanced else (
        f"{code.group(1)[0]}.0.0" if code else "5.0.0")
    address = ""
    for ln in lines:
        if ln.lower().startswith("return-path") or ln.lower().startswith("from:"):
            continue
        found = _ADDR.search(ln)
        if found:
            address = found.group(1)
            break
    delayed = status.startswith("4") or re.search(r"delayed|will (be )?retr", text, re.I)
    report.recipients.append(RecipientStatus(
        address, "delayed" if delayed else "failed", status,
        f"smtp; {diag_line or subject}"[:500]))
    return report
