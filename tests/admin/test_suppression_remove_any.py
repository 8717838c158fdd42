"""Every entry on the suppression list can be taken off it, whatever its text.

Before recipients were checked at RCPT, `RCPT TO:<not-an-address>` was accepted, bounced
and suppressed under that name; the admin API then refused to remove it ("expected an
email address"). Such entries are written here into the real relay's LMDB list the way
that bounce wrote them (the suppression store's own add), then removed through the admin
API of the running relay and through `relay suppression remove`.
"""

from __future__ import annotations

import urllib.parse

from adminkit import Admin

from relay.clock import SystemClock
from relay.config import load
from relay.queue.store import QueueStore
from relay.suppression.store import Entry, SuppressionList
from relay.testing.process import run_cli

# As the old bounce path listed them, and as the list then shows them ("< x@y>" is listed
# as " x@y": normalizing is not idempotent, so a remove that normalized could not match).
LEGACY = ["not-an-address", "user@nodot", "@dest.test", "< spaced@dest.test>", "a/b@dest.test"]
SHOWN = ["not-an-address", "user@nodot", "@dest.test", " spaced@dest.test", "a/b@dest.test"]


def list_legacy_entries(admin: Admin, addresses: list[str]) -> None:
    cfg = load(admin.config)
    store = QueueStore(cfg.state_path / "queue", SystemClock(),
                       map_size=cfg.server.queue_map_size)
    try:
        store.write_now(SuppressionList(store).add_op(
            [Entry(a, "BOUNCE", 0.0, "", "550 5.1.2 Recipient domain is not valid")
             for a in addresses]))
    finally:
        store.close_sync()


def listed(admin: Admin) -> set[str]:
    status, body = admin.call("GET", "/api/suppression?limit=1000")
    assert status == 200, body
    return {e["address"] for e in body["entries"]}


def test_admin_api_removes_entries_that_are_no_valid_address(admin: Admin) -> None:
    list_legacy_entries(admin, LEGACY)
    assert set(SHOWN) <= listed(admin)
    for address in SHOWN:
        path = "/api/suppression/" + urllib.parse.quote(address, safe="@")
        status, body = admin.call("DELETE", path)
        assert status == 200, (address, body)
        assert body == {"address": address, "removed": True}
    assert not listed(admin) & set(SHOWN)
    status, body = admin.call("DELETE", "/api/suppression/not-an-address")
    assert status == 404 and body["field"] == "address", body


def test_cli_removes_entries_that_are_no_valid_address(admin: Admin) -> None:
    list_legacy_entries(admin, LEGACY)
    assert set(SHOWN) <= listed(admin)
    removed = run_cli("suppression", "remove", *SHOWN, config=admin.config)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert f"removed {len(SHOWN)} address(es)" in removed.stdout
    assert not listed(admin) & set(SHOWN)
    again = run_cli("suppression", "remove", "not-an-address", config=admin.config)
    assert again.returncode == 1 and "removed 0 address(es)" in again.stdout
