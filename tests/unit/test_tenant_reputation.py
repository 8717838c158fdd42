"""The reputation state machine over weeks of fake-clock time: into review, into pause,
no pause again after a resume from the old figures, the minimum volume, counts aging out,
a small sender judged on a representative volume, and the reason texts."""

from __future__ import annotations

from relay.clock import FakeClock
from relay.tenants.model import StatusRecord
from relay.tenants.reputation import Figures, Lines, ReputationBook, decide, percent

T0 = 1_790_035_200.0
DAY = 86400.0
A = "tenant:a"


def _day(book: ReputationBook, clock: FakeClock, status: StatusRecord, *, sends: int,
         bounces: int = 0, complaints: int = 0) -> tuple[StatusRecord, list[StatusRecord]]:
    """One day of mail spread over 24 hours; the status after it and its changes."""
    changes = []
    for h in range(24):
        share = sends // 24 + (1 if h < sends % 24 else 0)
        b = bounces // 24 + (1 if h < bounces % 24 else 0)
        c = complaints // 24 + (1 if h < complaints % 24 else 0)
        change = book.note(A, status, clock.now(), sends=share, bounces=b, complaints=c)
        if change is not None:
            changes.append(change)
            status = change
        clock.advance(hours=1)
    return status, changes


def test_ramps_into_review_then_pause_with_reasons() -> None:
    clock = FakeClock(T0)
    book = ReputationBook(Lines(min_volume=1000))
    status = StatusRecord()
    for _ in range(7):
        status, changes = _day(book, clock, status, sends=1000, bounces=10)
        assert changes == []
    # A bad list: 12 % bounces a day, and the week's rate climbs through the lines.
    seen = []
    for _ in range(7):
        status, changes = _day(book, clock, status, sends=1000, bounces=120)
        seen += changes
    assert [c.status for c in seen] == ["UnderReview", "Paused"]
    review, paused = seen
    assert review.automatic and review.changed_by == "relay"
    assert "is at or above the review line 5 %" in review.reason
    assert review.bounce_rate >= 0.05
    assert paused.bounce_rate >= 0.10
    assert paused.reason.startswith(f"bounce rate {percent(paused.bounce_rate)} over "
                                    f"{paused.volume:,} sends is at or above the pause "
                                    "line 10 %")
    # Paused stays paused however good the mail becomes.
    for _ in range(14):
        status, changes = _day(book, clock, status, sends=1000)
        assert changes == []
    assert status.status == "Paused"


def test_reason_text_names_rate_volume_and_line() -> None:
    change = decide(StatusRecord(), Figures(sends=1000, bounces=104), Lines(), T0)
    assert change is not None and change.status == "Paused"
    assert change.reason == ("bounce rate 10.4 % over 1,000 sends is at or above the "
                             "pause line 10 %")
    assert (change.volume, change.bounce_rate, change.changed_at) == (1000, 0.104, T0)
    both = decide(StatusRecord(), Figures(sends=2000, bounces=100, complaints=2), Lines(), T0)
    assert both is not None and both.status == "UnderReview"
    assert both.reason == ("bounce rate 5 % over 2,000 sends is at or above the review "
                           "line 5 %; complaint rate 0.1 % over 2,000 sends is at or "
                           "above the review line 0.1 %")
    complaints = decide(StatusRecord(), Figures(sends=1000, complaints=5), Lines(), T0)
    assert complaints is not None and complaints.status == "Paused"
    assert "complaint rate 0.5 % over 1,000 sends is at or above the pause line 0.5 %" \
        in complaints.reason


def test_just_below_the_lines_changes_nothing() -> None:
    assert decide(StatusRecord(), Figures(sends=1000, bounces=49, complaints=0), Lines(),
                  T0) is None
    under = StatusRecord(status="UnderReview")
    assert decide(under, Figures(sends=1000, bounces=99, complaints=4), Lines(), T0) is None


def test_resume_starts_fresh_and_old_figures_do_not_pause_again() -> None:
    clock = FakeClock(T0)
    book = ReputationBook(Lines(min_volume=500))
    status = StatusRecord()
    status, changes = _day(book, clock, status, sends=1000, complaints=10)  # 1 %
    assert status.status == "Paused"
    clock.advance(hours=5)
    status = book.resume(A, status, "alice", clock.now())
    assert (status.status, status.changed_by, status.automatic) == ("Healthy", "alice", False)
    assert status.last_fresh_start == clock.now()
    assert book.evaluate(A, status, clock.now()) is None
    assert book.figures(A, clock.now(), status.last_fresh_start).sends == 0
    # Clean mail after the resume: a week of it, and the old complaints never come back.
    for _ in range(7):
        status, changes = _day(book, clock, status, sends=1000, complaints=0)
        assert changes == []
    assert status.status == "Healthy"


def test_fresh_start_holds_without_the_reset_too() -> None:
    """Counts of hours that ended before the fresh start are not counted, even if kept
    (a store read back without the resume's reset)."""
    book = ReputationBook(Lines(min_volume=10))
    book.record(A, T0, sends=100, complaints=50)
    fresh = StatusRecord(last_fresh_start=T0 + 7200)
    book.record(A, T0 + 7300, sends=100)
    fig = book.figures(A, T0 + 7400, fresh.last_fresh_start)
    assert (fig.sends, fig.complaints) == (100, 0)
    assert book.evaluate(A, fresh, T0 + 7400) is None


def test_minimum_volume_guard() -> None:
    clock = FakeClock(T0)
    book = ReputationBook(Lines(min_volume=1000, max_window=7 * DAY))
    status = StatusRecord()
    # 50 % bounces, but only 100 sends a week: not representative, nothing changes.
    for _ in range(21):
        status, changes = _day(book, clock, status, sends=14, bounces=7)
        assert changes == []
    assert status.status == "Healthy"
    fig = book.figures(A, clock.now())
    assert fig.sends < 1000 and fig.bounce_rate > 0.4


def test_small_sender_is_judged_on_a_representative_volume() -> None:
    """50 sends a day at 12 % bounces: a week holds 350 sends, below min_volume 1000, so
    the span reaches back until it holds 1000 (20 days), and then the pause comes."""
    clock = FakeClock(T0)
    book = ReputationBook(Lines(min_volume=1000))  # max_window 30 days
    status = StatusRecord()
    days = 0
    while status.status != "Paused" and days < 40:
        status, _ = _day(book, clock, status, sends=50, bounces=6)
        days += 1
    assert status.status == "Paused"
    assert days == 20
    assert status.volume >= 1000
    fig = book.figures(A, clock.now())
    assert clock.now() - fig.since > 7 * DAY


def test_review_recovers_as_bad_counts_age_out() -> None:
    clock = FakeClock(T0)
    book = ReputationBook(Lines(min_volume=1000))
    status = StatusRecord()
    status, changes = _day(book, clock, status, sends=2000, bounces=140)  # 7 %
    assert [c.status for c in changes] == ["UnderReview"]
    recovered = []
    for _ in range(10):
        status, changes = _day(book, clock, status, sends=1000)
        recovered += changes
    assert [c.status for c in recovered] == ["Healthy"]
    assert recovered[0].automatic
    assert "are below the review lines 5 % and 0.1 %" in recovered[0].reason
    # It recovered as soon as the rate over the span fell below 5 % (past 800 clean
    # sends: 140 / 2800), long before the bad day left the 7-day window.
    assert DAY < recovered[0].changed_at - T0 < 2 * DAY
    assert recovered[0].volume > 2800
    # Eleven days on, the bad day has left the 7-day span altogether.
    fig = book.figures(A, clock.now())
    assert (fig.sends, fig.bounces) == (7000, 0)


def test_operator_pause_is_not_lifted_by_good_figures() -> None:
    clock = FakeClock(T0)
    book = ReputationBook(Lines(min_volume=100))
    status = book.pause(A, StatusRecord(), "bob", clock.now(), "customer asked")
    assert (status.status, status.automatic, status.reason) == ("Paused", False,
                                                                "customer asked")
    status, changes = _day(book, clock, status, sends=1000)
    assert changes == [] and status.status == "Paused"


def test_memory_is_bounded_by_max_window() -> None:
    clock = FakeClock(T0)
    book = ReputationBook(Lines(max_window=30 * DAY))
    for _ in range(60 * 24):
        book.record(A, clock.now(), sends=1)
        clock.advance(hours=1)
    assert book.buckets(A) <= 30 * 24 + 1


def test_scopes_are_independent() -> None:
    book = ReputationBook(Lines(min_volume=10))
    assert book.note("tenant:a", StatusRecord(), T0, sends=100, complaints=50) is not None
    assert book.note("tenant:b", StatusRecord(), T0, sends=100) is None
    assert book.figures("configuration-set:x", T0).sends == 0
