"""Tenant-scoped suppression: a tenant whose suppression scope is "tenant" keeps its own
list, so a complaint or hard bounce against its mail does not stop another tenant (or
the account list) from mailing the same address; the account list still applies to the
others. Real LMDB spool, real ARF report through the feedback processor, the CLI as a
process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from feedback_reports import yahoo_complaint

from relay.clock import FakeClock
from relay.config import from_dict
from relay.events.log import EventLog
from relay.feedback.processor import FeedbackProcessor
from relay.queue.ops import NewMessage, Settled
from relay.queue.records import RecipientRecord, State
from relay.queue.store import QueueStore
from relay.suppression.guard import Suppressor
from relay.suppression.store import Entry, SuppressionList
from relay.verp import Verp

ADDRESS = "shared@example.net"


def _scope(tenant: str) -> str:
    # "a" keeps its own list; every other tenant uses the account list.
    return tenant if tenant == "a" else ""


async def _submit(store: QueueStore, tenant: str) -> str:
    msg = NewMessage(sender="app@example.com", recipients=[ADDRESS],
                     body=b"Subject: hi\r\n\r\nx\r\n", tenant=tenant)
    return (await store.submit_record(msg)).id


async def test_a_complaint_against_one_tenant_does_not_block_another(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = from_dict({"server": {"hostname": "relay.test", "state_dir": str(tmp_path)}})
    store = QueueStore(tmp_path / "queue", clock)
    events = EventLog(tmp_path / "events.jsonl")
    verp = Verp(b"k" * 32)
    await store.start()
    try:
        processor = FeedbackProcessor(store, verp, events, clock, lambda: cfg, tmp_path,
                                      suppression_scope=_scope)
        guard = Suppressor(store, lambda: cfg, scope_of=_scope)
        mid_a, mid_b = await _submit(store, "a"), await _submit(store, "b")
        msg_a, msg_b = store.message(mid_a), store.message(mid_b)
        assert msg_a is not None and msg_b is not None and msg_a.tenant == "a"

        handled = await processor.handle(
            ["fbl@relay.test"], yahoo_complaint(ADDRESS, verp.address(mid_a, 0, "relay.test")))
        assert (handled.outcome, handled.suppressed) == ("complaint", True)
        assert SuppressionList(store, "a").get(ADDRESS) is not None
        assert SuppressionList(store).get(ADDRESS) is None  # the account list: untouched
        assert guard.suppressed(msg_a, [ADDRESS]) == {ADDRESS}
        assert guard.suppressed(msg_b, [ADDRESS]) == set()   # tenant b still mails it

        # A complaint against tenant b's mail goes to the account list, which does not
        # apply to tenant a (a looks only at its own list).
        await processor.handle(
            ["fbl@relay.test"], yahoo_complaint(ADDRESS, verp.address(mid_b, 0, "relay.test")))
        assert SuppressionList(store).get(ADDRESS) is not None
        assert [e.address for e in SuppressionList(store, "a").entries()] == [ADDRESS]
        assert SuppressionList(store, "b").count() == 0
        assert SuppressionList(store).count() == 1
    finally:
        await store.close()
        events.close()


async def test_a_hard_bounce_lists_the_address_in_the_tenants_scope(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = from_dict({"server": {"hostname": "relay.test", "state_dir": str(tmp_path)}})
    store = QueueStore(tmp_path / "queue", clock)
    await store.start()
    try:
        guard = Suppressor(store, lambda: cfg, scope_of=_scope)
        mid_a, mid_c = await _submit(store, "a"), await _submit(store, "c")
        bounced = RecipientRecord(ADDRESS, "example.net", State.BOUNCED,
                                  last_response="550 5.1.1 no such user")
        settled = [Settled(store.message(mid_a), 0, bounced)]  # type: ignore[arg-type]
        await guard.after_settle(settled, clock.now())
        assert SuppressionList(store, "a").get(ADDRESS) is not None
        assert SuppressionList(store).get(ADDRESS) is None
        assert guard.suppressed(store.message(mid_c), [ADDRESS]) == set()  # type: ignore[arg-type]
        # Removing from one tenant's list leaves the others alone.
        await store.write(SuppressionList(store).add_op([Entry(ADDRESS, "BOUNCE", 1.0)]))
        assert await store.write(SuppressionList(store, "a").remove_op([ADDRESS])) == 1
        assert SuppressionList(store).get(ADDRESS) is not None
    finally:
        await store.close()


def _relay(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_tenant_lists_are_separate(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path}"\n')
    assert _relay(cfg, "suppression", "add", ADDRESS, "--tenant", "acme").returncode == 0
    mine = _relay(cfg, "suppression", "list", "--json", "--tenant", "acme")
    assert [json.loads(x)["address"] for x in mine.stdout.splitlines()] == [ADDRESS]
    assert _relay(cfg, "suppression", "list", "--json").stdout.strip() == ""
    assert _relay(cfg, "suppression", "list", "--json", "--tenant", "other").stdout.strip() == ""
    bad = _relay(cfg, "suppression", "list", "--tenant", "no spaces")
    assert bad.returncode != 0 and "--tenant" in bad.stderr and "Traceback" not in bad.stderr
    assert _relay(cfg, "suppression", "remove", ADDRESS, "--tenant", "acme").returncode == 0
    assert _relay(cfg, "suppression", "list", "--json", "--tenant", "acme").stdout.strip() == ""
