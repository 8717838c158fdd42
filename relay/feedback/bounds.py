"""PURE bounds on the shape of a feedback report: MIME parts, nesting depth (no I/O).

A report comes from anyone on the internet, and the email package's parser is pure
Python: 400,000 tiny MIME parts in 14 MB took it ~10 s and ~260 MB. So:
- `too_many_parts(data, bounds)` runs first, on the event loop: every MIME part begins
  after a boundary delimiter line, and every such line begins with "--", so counting
  the lines that begin with "--" (a C-speed bytes count, a few ms for 10 MB) bounds
  the parts without parsing anything. Other lines begin with "--" too (signatures,
  "-->" in HTML, rulers in a returned message), so only a count far beyond the bound
  (`ROUGH_FACTOR` times) is refused there: enough to keep the expensive ones from the
  parser process, never a real report;
- `parse_bounded(data, bounds)` runs in the parser process (relay/feedback/offload.py):
  it parses, measures the exact part count and nesting depth (iteratively: a deep
  nesting cannot exhaust the stack), and only a report within both is interpreted.
A report over a bound is refused (554 5.6.0), never kept: a real DSN or ARF report has
a handful of parts.
"""

from __future__ import annotations

import email
from dataclasses import dataclass
from email.message import Message
from email.policy import compat32

from relay.feedback.parse import Report, parse_message

ROUGH_FACTOR = 10


@dataclass(frozen=True)
class ReportBounds:
    max_parts: int = 100
    max_depth: int = 10


def too_many_parts(data: bytes, bounds: ReportBounds) -> str:
    """A refusal reason if `data` surely has far more MIME parts than allowed, else ""
    (the exact count is `parse_bounded`'s, in the parser process)."""
    delimiters = data.count(b"\n--") + data.startswith(b"--")
    # Each part has an opening delimiter; each multipart adds one closing delimiter.
    if delimiters > ROUGH_FACTOR * (2 * bounds.max_parts + 2):
        return (f"more than {bounds.max_parts} MIME parts ({delimiters} boundary lines); "
                "a feedback report has a few")
    return ""


def shape(msg: Message) -> tuple[int, int]:
    """(parts, depth) of a parsed message: every part counted, the top one included;
    a single-part message has depth 1. Iterative (no recursion limit to hit)."""
    parts, depth = 0, 0
    stack: list[tuple[Message, int]] = [(msg, 1)]
    while stack:
        part, level = stack.pop()
        parts += 1
        depth = max(depth, level)
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((p, level + 1) for p in payload if isinstance(p, Message))
    return parts, depth


def parse_bounded(data: bytes, bounds: ReportBounds) -> Report:
    """`parse`, for a report within the bounds; a refused Report otherwise."""
    refusal = too_many_parts(data, bounds)
    if refusal:
        return Report("unknown", reason=refusal, refused=refusal)
    try:
        msg = email.message_from_bytes(data, policy=compat32)
    except Exception as e:  # the email package is lenient; this is belt and braces
        return Report("unknown", reason=f"not a message: {e}")
    parts, depth = shape(msg)
    if parts > bounds.max_parts:
        refusal = f"{parts} MIME parts (at most {bounds.max_parts})"
    elif depth > bounds.max_depth:
        refusal = f"MIME parts nested {depth} deep (at most {bounds.max_depth})"
    if refusal:
        return Report("unknown", reason=refusal, refused=refusal)
    return parse_message(msg)
