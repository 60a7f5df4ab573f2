"""A ``Framing`` driven over asyncio: one timer at its deadline, its writes, its room.

The one place the sans-IO framing meets the loop, for every user of a line (the serial
driver, the in-memory link pair, the monitor, the simulated firmware): bytes in ->
``feed`` -> frames to a callback; ``send`` -> the framing; after each, what the framing
wants written goes to ``write`` and the timer moves to its new ``deadline``; ``room`` is set
while a send would go out at once (``can_send``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from gateway.frames.framing import Framing
from gateway.frames.wire import Frame

log = logging.getLogger(__name__)

FramesHandler = Callable[[list[Frame]], None]
#: the timer fires this long after the deadline (a deadline is "stale at", not "before")
_LATE_S = 0.001


class Line(Protocol):
    """What a device session uses of an open line: ``SerialLink``, or ``MemoryLink`` in tests."""

    framing: Framing
    tx_frames: int
    tx_bytes: int

    def send_nowait(self, frame: Frame) -> bool:
        """Send unless the line is backed up; False if dropped."""
        ...

    async def send(self, frame: Frame) -> int | None:
        """Send, waiting for room; the frame's seq where frames carry one."""
        ...


class FramedLine:
    """Drives ``framing`` on the running loop; never awaits, never raises into a transport.

    ``bytes_waiting`` says whether the OS holds bytes not yet read: the timer then lets the
    reader go first, once (the rest of a partial frame may be right there; the loop was
    busy, the line was not silent).
    """

    def __init__(self, framing: Framing, write: Callable[[bytes], None],
                 on_frames: FramesHandler, *, name: str = "",
                 bytes_waiting: Callable[[], bool] = lambda: False) -> None:
        self.framing = framing
        self.name = name
        self.on_frames = on_frames
        self._write = write
        self._bytes_waiting = bytes_waiting
        self._loop = asyncio.get_running_loop()
        #: set while a send would go out at once (the framing's window has room)
        self.room = asyncio.Event()
        self.room.set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._postponed = False
        self._paused = False
        self._closed = False

    def feed(self, data: bytes) -> None:
        """Bytes from the line: frames to ``on_frames``, the link's answers written."""
        frames = self.framing.feed(data)
        self._after()
        if frames:
            self._deliver(frames)

    def watch(self, data: bytes) -> list[dict[str, Any]]:
        """Bytes from a line only listened to: what the framing's ``watch`` sees on it."""
        seen = self.framing.watch(data)
        self._after()
        return seen

    def send(self, frame: Frame) -> int | None:
        """A frame to the line (now, or when the window has room); its seq, if any."""
        seq = self.framing.send(frame)
        self._after()
        return seq

    def expire(self) -> None:
        """The timer: run what is due now (the loop calls it at the deadline)."""
        self._timer = None
        if self._closed:
            return
        framing = self.framing
        if self._paused:
            # Reads are paused on purpose: a held partial frame's rest waits in the OS's
            # buffer, so it must not age (the link's own timers still run).
            framing.restart_clock()
        elif not self._postponed and self._bytes_waiting():
            self._postponed = True
            self._arm_at(self._loop.time() + _LATE_S)
            return
        self._postponed = False
        frames = framing.expire(self._loop.time())
        self._after()
        if frames:
            self._deliver(frames)

    def pause(self) -> None:
        """Reads stop (backpressure): a held partial frame does not age meanwhile."""
        self._paused = True

    def resume(self) -> None:
        """Reads go on: a held partial frame's inter-frame timeout starts over."""
        if self._paused:
            self._paused = False
            self.framing.restart_clock()
            self._arm()

    def close(self) -> None:
        """The line is gone: the framing drops what waits; senders wake (and find it gone)."""
        self._closed = True
        self.framing.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.room.set()

    def _after(self) -> None:
        """After each call into the framing: write what it queued, move the timer, and
        tell senders whether there is room."""
        out = self.framing.data_to_send()
        if out:
            write = self._write
            for chunk in out:
                write(chunk)
        if self._closed:
            return
        self._arm()
        room = self.room
        if self.framing.can_send:
            if not room.is_set():
                room.set()
        elif room.is_set():
            room.clear()

    def _arm(self) -> None:
        deadline = self.framing.deadline
        if deadline is not None:
            self._arm_at(deadline + _LATE_S)
        # No deadline: a timer still armed fires for nothing once; cheaper than cancelling.

    def _arm_at(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._armed_at <= when:
                return  # an earlier timer runs expire first, which arms the next one
            timer.cancel()
        self._armed_at = when
        self._timer = self._loop.call_at(when, self.expire)

    def _deliver(self, frames: list[Frame]) -> None:
        try:
            self.on_frames(frames)
        except Exception:  # a handler bug must not kill the line
            log.exception("%s: frame handler failed", self.name)
