"""PURE: which pool a message leaves from, and its priority lane.

Pool: the message's [[configuration_set]] `pool`, else its credential's default pool
(`relay user add NAME --pool P`, users.json), else `delivery.pool`.
Lane (lower goes first, in the scheduler's per-destination ready queue and in the
warm-up gate when a cap is scarce): TRANSACTIONAL for a configuration set with
`priority = "transactional"`, ENGAGED for a set marked `engaged = true`, a message
tagged `engagement=high` (X-SES-MESSAGE-TAGS) or one to a recipient who opened or
clicked within warmup.engaged_window (`engaged`, fed by the tracking events:
relay/tracking/engagement.py), BULK otherwise. A cold IP thus spends
its small daily cap on mail that builds reputation, and a bulk campaign sharing the
pool never starves transactional mail. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

TRANSACTIONAL = 0
ENGAGED = 1
BULK = 2
LANES = (TRANSACTIONAL, ENGAGED, BULK)
NAMES = {TRANSACTIONAL: "transactional", ENGAGED: "engaged", BULK: "bulk"}

ENGAGED_TAG = ("engagement", "high")


def priority_of(cfg: Any, msg: Any,
                engaged: Callable[[Sequence[str]], bool] | None = None) -> int:
    """The lane of a MessageRecord under a relay.config.Config; `engaged`: whether one of
    these recipients engaged recently (None: no engagement signal)."""
    if msg.configuration_set:
        cs = cfg.configuration_set_named(msg.configuration_set)
        if cs is not None:
            if cs.priority == "transactional":
                return TRANSACTIONAL
            if cs.engaged:
                return ENGAGED
    name, value = ENGAGED_TAG
    if value in msg.tags.get(name, ()):
        return ENGAGED
    if engaged is not None and engaged(msg.recipients):
        return ENGAGED
    return BULK


def pool_of(cfg: Any, msg: Any, credential_pool: str = "") -> str:
    """The pool a MessageRecord is sent from ("" = no pool: unshaped)."""
    if msg.configuration_set:
        cs = cfg.configuration_set_named(msg.configuration_set)
        if cs is not None and cs.pool:
            return str(cs.pool)
    if credential_pool and any(p.name == credential_pool for p in cfg.pool):
        return credential_pool
    return str(cfg.delivery.pool)
