"""systemd readiness notification (sd_notify) without a dependency.

`notify("READY=1")` sends one datagram to the socket named by $NOTIFY_SOCKET
(a path, or "@name" for the abstract namespace); without it (not under systemd
with Type=notify) it does nothing. Errors are swallowed: readiness reporting
must never stop relay.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


def notify(*states: str) -> bool:
    """Send e.g. "READY=1", "RELOADING=1", "STOPPING=1", "STATUS=..."; True if sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "@/":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    with contextlib.suppress(OSError), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(target)
        sock.sendall("\n".join(states).encode())
        return True
    return False


def reloading() -> bool:
    """RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload units expect."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
