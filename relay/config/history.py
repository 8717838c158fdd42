"""The [history] section: the message history and sending statistics (relay/history/),
kept in the queue's LMDB and written with its group commit."""

from __future__ import annotations

import msgspec

from relay.config.types import Duration, Size, duration_text

# Sending statistics answer "the last 14 days" (SES GetSendStatistics): they must be kept
# at least that long.
MIN_STATS_RETENTION = 14 * 86400


class History(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Record each message's history (accepted, every attempt, delivered/bounced/...) and
    # the sending statistics. false: neither is written (the admin API and CLI find none).
    enabled: bool = True
    # A message's history is removed this long after it was accepted.
    retention: Duration = Duration(30 * 86400)
    # 15-minute statistics buckets are removed after this (at least 14 days).
    stats_retention: Duration = Duration(15 * 86400)
    # Each process writes what it gathered at most this often, in the queue's group
    # commit (never a sync of its own, never in an SMTP reply's path).
    flush: Duration = Duration(0.5)
    # The history's share of the spool at most; beyond it the oldest messages' history
    # is removed first. 0: no cap (retention alone bounds it).
    max_disk: Size = Size(0)

    def __post_init__(self) -> None:
        problems = []
        if self.stats_retention < MIN_STATS_RETENTION:
            problems.append(f"stats_retention = {duration_text(self.stats_retention)}: "
                            "expected at least 14d: sending statistics keep 14 days")
        if self.retention <= 0:
            problems.append(f"retention = {duration_text(self.retention)}: expected a "
                            "duration above 0, like \"30d\"")
        if self.flush <= 0 or self.flush > 60:
            problems.append(f"flush = {duration_text(self.flush)}: expected a duration "
                            "above 0 and at most 1 minute, like \"500ms\"")
        if problems:
            raise ValueError("; ".join(problems))
