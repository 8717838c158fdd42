"""How long each dashboard view takes to load when the history holds many messages.

    python bench/dashboard_views.py [--messages 100000] [--json]

Builds a spool whose history holds --messages messages over the last 30 days (the
history benchmark's generator, bench/test_bench_history.py: 1-3 recipients each, 50
tenants, ~33 providers, delivered / deferred / bounced / complained, with their
statistics), starts a real `relay serve` on it with the admin API, opens the dashboard in
Debian's Chromium (Playwright, no browser download) and times each view from the click to
its table or chart drawn: the newest messages, a recipient search, a subject word with a
status, the next page, one message's timeline, a search nothing matches that walks the
biggest tenant's every message, statistics over
24 hours, 7 days and 14 days per provider, suppression, queue. Times are wall clock on
whatever else the machine is doing; the smoke test only checks that every view loads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import test_bench_history as history_bench  # noqa: E402  (the history generator)

from relay.testing.dnsserver import DnsServer  # noqa: E402
from relay.testing.process import (  # noqa: E402
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 60_000


def build(state: Path, messages: int) -> float:
    """The spool's history: `messages` messages ending a minute ago; seconds taken."""
    history_bench.T_END = time.time() - 60
    spool = history_bench._Spool(state / "queue", messages)
    try:
        spool.build()
    finally:
        spool.close()
    return spool.build_seconds


def start_relay(tmp: Path, dns: DnsServer) -> tuple[RelayProcess, str, str]:
    """A relay with the admin API on the built spool; (process, base URL, token)."""
    admin_port = free_port()
    data = relay_config(tmp / "state", dns.nameserver, free_port(),
                        [listener_config("none", "none",
                                         trusted_networks=["127.0.0.1/32"])])
    data["server"]["queue_map_size"] = "8GiB"
    data["admin"] = {"enabled": True, "address": f"127.0.0.1:{admin_port}"}
    config = write_config(tmp / "relay.toml", data)
    made = run_cli("admin", "token", "add", "bench", config=config)
    if made.returncode != 0:
        raise RuntimeError(made.stderr)
    relay = RelayProcess(config, log_dir=tmp / "logs").start()
    return relay, f"http://127.0.0.1:{admin_port}", made.stdout.strip()


def time_views(base: str, token: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    times: dict[str, float] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/#token={token}")
            page.wait_for_selector('body[data-loaded]:not([data-loaded="0"])',
                                   state="attached", timeout=WAIT_MS)

            def timed(name: str, action: Callable[[], Any], done: str) -> None:
                t0 = time.perf_counter()
                action()
                page.wait_for_selector(done, state="attached", timeout=WAIT_MS)
                times[name] = round(time.perf_counter() - t0, 3)

            shown = '#msg-results[data-busy="0"][data-query*="{}"]'
            timed("messages: newest 50",
                  lambda: page.click('nav.tabs button[data-tab="messages"]'),
                  '#msg-results[data-busy="0"][data-query]')
            # A recipient of the newest message.
            recipient = page.locator("#msg-rows tr td").nth(3).inner_text().split(",")[0]
            page.fill('#msg-search input[name="recipient"]', recipient.strip())
            timed("messages: one recipient", lambda: page.click("#msg-go"),
                  shown.format("recipient="))
            page.fill('#msg-search input[name="recipient"]', "")
            page.fill('#msg-search input[name="subject"]', "invoice")
            page.select_option('#msg-search select[name="status"]', "delivered")
            timed("messages: subject word + status", lambda: page.click("#msg-go"),
                  shown.format("status=delivered"))
            timed("messages: next page", lambda: page.click("#msg-next"),
                  shown.format("cursor="))
            timed("message: timeline", lambda: page.locator("#msg-rows tr").first.click(),
                  '#msg-detail[data-busy="0"] .rcpt')
            # The worst plan: the biggest tenant's every message probed for a status
            # none has.
            page.fill('#msg-search input[name="subject"]', "")
            page.fill('#msg-search input[name="tenant"]', "tenant0")
            page.select_option('#msg-search select[name="status"]', "rejected")
            timed("messages: no match (a tenant's all)", lambda: page.click("#msg-go"),
                  shown.format("status=rejected"))
            stats_done = '#view-stats[data-busy="0"]'
            timed("statistics: 24 h",
                  lambda: page.click('nav.tabs button[data-tab="stats"]'), stats_done)
            timed("statistics: 7 days",
                  lambda: page.select_option("#stats-range", "604800"), stats_done)
            page.select_option("#stats-range", "1209600")
            page.wait_for_selector(stats_done, state="attached", timeout=WAIT_MS)
            timed("statistics: 14 days per provider",
                  lambda: page.select_option("#stats-by", "provider"), stats_done)
            timed("suppression",
                  lambda: page.click('nav.tabs button[data-tab="suppression"]'),
                  '#sup-results[data-busy="0"]')
            timed("queue", lambda: page.click('nav.tabs button[data-tab="queue"]'),
                  '#q-results[data-busy="0"]')
            if page.locator("#error").inner_text():
                raise RuntimeError("the page shows an error: "
                                   + page.locator("#error").inner_text())
        finally:
            browser.close()
    return times


def run(messages: int, tmp: Path) -> dict[str, Any]:
    built = build(tmp / "state", messages)
    dns = DnsServer({}).start()
    try:
        relay, base, token = start_relay(tmp, dns)
        try:
            views = time_views(base, token)
        finally:
            relay.stop()
    finally:
        dns.stop()
    return {"messages": messages, "build_seconds": round(built, 1), "views": views}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-dashboard-bench-") as tmp:
        result = run(args.messages, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['messages']} messages in the history (built in "
          f"{result['build_seconds']} s)")
    for name, seconds in result["views"].items():
        print(f"  {name:36} {seconds:6.3f} s")


if __name__ == "__main__":
    main()
