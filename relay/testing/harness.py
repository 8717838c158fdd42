"""The production graph of one relay process for tests: `Harness(cfg, clock, overrides)`.

Built by relay/wiring.py's `build()`, exactly as relay/app.py builds it: the journal,
suppression, DKIM signing and VERP, the mailbox simulator, the shaper when pools are
configured. Fakes sit only at the edges: the clock (a FakeClock by default), the DNS server
on loopback (relay/testing/dnsserver.py, through `dns.nameservers`), sinks on 127.0.0.x
(relay/testing/sink.py, through `delivery.port`), and what `Overrides` replaces.

`start()` starts it in RelayApp's order without the listeners, the admin API and the
hourly/daily loops (pruning, history retention, DKIM rotation): the spool recovered and
committing, the history recorder, the event outbox, the journal (replaying what a
previous run left staged), and with `deliver=True` the loop-lag probe and the scheduler's
own loop. Without it the test drives delivery:
`await h.scheduler.run_until_idle()`, or `deliver_until()` that jumps a FakeClock from due
time to due time. `close()` stops it in RelayApp.stop()'s order.
"""

from __future__ import annotations

from typing import Any

from relay.clock import Clock, FakeClock
from relay.config import Config
from relay.wiring import Components, Overrides, build


class Harness:
    def __init__(self, cfg: Config, clock: Clock | None = None,
                 overrides: Overrides | None = None) -> None:
        self.cfg = cfg
        self.clock: Any = clock if clock is not None else FakeClock()
        self.parts: Components = build(cfg, self.clock, overrides)
        p = self.parts
        # The parts tests look at most, by their usual names.
        self.store, self.events, self.scheduler = p.store, p.events, p.scheduler
        self.sender, self.shaped, self.users = p.sender, p.shaped, p.users
        self.keys, self.signer, self.verp = p.dkim_keys, p.signer, p.verp
        self.journal, self.feedback, self.submitter = p.journal, p.feedback, p.submitter
        self.tenants, self.monitor = p.tenants, p.monitor
        # The message history ([history] enabled): its store, statistics and recorder
        # (`await h.recorder.run_once()` writes what is pending now).
        self.history, self.stats, self.recorder = p.history, p.stats, p.recorder
        self.recovered = 0
        self._delivering = False

    async def start(self, *, deliver: bool = False) -> None:
        p = self.parts
        self.recovered = p.store.write_now(p.store.recover_op(self.clock.now(),
                                                              shard=p.worker))
        await p.store.start()
        if p.recorder is not None:
            p.recorder.start()
        await p.event_router.start()
        p.journal.replay()
        p.journal.start()
        p.monitor.start()
        if deliver:
            p.loop_lag.start()
            p.scheduler.start()
            self._delivering = True

    async def deliver_until(self, until: float | None = None) -> None:
        """Deliver what is due, jumping the FakeClock to the next due time, until nothing
        is due or the next due time is past `until` (epoch seconds; None: no limit)."""
        while True:
            await self.scheduler.run_until_idle()
            nd = self.store.next_due_at()
            if nd is None or (until is not None and nd > until):
                return
            self.clock.set(max(nd, self.clock.now()))

    async def close(self) -> None:
        p = self.parts
        if self._delivering:
            await p.scheduler.stop()
            self._delivering = False
        await p.loop_lag.stop()
        await p.journal.stop()
        await p.monitor.stop()
        if p.shaped is not None:
            await p.shaped.close()
        await p.sender.close()
        await p.event_router.stop()
        if p.recorder is not None:
            await p.recorder.stop()
        p.sent_from.flush()
        if p.tracked_links is not None:
            p.tracked_links.flush()
        await p.store.close()
        p.events.close()
