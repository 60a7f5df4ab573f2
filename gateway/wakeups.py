"""The event loop the gateway runs on: asyncio's, with its wake-ups batched (``linger_ms``).

A wake-up is the costly part of handling an event at edge rates, not the event: on the
development VM returning from ``epoll_wait`` costs ~40 us in C and ~200 us through asyncio
at 100 wake-ups/s (cold caches), against ~20 us of work per event. So after a wake-up that
found input, the loop lingers: its next wait does not watch the descriptors until
``linger`` has passed (its own timers still end the wait), then takes everything that
arrived meanwhile in one go: frames of every port, the broker's PUBACKs, requests. The
first input after a quiet spell is taken at once; under load each input waits at most
``linger``. It is interrupt moderation, as network cards do it.

Nothing is held in the process meanwhile: unread input waits in the kernel's buffers, so a
killed gateway loses only what it had not read, as without lingering, and everything read
in one wake-up is written to the queue in one transaction (fewer, larger disk writes).
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LingeringSelector", "loop_factory"]


class LingeringSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's selector (epoll on Linux) that lingers: once input comes faster than
    ``linger_s`` apart, a wait after a wake-up with input sleeps out the rest of
    ``linger_s`` before it looks at the descriptors again."""

    def __init__(self, linger_s: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        self.linger_s = linger_s
        self._clock = clock
        self._sleep = sleep
        #: when the last input was taken, and whether input is coming within the window
        self._input_at = float("-inf")
        self._dense = False
        #: waits that lingered (for the tests)
        self.lingered = 0

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is not None and timeout <= 0:
            return self._took(super().select(0))  # the loop has work queued: no sleep
        # Linger only where it pays: input is coming within the window, so more is likely
        # to come within it. Sparse input is taken the moment it arrives (a lingering wait
        # that found nothing would be one wake-up more, not one fewer).
        hold = self._input_at + self.linger_s - self._clock()
        if hold > 0 and self._dense:
            nap = hold if timeout is None else min(hold, timeout)
            self.lingered += 1
            self._sleep(nap)  # the descriptors unwatched; a timer due sooner ends it sooner
            ready = super().select(0)
            if ready:
                self._input_at = self._clock()  # still dense: it came within the window
                return ready
            if timeout is not None and nap >= timeout:
                return []  # a timer is due: the loop's turn
            timeout = None if timeout is None else timeout - nap
        return self._took(super().select(timeout))

    def _took(self, ready: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
        if ready:
            now = self._clock()
            self._dense = now - self._input_at < self.linger_s
            self._input_at = now
        return ready


def loop_factory(linger_s: float) -> Callable[[], asyncio.AbstractEventLoop]:
    """For ``asyncio.Runner``: a selector event loop that lingers ``linger_s`` (0: asyncio's
    own loop, every input taken the moment it arrives)."""
    if linger_s <= 0:
        return asyncio.SelectorEventLoop

    def factory() -> asyncio.AbstractEventLoop:
        return asyncio.SelectorEventLoop(LingeringSelector(linger_s))
    return factory
