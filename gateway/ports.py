"""Keeps ports open for their sessions: opens, notices loss, reopens with backoff; follows globs."""

from __future__ import annotations

import asyncio
import errno
import glob
import hashlib
import itertools
import logging
import os
import random
from collections.abc import Callable

import serial

from gateway.config import ID_UNSAFE
from gateway.drivers.serial import SerialLink, explain_open_error
from gateway.logs import Recurring
from gateway.session import DeviceSession
from gateway.settings import LinkSettings, SerialSettings

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 10.0
#: port losses within this long are one episode (summarised); open this long ends it
LOSS_SUMMARY_S = 10.0
GLOB_SCAN_S = 0.5
_PATH_POLL_S = 0.1


class PortRunner:
    """One port, one session: keeps the port open for as long as it runs.

    When the port cannot be opened or goes away, the session goes offline (its requests end
    ``offline``) and the runner tries again with exponential backoff and jitter
    (0.25 s doubling to 10 s). A device path that reappears is opened at once.
    """

    def __init__(
        self,
        url: str,
        settings: SerialSettings,
        session: DeviceSession,
        link_settings: LinkSettings | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.settings = settings
        self.link_settings = link_settings or LinkSettings()
        self.session = session
        self.opens = 0
        #: the device's offline reason when this runner is cancelled
        self.stop_reason = "gateway_stopped"
        self._rng = rng or random.Random()

    @property
    def _is_file(self) -> bool:
        return "://" not in self.url

    async def run(self) -> None:
        """Open, follow, reopen, until cancelled (then the session goes offline, cleanly)."""
        delay = BACKOFF_MIN_S
        last_error = ""
        name = self.session.device_id
        # An unplug storm (a loose cable, a device rebooting in a loop) is logged once,
        # then counted: not three lines per unplug.
        losses = Recurring(log, f"{name}: lost its port", summary_s=LOSS_SUMMARY_S)
        quiet = False  # this loss was counted, not logged: so are its reopen lines
        while True:
            try:
                link = await SerialLink.open(self.url, self.settings, self.session.on_frames,
                                            self.link_settings)
            except (OSError, serial.SerialException, ValueError) as exc:
                message = explain_open_error(self.url, exc)
                # One line per distinct problem, not one per retry.
                loud = message != last_error and not quiet
                (log.warning if loud else log.debug)("%s: %s", name, message)
                last_error = message
                self.session.mark_unavailable(_reason(self.url, exc))
                await self._wait_before_retry(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if last_error:
                (log.debug if quiet else log.warning)("%s: %s is open again", name, self.url)
            last_error = ""
            delay = BACKOFF_MIN_S
            self.opens += 1
            (log.debug if quiet else log.info)("%s: opened %s", name, self.url)
            self.session.attach(link)
            try:
                exc = await self._until_closed(link, losses)
            except asyncio.CancelledError:
                link.close()
                self.session.detach(self.stop_reason)
                raise
            reason = _reason(self.url, exc)
            quiet = not losses.occurred(f"{self.url} ({exc or 'closed'})")
            self.session.detach(reason)
            link.close()
            await self._wait_before_retry(BACKOFF_MIN_S)

    async def _until_closed(self, link: SerialLink, losses: Recurring) -> BaseException | None:
        """Wait for the link to close; a loss episode ends once it has stayed open a while."""
        if losses.active:
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # comes as the link closes, and the runner would reopen the port for ever.
            done, _ = await asyncio.wait({link.closed}, timeout=LOSS_SUMMARY_S)
            if not done:
                losses.ended(f"{self.url} has stayed open {LOSS_SUMMARY_S:g} s")
        return await link.closed

    async def _wait_before_retry(self, delay: float) -> None:
        """Sleep ``delay`` with ±20% jitter; a device path that (re)appears ends it early."""
        delay *= self._rng.uniform(0.8, 1.2)
        if not self._is_file or os.path.exists(self.url):  # noqa: ASYNC240 - a stat of /dev
            await asyncio.sleep(delay)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while loop.time() < deadline:
            await asyncio.sleep(min(_PATH_POLL_S, max(0.0, deadline - loop.time())))
            if os.path.exists(self.url):  # noqa: ASYNC240 - a stat of /dev, no disk I/O
                return


def _reason(url: str, exc: BaseException | None) -> str:
    """``port_gone`` when the device itself vanished, ``port_error`` otherwise."""
    code = getattr(exc, "errno", None)
    if "://" not in url and not os.path.exists(url):
        return "port_gone"
    if code in (errno.EIO, errno.ENODEV, errno.ENXIO, errno.ENOENT):
        return "port_gone"
    text = str(exc or "")
    if "disconnected" in text or "Input/output error" in text or "readiness to read" in text:
        return "port_gone"
    return "port_error"


def device_id_for_match(port_name: str, pattern: str, path: str) -> str:
    """The device id of one glob match: the port's name and the match's path below the
    glob's fixed directory, made id-safe: ``/dev/serial/by-id/*`` gives ``NAME-<by-id name>``,
    ``/tmp/a/*/tty`` gives ``NAME-1_tty`` and ``NAME-2_tty`` (not ``NAME-tty`` twice)."""
    below = os.path.relpath(path, glob_fixed_dir(pattern))
    return f"{port_name}-{ID_UNSAFE.sub('_', below)}"[:64]


def unique_device_id(device_id: str, path: str) -> str:
    """Another id for a glob match whose id is taken (two paths that differ only in
    characters an id cannot hold): ``device_id`` with a hash of ``path``, the same every run."""
    digest = hashlib.sha1(path.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{device_id[:55]}-{digest}"


def glob_fixed_dir(pattern: str) -> str:
    """The directory a glob's matches are under: its components before the first wildcard."""
    parts = pattern.split("/")[:-1]
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    return "/".join(fixed) or ("/" if pattern.startswith("/") else ".")


class GlobWatcher:
    """Starts a session and runner for every path matching a glob, within ``GLOB_SCAN_S``."""

    def __init__(self, pattern: str, start: Callable[[str], None]) -> None:
        self.pattern = pattern
        self._start = start
        self.seen: set[str] = set()

    def scan(self) -> list[str]:
        """Start what matches now and was not seen before; returns the new matches."""
        new = sorted(set(glob.glob(self.pattern)) - self.seen)
        for path in new:
            self.seen.add(path)
            self._start(path)
        return new

    async def run(self) -> None:
        """Scan until cancelled."""
        while True:
            self.scan()
            await asyncio.sleep(GLOB_SCAN_S)
