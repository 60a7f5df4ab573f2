"""systemd's notify protocol: datagrams on ``$NOTIFY_SOCKET`` (READY, STATUS, WATCHDOG...).

Without ``NOTIFY_SOCKET`` (not under systemd) every call does nothing. The watchdog pings
come from a task on the event loop, so a loop that hangs stops them and systemd restarts
the service (``WatchdogSec=`` in the unit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages if the service manager asked for them."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        #: seconds between watchdog pings (half of WatchdogSec), None if not asked for
        self.watchdog_interval = int(usec) / 2e6 if wanted else None
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        """True under a service manager that listens."""
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """``send(READY=1, STATUS="...")``; False if not sent (logged once per failure)."""
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("cannot notify the service manager at %s: %s", self.address, exc)
            return False
        return True

    async def watchdog(self) -> None:
        """Ping the watchdog until cancelled (does nothing if it was not asked for)."""
        if self.watchdog_interval is None or not self.enabled:
            return
        while True:
            self.send(WATCHDOG=1)
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
