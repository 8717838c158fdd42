"""The message history's size in /metrics (relay/admin/metrics.py): read from the spool at
most every 30 s however often Prometheus scrapes, and the recorder's drops as a counter."""

from __future__ import annotations

from relay.admin.metrics import HistoryUsage, Metrics
from relay.clock import FakeClock


class _Spool:
    """HistoryStore.usage()'s figures, counting the reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.messages = 0

    def usage(self) -> dict[str, int]:
        self.reads += 1
        return {"messages": self.messages, "bytes": 4096 * (1 + self.messages),
                "oldest": 1_790_000_000}


def test_usage_is_read_at_most_every_30_seconds() -> None:
    clock, spool = FakeClock(), _Spool()
    usage = HistoryUsage(spool.usage, clock)
    assert usage.cached() is None  # nothing read yet: a reader must go to the spool
    assert usage.read()["messages"] == 0 and spool.reads == 1
    spool.messages = 5
    clock.advance(29.0)
    assert usage.read()["messages"] == 0 and usage.cached() == usage.read()
    assert spool.reads == 1
    clock.advance(1.0)
    assert usage.cached() is None
    assert usage.read()["messages"] == 5 and spool.reads == 2


def test_metrics_show_history_size_and_drops() -> None:
    clock, spool = FakeClock(), _Spool()
    spool.messages = 12
    dropped = [0]
    metrics = Metrics(history_usage=HistoryUsage(spool.usage, clock),
                      history_dropped=lambda: dropped[0])
    dropped[0] = 3
    text = metrics.render().decode()
    assert "relay_history_messages 12.0" in text
    assert "relay_history_bytes 53248.0" in text
    assert "relay_history_dropped_total 3.0" in text
    for _ in range(5):
        metrics.render()
    assert spool.reads == 1  # five more scrapes within 30 s: no spool read


def test_no_history_no_history_metrics() -> None:
    assert "relay_history" not in Metrics().render().decode()
