"""The dashboard page in a real headless Chromium (Debian's, driven by Playwright; no
browser download): it loads with data from a running relay, every chart draws, and a
screenshot is saved under the test's tmp dir."""

from __future__ import annotations

from pathlib import Path

from adminkit import Admin

from relay.testing.require import require_program
from relay.testing.wait import wait_until

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def test_dashboard_renders_in_chromium(admin: Admin, tmp_path: Path) -> None:
    require_program("chromium")
    from playwright.sync_api import sync_playwright

    ids = [admin.send("late@busy.test", "deferred for the table"),
           admin.send("pal@gmail.test", "delivered"), admin.send("x@ok.test", "delivered")]
    wait_until(lambda: admin.call("GET", f"/api/queue/{ids[0]}")[1]["recipients"][0]
               ["state"] == "deferred", 15, "a deferral")
    wait_until(lambda: admin.sinks[0].message_count >= 2, 15, "deliveries")
    assert admin.call("POST", "/api/tenants", {"TenantName": "acme"})[0] == 201
    assert admin.call("POST", "/api/tenants/acme/pause", {"Reason": "list cleanup"})[0] == 200
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{admin.base}/#token={admin.token}")
            # A selector, not wait_for_function: the page's CSP forbids eval, which
            # Playwright's function polling can need (seen as a flaky CSP error).
            page.wait_for_selector('body[data-loaded]:not([data-loaded="0"])',
                                   state="attached", timeout=15000)
            assert page.locator("#host").inner_text() == "relay.test"
            assert admin.token not in page.url  # taken out of the address bar
            assert page.locator("#chart-warmup path.plan-line").count() >= 1
            assert page.locator("#chart-warmup rect.sent-bar").count() == 2
            assert page.locator("#chart-providers rect.rate-bar").count() >= 2
            assert "gmail" in (page.locator("#chart-providers").text_content() or "")
            assert page.locator("#chart-depth path.depth-area").count() == 3
            assert ids[0] in page.locator("#oldest").inner_text()
            assert page.locator("#error").inner_text() == ""
            paused = page.locator('#tenants tr[data-status="Paused"]')
            assert paused.count() == 1 and "acme" in paused.inner_text()
            assert "list cleanup" in paused.inner_text() and "200 / 200" not in paused.inner_text()
            assert "0 / 200" in paused.inner_text()  # the sandbox's daily quota
            assert page.locator('#tenants tr[data-status="Healthy"]').count() == 1  # default
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            # Without a token the page asks for one and shows no data.
            fresh = browser.new_page()
            fresh.goto(f"{admin.base}/")
            assert fresh.locator("#login").is_visible()
            assert not fresh.locator("#app").is_visible()
        finally:
            browser.close()
    assert all(u.startswith(admin.base) for u in requests), requests  # nothing off the box
    print(f"dashboard screenshot: {shot}")
