"""A reputation or policy refusal (5.7.x "low reputation", blocklists, DMARC) → warm-up backoff.

Such a refusal is the sending IP's problem, not the recipient's: it never suppresses
(relay/suppression/policy.py); it counts as a bounce for the IP's reputation window and
pauses and freezes the IP toward that provider, through the same gate.settle() the
shaper uses. The built-in backoff rules match 4xx throttling only, so a permanent
refusal that no configured rule matches gets REFUSAL_RULE.
"""

from __future__ import annotations

from relay.warmup import backoff
from relay.warmup.gate import Grant, WarmupGate

REFUSAL_RULE = backoff.rule(r"^5\d\d[ -]|5\.7\.\d+", "pause_and_freeze", backoff.HOUR)


def note_refusal(gate: WarmupGate, ip: str, provider: str, response: str, now: float,
                 rule: backoff.Rule = REFUSAL_RULE) -> list[str]:
    """Apply one refusal to `ip`'s state toward `provider`; return the gate's notices.
    `rule` applies when none of the gate's configured rules matches the response."""
    pool = next((p.name for p in gate.pools.values()
                 if any(i.address == ip for i in p.ips)), None)
    if pool is None:
        return []
    # count=0: this report is not a new send; it is one more bounce in the window.
    return gate.settle(Grant(ip, "", pool, provider, 0), [("bounced", response)], now,
                       extra_rules=(rule,))
