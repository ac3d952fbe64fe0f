"""sd_notify(3), by hand: one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name when it starts with ``@``).  No dependency:
the protocol is that one ``sendto``.  Everything is a no-op when the variable is unset (not
started by systemd with ``Type=notify``), and a failed send is logged, never raised: the
governor's work never depends on systemd hearing about it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("governor.sdnotify")


class Notifier:
    """``notify("READY=1", "STATUS=...")`` to ``$NOTIFY_SOCKET`` (or ``address``)."""

    def __init__(self, address: str | None = None) -> None:
        addr = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: str | None = addr or None
        self.sent = 0
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` as one message; True when it was sent."""
        if self.address is None or not fields:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(fields).encode(), addr)
        except OSError as e:
            if not self._warned:  # once: a watchdog ping every few seconds must not flood
                self._warned = True
                log.warning("sd_notify failed", extra={"socket": self.address,
                                                       "error": e.strerror or str(e)})
            return False
        self.sent += 1
        return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when the
    watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
