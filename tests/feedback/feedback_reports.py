"""Feedback mail as mailbox providers send it, built with the email package.

Shapes follow captured reports: Gmail's and Microsoft's RFC 3464 DSNs, Yahoo's plain-text
bounce (not RFC 3464), Yahoo's and Microsoft's (JMRP) RFC 5965 ARF complaints.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage, Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser, HeaderParser
from email.policy import compat32

NOW = "Mon, 02 Nov 2026 10:00:00 +0000"


def original(return_path: str, rcpt: str) -> Message:
    return BytesParser(policy=compat32).parsebytes(
        f"Return-Path: <{return_path}>\r\nFrom: app@example.com\r\nTo: {rcpt}\r\n"
        f"Subject: Your receipt\r\nMessage-ID: <abc@example.com>\r\n\r\nHello\r\n".encode())


def _status_part(per_message: str, per_rcpt: str) -> Message:
    part = Message()
    part["Content-Type"] = "message/delivery-status"
    parser = HeaderParser(policy=compat32)
    part.set_payload([parser.parsestr(per_message.strip() + "\n"),
                      parser.parsestr(per_rcpt.strip() + "\n")])
    return part


def dsn(*, sender: str, subject: str, human: str, reporting: str, rcpt: str, action: str,
        status: str, diagnostic: str, return_path: str, remote: str = "",
        headers_only: bool = False) -> bytes:
    msg = MIMEMultipart("report", report_type="delivery-status")
    msg["From"] = sender
    msg["To"] = return_path
    msg["Subject"] = subject
    msg["Date"] = NOW
    msg["Auto-Submitted"] = "auto-replied"
    msg.attach(MIMEText(human))
    per_rcpt = (f"Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n"
                + (f"Remote-MTA: dns; {remote}\r\n" if remote else "")
                + f"Diagnostic-Code: smtp; {diagnostic}\r\n"
                + f"Last-Attempt-Date: {NOW}")
    msg.attach(_status_part(f"Reporting-MTA: dns; {reporting}\r\nArrival-Date: {NOW}",
                            per_rcpt))
    orig = original(return_path, rcpt)
    if headers_only:
        msg.attach(MIMEText("".join(f"{k}: {v}\r\n" for k, v in orig.items()),
                            "rfc822-headers"))
    else:
        msg.attach(MIMEMessage(orig))
    return msg.as_bytes()


def gmail_no_such_user(rcpt: str, return_path: str) -> bytes:
    return dsn(
        sender="Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        subject="Delivery Status Notification (Failure)",
        human="Address not found\r\n\r\nYour message wasn't delivered to " + rcpt +
              " because the address couldn't be found.\r\n",
        reporting="mx.google.com", rcpt=rcpt, action="failed", status="5.1.1",
        diagnostic="550-5.1.1 The email account that you tried to reach does not exist. "
                   "Please try double-checking the recipient's email address for typos or "
                   "unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser",
        return_path=return_path, remote="gmail-smtp-in.l.google.com")


def gmail_low_reputation(rcpt: str, return_path: str) -> bytes:
    return dsn(
        sender="Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        subject="Delivery Status Notification (Failure)",
        human="Message blocked\r\n", reporting="mx.google.com", rcpt=rcpt, action="failed",
        status="5.7.1",
        diagnostic="550-5.7.1 Our system has detected that this message is likely "
                   "unsolicited mail. To reduce the amount of spam sent to Gmail, this message "
                   "has been blocked because of the very low reputation of the sending IP "
                   "address.",
        return_path=return_path, remote="gmail-smtp-in.l.google.com")


def microsoft_recipient_not_found(rcpt: str, return_path: str) -> bytes:
    return dsn(
        sender="Microsoft Outlook <postmaster@outlook.com>",
        subject="Undeliverable: Your receipt",
        human="Your message to " + rcpt + " couldn't be delivered.\r\n",
        reporting="DM6PR01MB1234.prod.exchangelabs.com", rcpt=rcpt, action="failed",
        status="5.1.10",
        diagnostic="550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP "
                   "address lookup",
        return_path=return_path, headers_only=True)


def mailbox_full_delayed(rcpt: str, return_path: str) -> bytes:
    return dsn(
        sender="MAILER-DAEMON@mx.example.net", subject="Delivery delayed",
        human="still trying\r\n", reporting="mx.example.net", rcpt=rcpt, action="delayed",
        status="4.2.2", diagnostic="452 4.2.2 Mailbox full", return_path=return_path)


def yahoo_text_bounce(rcpt: str, return_path: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "MAILER-DAEMON@yahoo.com"
    msg["To"] = return_path
    msg["Subject"] = "Failure Notice"
    msg["Date"] = NOW
    msg.set_content(
        "Sorry, we were unable to deliver your message to the following address.\n\n"
        f"<{rcpt}>:\n554: delivery error: dd This user doesn't have a yahoo.com account "
        f"({rcpt}) [0] - mta1234.mail.ne1.yahoo.com\n\n"
        "--- Below this line is a copy of the message.\n\n"
        f"Return-Path: <{return_path}>\nSubject: Your receipt\n")
    return msg.as_bytes()


def arf(*, sender: str, to: str, user_agent: str, feedback_type: str, rcpt: str,
        return_path: str, original_mail_from: bool = True) -> bytes:
    msg = MIMEMultipart("report", report_type="feedback-report")
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "FW: Your receipt"
    msg["Date"] = NOW
    msg.attach(MIMEText("This is an email abuse report for an email message received.\r\n"))
    fields = MIMEText("", "plain")
    fields.set_payload(
        f"Feedback-Type: {feedback_type}\r\nUser-Agent: {user_agent}\r\nVersion: 1\r\n"
        + (f"Original-Mail-From: <{return_path}>\r\n" if original_mail_from else "")
        + f"Original-Rcpt-To: <{rcpt}>\r\nArrival-Date: {NOW}\r\n"
        "Reported-Domain: example.com\r\n")
    fields.replace_header("Content-Type", "message/feedback-report")
    msg.attach(fields)
    msg.attach(MIMEMessage(original(return_path, rcpt)))
    return msg.as_bytes()


def yahoo_complaint(rcpt: str, return_path: str) -> bytes:
    return arf(sender="feedback@arf.mail.yahoo.com", to=return_path,
               user_agent="Yahoo!-Mail-Feedback/2.0", feedback_type="abuse", rcpt=rcpt,
               return_path=return_path)


def microsoft_jmrp(rcpt: str, return_path: str, fbl_address: str) -> bytes:
    """JMRP goes to a fixed address; the VERP path is only in the attached message."""
    return arf(sender="staff@hotmail.com", to=fbl_address, user_agent="Hotmail FBL",
               feedback_type="abuse", rcpt=rcpt, return_path=return_path,
               original_mail_from=False)


def out_of_office(rcpt: str, return_path: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = rcpt
    msg["To"] = return_path
    msg["Subject"] = "Automatic reply: Your receipt"
    msg["Auto-Submitted"] = "auto-replied"
    msg["Date"] = email.utils.formatdate()
    msg.set_content("I am away until Monday.\n")
    return msg.as_bytes()
