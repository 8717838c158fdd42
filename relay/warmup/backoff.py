"""Automatic backoff: responses that mean "slow down" pause an IP toward a provider.

Rules are data (pattern → action), like KumoMTA's automation rules: the first
rule whose regular expression matches the full response ("421 4.7.28 ...") and
whose provider is "" or the destination's provider decides. Actions:
- pause: the IP sends nothing more to that provider for `duration`;
- freeze: today's sends to that provider do not advance the plan;
- pause_and_freeze: both (the usual answer to a throttling reply).
Configured rules come before the built-ins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

HOUR = 3600.0


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    action: str = "pause_and_freeze"   # pause | freeze | pause_and_freeze
    duration: float = HOUR
    provider: str = ""

    @property
    def pauses(self) -> bool:
        return self.action in ("pause", "pause_and_freeze")

    @property
    def freezes(self) -> bool:
        return self.action in ("freeze", "pause_and_freeze")


def rule(pattern: str, action: str = "pause_and_freeze", duration: float = HOUR,
         provider: str = "") -> Rule:
    return Rule(re.compile(pattern, re.IGNORECASE), action, duration, provider)


BUILTIN_RULES: tuple[Rule, ...] = (
    # Gmail: "421 4.7.28 ... unusual rate of unsolicited mail originating from your IP".
    rule(r"^4\d\d[ -]4\.7\.28\b", duration=2 * HOUR),
    # Microsoft: "451 4.7.500 Server busy ... (S3150)" / "(S3140)" / "(S775)".
    rule(r"\bS3150\b|\bS3140\b|\bS775\b", duration=HOUR),
    # Yahoo: "421 4.7.0 [TSS04] Messages from x temporarily deferred".
    rule(r"\[TS\d\d\]|\[TSS\d\d\]", duration=HOUR),
    # Any other 421/451 with a 4.7.x policy code.
    rule(r"^(421|451)[ -]4\.7\.\d+", duration=30 * 60),
)


def match(rules: Sequence[Rule], provider: str, response: str) -> Rule | None:
    text = response.strip()
    for r in rules:
        if r.provider and r.provider != provider:
            continue
        if r.pattern.search(text):
            return r
    return None
