"""Log output: human-readable lines by default, JSON lines with `--log-format json`.

A JSON line has `ts` (ISO 8601 UTC), `level`, `logger`, `message`, and every
`extra={...}` field the call gave (for delivery attempts: queue_id, tenant,
recipient_domain, source_ip, provider, result, response, remote_mta, mx_host,
remote_ip, tls, delay and duration in seconds).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) or value is None \
                    else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, fmt: str = "human") -> None:
    """Configure the root logger once, on stderr (stdout carries relay's status lines)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(HUMAN_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    """The root level; aiosmtpd's own logger ("mail.log") only says more than warnings
    at debug: at info it writes every command line of every session (addresses and
    all), which relay's own per-message lines already cover."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    logging.getLogger("mail.log").setLevel(
        root.level if root.level <= logging.DEBUG else max(root.level, logging.WARNING))
