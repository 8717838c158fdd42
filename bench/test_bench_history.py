"""The message history's costs: recording, and searching a large history.

- record: HistoryStore.record_op() for one message of 3 recipients (its Send, 3
  delivery attempts, one Delivery event for the 3), alone and as 100 messages in one op
  as the recorder batches them; the transaction is aborted (the op's own cost, without
  the fsync it shares with the queue's writes). `test_recorder_feed_per_message`: what
  the EventLog subscriber and the attempt observer do per message on the event loop
  (encode the event JSON, make the entries).
- search: HistoryStore.search() on a spool holding HISTORY_SIZES messages (built once per
  session with direct record_op batches of 1,000: 1-3 recipients each from 200,000
  addresses on realistic domains, subjects from templates, 50 tenants with a skewed
  share, 30 days of traffic, 92 % delivered, 3 % bounced, 3 % still deferred, 2 %
  complained): by recipient; by a subject word and a status; by tenant within the last
  day; 10 pages of 50 of one tenant through cursors; a combination nothing matches,
  which scans up to the 200,000-candidate cap; get() of one message with its timeline.

Sizes: RELAY_BENCH_HISTORY_SIZES="100000,1000000" (the default with --benchmark-enable);
under --benchmark-disable (the smoke run) 1,000 and 2,000 unless the variable is set.
The 1M spool takes about 5 minutes to build (3.8 GB); RELAY_BENCH_HISTORY_DIR=DIR keeps
the spools there (DIR/history-SIZE) and reuses them on the next run.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from relay.clock import SystemClock
from relay.events import model as M
from relay.history.entries import entries_from_event, entry_from_attempt, message_from_event
from relay.history.model import HistoryMessage, MessageQuery, RecipientHistory, TimelineEntry
from relay.history.store import PRUNE_CHUNK, HistoryStore
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore

T_END = 1_790_035_200.0
SPAN = 30 * 86400.0
# Messages per op while building (about 9,000 entries and 25,000 index keys: one write
# transaction of 5,000 messages into a history of ~1M dirtied more pages than LMDB takes).
BUILD_BATCH = 1000
DOMAINS = (["gmail.com"] * 40 + ["yahoo.com"] * 15 + ["outlook.com"] * 15
           + [f"corp{i}.example" for i in range(30)])
SUBJECTS = ("Your order #{n} has shipped", "Weekly newsletter: week {w} highlights",
            "Password reset for {u}", "Invoice {n} from {c}", "Welcome to {c}, {u}!",
            "Your {c} receipt", "Reminder: appointment on day {w}",
            "Security alert for your {c} account")
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka")


def _sizes(config: Any) -> tuple[int, int]:
    env = os.environ.get("RELAY_BENCH_HISTORY_SIZES", "")
    if env:
        a, _, b = env.partition(",")
        return int(a), int(b or a)
    if config.getoption("benchmark_disable", False):
        return 1000, 2000
    return 100_000, 1_000_000


@pytest.fixture(scope="session")
def history_sizes(request: pytest.FixtureRequest) -> tuple[int, int]:
    return _sizes(request.config)


class _Spool:
    def __init__(self, path: Path, size: int) -> None:
        self.size = size
        self.store = QueueStore(path, SystemClock(), map_size=64 << 30)
        self.history = HistoryStore(self.store)
        self.rng = random.Random(size)
        self.addresses = [f"user{i}@{self.rng.choice(DOMAINS)}" for i in range(200_000)]
        self.build_seconds = 0.0

    def build(self) -> None:
        t0 = time.perf_counter()
        rng = self.rng
        for start in range(0, self.size, BUILD_BATCH):
            msgs: list[HistoryMessage] = []
            entries: list[tuple[str, TimelineEntry]] = []
            for i in range(start, min(self.size, start + BUILD_BATCH)):
                m, e = self._message(i, rng)
                msgs.append(m)
                entries += e
            self.store.write_now(self.history.record_op(msgs, entries))
        self.build_seconds = time.perf_counter() - t0

    def _message(self, i: int, rng: random.Random) -> tuple[HistoryMessage,
                                                              list[tuple[str, TimelineEntry]]]:
        ts = T_END - SPAN + SPAN * i / self.size
        qid = f"{int(ts * 1000):012x}{i:08x}"
        tenant = f"tenant{min(49, int(rng.paretovariate(1.0)) - 1)}"
        company = rng.choice(COMPANIES)
        subject = rng.choice(SUBJECTS).format(n=rng.randrange(10**6), w=rng.randrange(52),
                                              u=f"user{rng.randrange(10**5)}", c=company)
        rcpts = rng.sample(self.addresses, rng.choice((1, 1, 1, 2, 3)))
        sender = f"bounce@{company.lower()}.example"
        msg = HistoryMessage(
            id=qid, received_at=ts, sender=sender, tenant=tenant,
            configuration_set=f"set{rng.randrange(10)}", subject=subject,
            from_=[f"{company} <noreply@{company.lower()}.example>"], to=rcpts,
            message_id=f"{qid}@{company.lower()}.example", size=rng.randrange(2000, 60000),
            identity=f"{company.lower()}.example",
            recipients=[RecipientHistory(r) for r in rcpts], source="smtp")
        entries: list[tuple[str, TimelineEntry]] = []
        for n, r in enumerate(rcpts):
            entries.append((qid, TimelineEntry(ts=ts, recipient=r, kind="accepted",
                                               event_type="Send",
                                               event=b"{" + b"x" * 800 + b"}" if n == 0
                                               else b"")))
            roll = rng.random()
            provider = r.rpartition("@")[2].split(".")[0]
            at = ts + rng.uniform(0.1, 3)
            attempt = TimelineEntry(ts=at, recipient=r, kind="attempt", result="delivered",
                                    source_ip="127.0.0.10", mx_host=f"mx.{provider}",
                                    remote_ip="127.0.0.20", tls=True, provider=provider,
                                    response="250 2.0.0 OK queued", duration_ms=180)
            if roll < 0.03:                      # still deferred
                entries.append((qid, msgspec.structs.replace(
                    attempt, result="deferred", response="451 4.7.1 try again later")))
            elif roll < 0.06:                    # bounced
                entries.append((qid, msgspec.structs.replace(
                    attempt, result="bounced", response="550 5.1.1 user unknown")))
                entries.append((qid, TimelineEntry(ts=at + 0.01, recipient=r, kind="bounced",
                                                   event_type="Bounce",
                                                   response="550 5.1.1 user unknown",
                                                   detail="Permanent/NoEmail")))
            else:
                entries.append((qid, attempt))
                entries.append((qid, TimelineEntry(ts=at + 0.01, recipient=r,
                                                   kind="delivered", event_type="Delivery",
                                                   response="250 2.0.0 OK queued")))
                if roll < 0.08:                  # complained
                    entries.append((qid, TimelineEntry(ts=at + 3600, recipient=r,
                                                       kind="complained",
                                                       event_type="Complaint")))
        return msg, entries

    def close(self) -> None:
        self.store.close_sync()


@pytest.fixture(scope="session")
def spools(tmp_path_factory: pytest.TempPathFactory,
           history_sizes: tuple[int, int]) -> Iterator[_Lazy]:
    built: dict[str, _Spool] = {}

    keep = os.environ.get("RELAY_BENCH_HISTORY_DIR", "")

    def get(name: str) -> _Spool:
        if name not in built:
            size = history_sizes[0 if name == "small" else 1]
            if keep:
                # a spool kept between runs: built once, reused while its marker says done
                base = Path(keep) / f"history-{size}"
                base.mkdir(parents=True, exist_ok=True)
            else:
                base = tmp_path_factory.mktemp(f"history-{size}")
            marker = base / "built"
            sp = _Spool(base / "queue", size)
            if marker.exists():
                sp.build_seconds = float(marker.read_text())
            else:
                sp.build()
                marker.write_text(f"{sp.build_seconds:.1f}")
            built[name] = sp
        return built[name]

    yield _Lazy(get)
    for sp in built.values():
        sp.close()


class _Lazy:
    def __init__(self, get: Any) -> None:
        self.get = get

    def __getitem__(self, name: str) -> _Spool:
        return self.get(name)  # type: ignore[no-any-return]


SIZES = ["small", "large"]
# Building the large spool takes about 5 minutes on a loaded 2-core machine, inside the
# first test that uses it: more than the suite's default timeout.
BUILD_TIMEOUT = pytest.mark.timeout(3600)


def _info(benchmark: Any, sp: _Spool, page: Any = None) -> None:
    benchmark.extra_info["history_messages"] = sp.size
    benchmark.extra_info["build_seconds"] = round(sp.build_seconds, 1)
    benchmark.extra_info["spool_bytes"] = sp.history.usage()["bytes"]
    if page is not None:
        benchmark.extra_info["found"] = len(page.messages)
        benchmark.extra_info["scanned"] = page.scanned


@BUILD_TIMEOUT
@pytest.mark.parametrize("size", SIZES)
def test_search_by_recipient(benchmark: Any, spools: Any, size: str) -> None:
    sp = spools[size]
    target = sp.history.search(MessageQuery(limit=1)).messages[0].recipients[0].address
    page = benchmark(sp.history.search, MessageQuery(recipient=target))
    assert page.messages
    _info(benchmark, sp, page)


@BUILD_TIMEOUT
@pytest.mark.parametrize("size", SIZES)
def test_search_by_subject_word_and_status(benchmark: Any, spools: Any, size: str) -> None:
    sp = spools[size]
    page = benchmark(sp.history.search, MessageQuery(subject="invoice", status="bounced"))
    assert page.messages
    _info(benchmark, sp, page)


@BUILD_TIMEOUT
@pytest.mark.parametrize("size", SIZES)
def test_search_by_tenant_last_day(benchmark: Any, spools: Any, size: str) -> None:
    sp = spools[size]
    q = MessageQuery(tenant="tenant3", since=T_END - 86400, until=T_END)
    page = benchmark(sp.history.search, q)
    assert page.messages
    _info(benchmark, sp, page)


@BUILD_TIMEOUT
@pytest.mark.parametrize("size", SIZES)
def test_search_ten_pages(benchmark: Any, spools: Any, size: str) -> None:
    sp = spools[size]

    def pages() -> int:
        cursor, n = "", 0
        for _ in range(10):
            page = sp.history.search(MessageQuery(tenant="tenant1", cursor=cursor))
            n += len(page.messages)
            cursor = page.next_cursor
            if not cursor:
                break
        return n

    assert benchmark(pages) > 0
    _info(benchmark, sp)


@BUILD_TIMEOUT
@pytest.mark.parametrize("size", SIZES)
def test_search_no_match_scan_cap(benchmark: Any, spools: Any, size: str) -> None:
    """The largest tenant's mail with a status none has: the tenant's index drives and
    every candidate is probed, up to the 200,000-candidate cap (the worst case of one
    call; the caller pages on with next_cursor)."""
    sp = spools[size]
    q = MessageQuery(tenant="tenant0", status="rejected")
    page = benchmark.pedantic(sp.history.search, args=(q,), rounds=3, iterations=1)
    assert not page.messages
    _info(benchmark, sp, page)


@BUILD_TIMEOUT
@pytest.mark.parametrize("size", SIZES)
def test_get_with_timeline(benchmark: Any, spools: Any, size: str) -> None:
    sp = spools[size]
    qid = sp.history.search(MessageQuery(limit=1, until=T_END - 86400)).messages[0].id
    view = benchmark(sp.history.get, qid)
    assert view is not None and view.timeline
    _info(benchmark, sp)


@BUILD_TIMEOUT
@pytest.mark.parametrize("size", SIZES)
def test_prune_op_chunk(benchmark: Any, spools: Any, size: str) -> None:
    """prune_op() of the PRUNE_CHUNK (100) oldest messages (timeline and index keys with
    them), in a transaction then aborted: the op's own time, which the event loop spends."""
    sp = spools[size]

    def run() -> int:
        txn = sp.store.env.begin(write=True)
        try:
            return sp.history.prune_op(T_END)(txn)  # type: ignore[no-any-return]
        finally:
            txn.abort()

    assert benchmark.pedantic(run, rounds=5, iterations=1) == min(PRUNE_CHUNK, sp.size)
    _info(benchmark, sp)


# ------------------------------------------------------------------ recording


class _Attempt(msgspec.Struct):
    queue_id: str
    recipient: str
    kind: str
    started_at: float
    received_at: float
    source_ip: str = "127.0.0.10"
    provider: str = "gmail"
    response: str = "250 2.0.0 OK"
    mx_host: str = "gmail-smtp-in.l.google.com"
    remote_ip: str = "127.0.0.20"
    tls: bool = True
    reused: bool = True
    duration_ms: int = 180
    dkim: list[str] = []


def _one_message(i: int) -> tuple[M.Event, list[_Attempt], M.Event]:
    ts = T_END + i
    rcpts = ["ann@gmail.com", "bob@gmail.com", "cid@gmail.com"]
    rec = MessageRecord(
        id=f"{int(ts * 1000):012x}{i:08x}", sender="bounce@acme.example", recipients=rcpts,
        received_at=ts, size=4000, client_ip="127.0.0.5", auth_user="app",
        headers={"From": "Acme <noreply@acme.example>", "To": ", ".join(rcpts),
                 "Subject": "Your order #12345 has shipped",
                 "Message-ID": f"<{i}@acme.example>", "Date": "Mon, 7 Dec 2026 21:00 +0000"},
        tenant="acme", configuration_set="orders")
    attempts = [_Attempt(rec.id, r, "delivered", ts + 1, ts, dkim=["d=acme.example s=s1"])
                for r in rcpts]
    return M.send_event(rec), attempts, M.delivery_event(rec, rcpts, "250 2.0.0 OK", ts + 2,
                                                         "mx")


def _batch(i0: int, n: int) -> tuple[list[HistoryMessage], list[tuple[str, TimelineEntry]]]:
    msgs: list[HistoryMessage] = []
    entries: list[tuple[str, TimelineEntry]] = []
    for i in range(i0, i0 + n):
        send, attempts, deliv = _one_message(i)
        for ev in (send, deliv):
            m = message_from_event(ev)
            assert m is not None
            msgs.append(m)
            entries += entries_from_event(ev, msgspec.json.encode(ev))
        entries += [entry_from_attempt(a) for a in attempts]
    return msgs, entries


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    s = QueueStore(tmp_path / "queue", SystemClock(), map_size=1 << 28)
    yield s
    s.close_sync()


@pytest.mark.parametrize("batch", [1, 100])
def test_record_op_per_message(benchmark: Any, store: QueueStore, batch: int) -> None:
    """One op recording `batch` messages (Send, 3 attempts, Delivery each); aborted."""
    h = HistoryStore(store)
    msgs, entries = _batch(0, batch)

    def run() -> int:
        txn = store.env.begin(write=True)
        try:
            return h.record_op(msgs, entries)(txn)
        finally:
            txn.abort()

    assert benchmark(run) == 9 * batch
    benchmark.extra_info["messages_per_round"] = batch


def test_recorder_feed_per_message(benchmark: Any) -> None:
    """The subscriber's and observer's sync work for one message: JSON, entries."""
    send, attempts, deliv = _one_message(0)

    def run() -> int:
        n = 0
        for ev in (send, deliv):
            message_from_event(ev)
            n += len(entries_from_event(ev, msgspec.json.encode(ev)))
        n += len([entry_from_attempt(a) for a in attempts])
        return n

    assert benchmark(run) == 9
