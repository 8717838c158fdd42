"""Engagement tracking: rewrite() of a 50 KB HTML newsletter, token signing and verifying.

`make bench` measures (figures in bench/RESULTS.md); under `make test` each case runs once
as a smoke test (--benchmark-disable). rewrite() runs once per recipient of a tracked
message (every copy has its own tokens), so its cost is per recipient, not per message.
"""

from __future__ import annotations

import email.policy
import itertools
from email.message import EmailMessage

import pytest

from relay.tracking.rewrite import links_of, rewrite
from relay.tracking.token import Tokens

QID = "0190abcdef0123456789"
LINKS = 60


def newsletter() -> bytes:
    """multipart/alternative: a UTF-8 text part and a quoted-printable HTML part of about
    50 KB with 60 links (tables, inline styles, images, ses:tags, a few untracked links),
    as an email builder makes it."""
    rows = []
    for i in range(LINKS):
        rows.append(
            f'<tr><td style="padding:12px 24px;font-family:Helvetica,Arial,sans-serif;'
            f'font-size:15px;line-height:22px;color:#333333;">'
            f'<img src="https://cdn.news.example/img/{i}.png" width="96" height="64" '
            f'alt="Artikel {i}" style="display:block;border:0;"><h2 style="margin:0 0 8px;">'
            f"Neuigkeiten Nr. {i}: Grüße aus Zürich — „Qualität“ für 5 €</h2>"
            f"<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
            f"incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis "
            f"nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo.</p>"
            f'<a href="https://www.news.example/articles/{i}?utm_source=newsletter&amp;'
            f'utm_medium=email&amp;utm_campaign=weekly-49" ses:tags="article:{i};slot:body" '
            f'style="color:#0066cc;text-decoration:underline;">Weiterlesen »</a></td></tr>\n')
    html = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Newsletter</title>"
            "<style>body{margin:0}table{border-collapse:collapse}</style></head><body>"
            '<table role="presentation" width="100%">\n' + "".join(rows) +
            '</table><p><a href="mailto:hilfe@news.example">Hilfe</a> · '
            '<a href="#top">nach oben</a> · <a ses:no-track '
            'href="https://www.news.example/unsubscribe">Abmelden</a></p></body></html>\n')
    text = "".join(f"Neuigkeiten Nr. {i}: https://www.news.example/articles/{i}\n"
                   for i in range(LINKS))
    m = EmailMessage(policy=email.policy.SMTP)
    m["From"] = "Newsletter <news@news.example>"
    m["To"] = "reader@dest.example"
    m["Subject"] = "Wöchentliche Neuigkeiten"
    m["Message-ID"] = "<weekly-49@news.example>"
    m.set_content(text)
    m.add_alternative(html, subtype="html", cte="quoted-printable")
    return m.as_bytes()


RAW = newsletter()
TOKENS = Tokens(b"k" * 32)


def test_newsletter_shape() -> None:
    assert 45_000 <= len(RAW) <= 60_000
    assert len(links_of(RAW)) == LINKS


def test_rewrite_newsletter(benchmark: object) -> None:
    recipients = itertools.count()

    def one() -> bytes:
        r = next(recipients) % 50
        return rewrite(RAW, open_url="https://t.news.example/t/o/" + TOKENS.open_token(QID, r),
                       click_url=lambda i: "https://t.news.example/t/c/"
                       + TOKENS.click_token(QID, r, i)).data

    out = benchmark(one)  # type: ignore[operator]
    assert out.count(b"t.news.example/t/c/") == LINKS


def test_links_of_newsletter(benchmark: object) -> None:
    links = benchmark(lambda: links_of(RAW))  # type: ignore[operator]
    assert len(links) == LINKS


@pytest.mark.parametrize("op", ["sign", "verify", "verify_forged"])
def test_token(benchmark: object, op: str) -> None:
    token = TOKENS.click_token(QID, 3, 17)
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    fn = {"sign": lambda: TOKENS.click_token(QID, 3, 17),
          "verify": lambda: TOKENS.verify(token),
          "verify_forged": lambda: TOKENS.verify(forged)}[op]
    result = benchmark(fn)  # type: ignore[operator]
    assert (result is None) is (op == "verify_forged")
