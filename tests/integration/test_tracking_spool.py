"""The spool state of open and click tracking on a real LMDB store: each tracked copy's
links (relay/tracking/links.py), pruned after their own retention, and who engaged lately
(relay/tracking/engagement.py), pruned by the window in bounded ops."""

from __future__ import annotations

import pytest

from relay.clock import FakeClock
from relay.delivery.sentfrom import prune_sent_op
from relay.queue.keys import new_message_id
from relay.queue.store import QueueStore
from relay.testing.factories import Stores
from relay.tracking import engagement as engagement_mod
from relay.tracking.engagement import Engagement, prune_op
from relay.tracking.links import TrackedLinks
from relay.tracking.rewrite import Link

DAY = 86400.0
NOW = 1_800_000_000.0
LINKS = [Link(0, "https://shop.example/sale?a=1&b=2", (("campaign", "spring"),)),
         Link(1, "http://blog.example/post")]


@pytest.fixture
async def store(make_store: Stores) -> QueueStore:
    return await make_store(FakeClock(NOW), name="q")


async def test_links_of_a_tracked_copy_are_kept_and_pruned_with_the_sent_records(
        store: QueueStore) -> None:
    old, new = new_message_id(NOW - 10 * DAY), new_message_id(NOW)
    links = TrackedLinks(store)
    links.remember(old, 0, LINKS, NOW - 10 * DAY)
    links.remember(new, 0, LINKS, NOW - 5)
    links.remember(new, 1, LINKS[:1], NOW - 3)   # the list is written once per message
    durable = links.flush()
    assert durable is not None
    await durable
    fresh = TrackedLinks(store)
    assert fresh.lookup(new, 0) == (LINKS, NOW - 5)
    assert fresh.lookup(new, 1) == (LINKS, NOW - 3)
    assert fresh.lookup(new, 2) is None        # a recipient whose copy was never made
    # The sent records go after the feedback window; the links stay for their own,
    # longer retention (a link in an old newsletter keeps working)...
    await store.write(prune_sent_op(store, NOW - 5 * DAY, NOW - 30 * DAY))
    assert fresh.lookup(old, 0) == (LINKS, NOW - 10 * DAY)
    # ...and go once they are past it.
    await store.write(prune_sent_op(store, NOW - 5 * DAY, NOW - 5 * DAY))
    assert fresh.lookup(old, 0) is None
    assert fresh.lookup(new, 0) == (LINKS, NOW - 5)


async def test_engaged_within_the_window_and_pruned_after_it(store: QueueStore) -> None:
    clock = store.clock
    window = [30 * DAY]
    eng = Engagement(store, lambda: window[0], clock.now)
    for address, at in (("Fan@A.test", NOW - DAY), ("old@a.test", NOW - 40 * DAY)):
        fut = eng.engaged(address, at)
        assert fut is not None
        await fut
    fut = eng.engaged("fan@a.test", NOW - 2 * DAY)  # older than what is kept: ignored
    assert fut is not None
    await fut
    assert eng.last("fan@a.test") == NOW - DAY
    assert eng.any_engaged(["x@a.test", "FAN@a.test"])
    assert not eng.any_engaged(["old@a.test", "x@a.test"])
    assert eng.engaged("x" * 400 + "@a.test", NOW) is None  # no key for a giant address
    window[0] = 0.0
    assert not eng.any_engaged(["fan@a.test"])  # 0: no engagement signal
    await store.write(prune_op(store, NOW - 30 * DAY))
    assert eng.last("old@a.test") is None and eng.last("fan@a.test") == NOW - DAY


async def test_prune_is_bounded_and_resumes(store: QueueStore,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engagement_mod, "PRUNE_KEYS", 3)
    eng = Engagement(store, lambda: DAY, store.clock.now)
    for i in range(7):
        fut = eng.engaged(f"r{i}@a.test", NOW - 2 * DAY)
        assert fut is not None
        await fut
    resume, passes = b"", 0
    while True:
        resume = await store.write(prune_op(store, NOW - DAY, resume))
        passes += 1
        if not resume:
            break
    assert passes == 3
    assert all(eng.last(f"r{i}@a.test") is None for i in range(7))
