"""The dashboard's operator views in a real headless Chromium (Debian's, driven by
Playwright; no browser download) against one real relay process for the module: search
a recipient and open its timeline (attempts with source IP, MX host and reply), retry a
deferred message and a whole destination domain from the page (behind the in-page
confirmation dialog) and see them delivered at the sink, add and remove a suppression,
the statistics chart drawn with points and the reputation lines, the live event stream,
and no data without a token. Attacker-chosen subjects show as text. Every view's
screenshot is saved under the test's tmp dir.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from adminkit import ZONE, Admin, sink_policy

from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.require import require_program
from relay.testing.sink import Sink
from relay.testing.wait import wait_until

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
HOSTILE = '<img src=x onerror="document.body.dataset.pwned=1">'
T = 15000  # ms: a bound for a failing wait only

# Two domains whose MX defers each recipient's first delivery and accepts the next.
FLAKY = ("flaky.test", "later.test")


class DeferFirst:
    """The sink's policy: adminkit's, plus a 451 for the first RCPT of each address at a
    FLAKY domain (and a 250 for every later one), as a greylisting MX answers. A 4.2.0,
    not a 4.7.x: that would also pause the warming IPs (relay/warmup/backoff.py)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, stage: str, arg: str, envelope: Any) -> str | None:
        address = arg.lower()
        if stage == "rcpt" and address.rpartition("@")[2] in FLAKY:
            with self._lock:
                if address not in self._seen:
                    self._seen.add(address)
                    return "450 4.2.0 greylisted, come back later"
            return None
        return sink_policy(stage, arg, envelope)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dns(module_dns_server: DnsServers) -> DnsServer:
    zone = dict(ZONE)
    for domain in FLAKY:
        zone[domain] = [("MX", f"10 mx.{domain}")]
        zone[f"mx.{domain}"] = [("A", "127.0.0.2")]
    return module_dns_server(zone)


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[Sink, Sink]]:
    first = Sink("127.0.0.2", 0, policy=DeferFirst()).start()  # type: ignore[arg-type]
    try:
        second = Sink("127.0.0.3", first.port, policy=sink_policy).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_program("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """One browser page on the dashboard, recording every request it makes."""

    def __init__(self, browser: Any, admin: Admin, tmp: Path, token: str | None) -> None:
        self.admin, self.tmp = admin, tmp
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.requests: list[str] = []
        self.responses: list[tuple[str, int]] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("response", lambda r: self.responses.append((r.url, r.status)))
        url = f"{admin.base}/" + ("" if token is None else f"#token={token}")
        self.page.goto(url)

    def loaded(self) -> Page:
        # A selector, not wait_for_function: the page's CSP forbids eval.
        self.page.wait_for_selector('body[data-loaded]:not([data-loaded="0"])',
                                    state="attached", timeout=T)
        return self

    def tab(self, name: str) -> None:
        self.page.click(f'nav.tabs button[data-tab="{name}"]')
        self.page.wait_for_selector(f'body[data-view="{name}"]', state="attached", timeout=T)

    def shown(self, query_part: str) -> None:
        """Wait until the messages table shows the answer to a query containing this."""
        self.page.wait_for_selector(
            f'#msg-results[data-busy="0"][data-query*="{query_part}"]', state="attached",
            timeout=T)

    def confirm(self, ok: bool = True) -> None:
        self.page.wait_for_selector("dialog#confirm[open]", timeout=T)
        self.page.click("#confirm-ok" if ok else "#confirm-cancel")
        self.page.wait_for_selector("dialog#confirm:not([open])", state="attached", timeout=T)

    def shot(self, name: str) -> Path:
        path = self.tmp / f"dashboard-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 5_000
        return path

    def api_requests(self, path: str) -> list[dict[str, list[str]]]:
        """The query of each request the page made to `path`."""
        out = []
        for url in self.requests:
            parts = urllib.parse.urlsplit(url)
            if parts.path == path:
                out.append(urllib.parse.parse_qs(parts.query))
        return out

    def close(self) -> None:
        assert all(u.startswith(self.admin.base) for u in self.requests), self.requests
        assert self.page.locator("body[data-pwned]").count() == 0
        self.page.close()


@pytest.fixture
def page(browser: Any, admin: Admin, tmp_path: Path) -> Iterator[Page]:
    p = Page(browser, admin, tmp_path, admin.token).loaded()
    try:
        yield p
    finally:
        p.close()


def state_of(admin: Admin, qid: str) -> str:
    status, body = admin.call("GET", f"/api/queue/{qid}")
    return "gone" if status == 404 else str(body["recipients"][0]["state"])


def delivered_to(admin: Admin, address: str) -> bool:
    return any(address in m.rcpt_tos for m in admin.sinks[0].messages)


def test_without_a_token_the_page_asks_for_one_and_gets_no_data(browser: Any, admin: Admin,
                                                                tmp_path: Path) -> None:
    fresh = Page(browser, admin, tmp_path, None)
    fresh.page.wait_for_selector("#login", state="visible", timeout=T)
    assert not fresh.page.locator("#app").is_visible()
    assert fresh.api_requests("/api/status") == []  # no token: nothing asked
    fresh.shot("login")
    fresh.close()
    # A refused token: every data request is answered 401, and the form comes back.
    refused = Page(browser, admin, tmp_path, "rly_not-a-real-token")
    refused.page.wait_for_selector("#login", state="visible", timeout=T)
    assert "token refused" in refused.page.locator("#error").inner_text()
    api = [(u, s) for u, s in refused.responses if "/api/" in u]
    assert api and all(s == 401 for _, s in api), api
    assert refused.page.locator("#cards .card").count() == 0
    refused.close()


def test_search_a_recipient_and_open_its_timeline(page: Page, admin: Admin) -> None:
    qid = admin.send("reader@ok.test", HOSTILE)
    wait_until(lambda: delivered_to(admin, "reader@ok.test"), 15, "the delivery")
    # History is written in batches: wait until the API has the attempt.
    wait_until(lambda: any(t.get("kind") == "attempt" for t in
                           admin.call("GET", f"/api/messages/{qid}")[1].get("timeline", [])),
               15, "the attempt in the message's history")
    page.tab("messages")
    page.page.fill('#msg-search input[name="recipient"]', "reader@ok.test")
    page.page.click("#msg-go")
    page.shown("recipient=reader%40ok.test")
    page.page.wait_for_selector(f'#msg-rows tr[data-id="{qid}"]', timeout=T)
    # The attacker-chosen subject is text, not markup.
    assert page.page.locator(f'#msg-rows tr[data-id="{qid}"] td.subject').inner_text() == HOSTILE
    assert page.page.locator("#msg-rows img").count() == 0
    assert page.page.locator("#msg-rows tr").count() == 1
    page.page.click(f'#msg-rows tr[data-id="{qid}"]')
    attempt = '#msg-timeline .rcpt[data-address="reader@ok.test"] tr.tl[data-kind="attempt"]'
    page.page.wait_for_selector(attempt, timeout=T)
    assert page.page.locator("#msg-detail-subject").inner_text() == HOSTILE
    assert page.page.locator("#msg-detail img").count() == 0
    first = page.page.locator(attempt).first
    assert first.locator("td.source-ip").inner_text() in ("127.0.0.10", "127.0.0.11")
    assert "mx.ok.test" in first.locator("td.mx-host").inner_text()
    assert first.locator("td.reply").inner_text().startswith("250")
    assert first.get_attribute("data-result") == "delivered"
    # Delivered: nothing left in the queue to act on.
    assert page.page.locator("#msg-queue-state").inner_text() == "not in the queue any more"
    assert page.page.locator('[data-msg-action="retry"]').is_disabled()
    page.shot("messages")
    # One page at a time, never more than 100 rows asked for.
    asked = page.api_requests("/api/messages")
    assert asked and all(int(q["limit"][0]) <= 100 for q in asked), asked


def test_messages_page_by_cursor(page: Page, admin: Admin) -> None:
    ids = [admin.send("pager@ok.test", f"page me {i}") for i in range(11)]

    def recorded() -> bool:
        return admin.call("GET", "/api/messages?recipient=pager@ok.test&limit=20")[1][
            "count"] == len(ids)
    wait_until(recorded, 15, "the 11 messages in the history")
    page.tab("messages")
    page.page.fill('#msg-search input[name="recipient"]', "pager@ok.test")
    page.page.select_option('#msg-search select[name="limit"]', "10")
    page.page.click("#msg-go")
    page.shown("recipient=pager%40ok.test&limit=10")
    newest = f'#msg-rows tr[data-id="{ids[-1]}"]'
    rows = page.page.locator("#msg-rows tr")
    assert [r.get_attribute("data-id") for r in rows.all()] == ids[:0:-1]  # newest first
    assert page.page.locator("#msg-prev").is_disabled()
    page.page.click("#msg-next")
    page.shown(f"limit=10&cursor={ids[1]}")
    page.page.wait_for_selector(f'#msg-rows tr[data-id="{ids[0]}"]', timeout=T)
    assert rows.count() == 1 and page.page.locator("#msg-next").is_disabled()
    page.page.click("#msg-prev")
    page.shown("recipient=pager%40ok.test&limit=10")
    page.page.wait_for_selector(newest, timeout=T)
    assert rows.count() == 10
    cursors = [q.get("cursor", [""])[0] for q in page.api_requests("/api/messages")]
    assert cursors[-3:] == ["", ids[1], ""], cursors  # the second page from the first's end
    assert all(q["limit"] == ["10"] for q in page.api_requests("/api/messages")[-3:])
    # A time range (read as UTC, like every time the page shows) that ends before them.
    page.page.fill('#msg-search input[name="until"]', "2020-01-01T00:00:00")
    page.page.click("#msg-go")
    page.shown("until=1577836800")
    assert rows.count() == 0 and page.page.locator("#msg-empty").is_visible()


def test_retry_a_deferred_message_from_the_page(page: Page, admin: Admin) -> None:
    qid = admin.send("first@flaky.test", HOSTILE)
    wait_until(lambda: state_of(admin, qid) == "deferred", 15, "the greylisting deferral")
    page.tab("queue")
    row = f'#q-rows tr[data-id="{qid}"]'
    page.page.wait_for_selector(row, timeout=T)
    assert page.page.locator(f"{row} td.subject").inner_text() == HOSTILE
    assert page.page.locator("#q-rows img").count() == 0
    page.shot("queue")
    page.page.click(f'{row} button[data-action="retry"]')
    page.confirm()
    page.page.wait_for_selector('#q-action-result[data-ok="1"]', state="attached", timeout=T)
    assert page.page.locator("#q-action-result").inner_text() == f"{qid}: 1 recipient(s) retried"
    wait_until(lambda: delivered_to(admin, "first@flaky.test"), 15, "the retried delivery")


def test_retry_a_destination_domain_behind_the_confirmation(page: Page, admin: Admin) -> None:
    ids = [admin.send(f"{name}@later.test", "domain retry") for name in ("ann", "bob")]
    wait_until(lambda: all(state_of(admin, q) == "deferred" for q in ids), 15, "deferrals")
    page.tab("queue")
    domain_row = 'tr[data-domain="later.test"]'
    page.page.wait_for_selector(domain_row, timeout=T)
    # Cancelled: nothing is asked of the server.
    page.page.click(f'{domain_row} button[data-action="retry"]')
    page.confirm(ok=False)
    assert page.api_requests("/api/queue/retry") == []
    page.page.click(f'{domain_row} button[data-action="retry"]')
    page.confirm()
    page.page.wait_for_selector('#q-domain-result[data-ok="1"]', state="attached", timeout=T)
    assert page.api_requests("/api/queue/retry") == [{"domain": ["later.test"]}]
    assert "2 recipient(s)" in page.page.locator("#q-domain-result").inner_text()
    wait_until(lambda: delivered_to(admin, "ann@later.test")
               and delivered_to(admin, "bob@later.test"), 15, "both retried deliveries")


def test_bounce_a_message_and_delete_a_domain_from_the_queue_view(page: Page,
                                                                   admin: Admin) -> None:
    bounced, *dropped = [admin.send(f"{name}@busy.test", "busy") for name in ("b1", "d1", "d2")]
    wait_until(lambda: all(state_of(admin, q) == "deferred" for q in (bounced, *dropped)),
               15, "the busy mailbox's deferrals")
    page.tab("queue")
    page.page.wait_for_selector(f'#q-rows tr[data-id="{bounced}"]', timeout=T)
    page.page.click(f'#q-rows tr[data-id="{bounced}"] button[data-action="bounce"]')
    page.confirm()
    page.page.wait_for_selector('#q-action-result[data-ok="1"]', state="attached", timeout=T)
    assert page.page.locator("#q-action-result").inner_text() == (
        f"{bounced}: 1 recipient(s) bounced")
    assert state_of(admin, bounced) == "gone"
    page.page.wait_for_selector(f'#q-rows tr[data-id="{bounced}"]', state="detached",
                                timeout=T)
    page.page.fill("#q-domain", "busy.test")
    page.page.click('#q-domain-form button[data-domain-action="delete"]')
    assert "busy.test" in page.page.locator("#confirm-text").inner_text()
    page.confirm()
    page.page.wait_for_selector('#q-domain-result[data-ok="1"]', state="attached", timeout=T)
    assert "2 recipient(s) in 2 message(s) deleted" in page.page.locator(
        "#q-domain-result").inner_text()
    assert [state_of(admin, q) for q in dropped] == ["gone", "gone"]
    # The bounce tells the sender (a Bounce event); the delete does not.
    bounces = {q: admin.call("GET", f"/api/events?type=Bounce&message_id={q}")[1]["count"]
               for q in (bounced, *dropped)}
    assert bounces == {bounced: 1, dropped[0]: 0, dropped[1]: 0}


def test_add_and_remove_a_suppression(page: Page, admin: Admin) -> None:
    address = "blocked-by-hand@example.org"
    page.tab("suppression")
    page.page.fill("#sup-add-address", address)
    page.page.select_option("#sup-add-reason", "COMPLAINT")
    page.page.click("#sup-add-go")
    row = f'#sup-rows tr[data-address="{address}"]'
    page.page.wait_for_selector(row, timeout=T)
    assert "COMPLAINT" in page.page.locator(row).inner_text()
    listed = admin.call("GET", "/api/suppression?prefix=blocked-by-hand")[1]["entries"]
    assert [e["reason"] for e in listed] == ["COMPLAINT"]
    page.page.fill("#sup-q", "blocked-by")
    page.page.press("#sup-q", "Enter")
    page.page.wait_for_selector(row, timeout=T)
    page.shot("suppression")
    page.page.click(f'{row} button[data-action="remove"]')
    page.confirm()
    page.page.wait_for_selector(row, state="detached", timeout=T)
    assert admin.call("GET", "/api/suppression?prefix=blocked-by-hand")[1]["entries"] == []


def test_a_bounce_suppression_shows_its_cause_and_opens_the_message(page: Page,
                                                                     admin: Admin) -> None:
    qid = admin.send("nobody@ok.test", "to a mailbox that does not exist")
    wait_until(lambda: admin.call("GET", "/api/suppression?q=nobody@ok.test")[1]["entries"],
               15, "the hard bounce's suppression")
    wait_until(lambda: admin.call("GET", f"/api/messages/{qid}")[1].get("status") == "bounced",
               15, "the bounce in the message's history")
    page.tab("suppression")
    page.page.fill("#sup-q", "nobody@ok")
    page.page.press("#sup-q", "Enter")
    row = '#sup-rows tr[data-address="nobody@ok.test"]'
    page.page.wait_for_selector(row, timeout=T)
    assert "BOUNCE" in page.page.locator(row).inner_text()
    assert "550 5.1.1" in page.page.locator(f"{row} td.cause").inner_text()
    page.page.click(f'{row} a.open-message[data-id="{qid}"]')  # the message that caused it
    page.page.wait_for_selector('body[data-view="messages"]', state="attached", timeout=T)
    attempt = ('#msg-timeline .rcpt[data-address="nobody@ok.test"] '
               'tr.tl[data-kind="attempt"][data-result="bounced"]')
    page.page.wait_for_selector(attempt, timeout=T)
    assert "550 5.1.1" in page.page.locator(attempt).first.locator("td.reply").inner_text()
    assert page.page.locator('#msg-timeline .rcpt[data-address="nobody@ok.test"] '
                             ".badge").first.inner_text() == "bounced"
    page.shot("suppression-cause")


def test_the_statistics_chart_draws_points_and_the_reputation_lines(page: Page,
                                                                    admin: Admin) -> None:
    admin.send("pal@gmail.test", "for the statistics")
    wait_until(lambda: delivered_to(admin, "pal@gmail.test"), 15, "the delivery")

    def delivered_in_stats() -> bool:
        since = int(time.time()) - 3600
        body = admin.call("GET", f"/api/stats?since={since}&by=provider")[1]
        return any(s["key"] == "gmail" and any(p.get("delivered") for p in s["points"])
                   for s in body.get("series", []))
    wait_until(delivered_in_stats, 15, "the delivery in the statistics")
    page.tab("stats")
    page.page.wait_for_selector('#chart-stats circle.stat-point[data-series="delivered"]',
                                state="attached", timeout=T)
    assert page.page.locator('#chart-stats path.stat-line[data-series="sent"]').count() == 1
    assert page.page.locator("#chart-rates line.threshold").count() == 4
    page.shot("stats")
    page.page.select_option("#stats-by", "provider")
    page.page.wait_for_selector('#chart-stats circle.stat-point[data-series="gmail"]',
                                state="attached", timeout=T)
    assert page.page.locator('#stats-legend [data-series="gmail"]').count() == 1
    page.shot("stats-provider")
    asked = page.api_requests("/api/stats")
    assert asked and all("since" in q and "until" in q for q in asked), asked


def test_the_live_stream_shows_events_sent_after_the_page_opened(page: Page,
                                                                 admin: Admin) -> None:
    page.tab("live")
    page.page.wait_for_selector('body[data-live="connected"]', state="attached", timeout=T)
    qid = admin.send("pal@gmail.test", HOSTILE)
    page.page.wait_for_selector(f'#live-rows tr[data-id="{qid}"]', timeout=T)
    assert page.page.locator(f'#live-rows tr[data-id="{qid}"][data-type="Send"]').count() == 1
    assert page.page.locator("#live-rows img").count() == 0
    # Paused: what arrives is held, and shown on resume.
    page.page.click("#live-toggle")
    held = admin.send("pal@gmail.test", "while paused")
    page.page.wait_for_selector('#live-status:has-text("held")', timeout=T)
    assert page.page.locator(f'#live-rows tr[data-id="{held}"]').count() == 0
    page.page.click("#live-toggle")
    page.page.wait_for_selector(f'#live-rows tr[data-id="{held}"]', timeout=T)
    # Newest first: the held message's rows above the first message's Send.
    order = [r.get_attribute("data-id") for r in page.page.locator("#live-rows tr").all()]
    assert order.index(held) < order.index(qid), order
    page.shot("live")
    # The token went in a header, never in the stream's URL.
    assert all(admin.token not in u for u in page.requests)
