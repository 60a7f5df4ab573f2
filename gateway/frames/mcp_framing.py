"""The `mcp` frame profile as a ``Framing``: the XOR deframer in, ``encode_frame`` out.

No link layer: nothing is acknowledged or sent again, frames carry no seq, so one request
is in flight per device (its answer is matched by command). Sans-IO, like the deframer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from gateway.frames.deframer import DEFAULT_INTER_FRAME_TIMEOUT, Deframer, DeframerStats
from gateway.frames.wire import Frame, encode_frame
from gateway.settings import LinkSettings

_STATS = DeframerStats.__slots__


class McpFraming:
    """``Framing`` for `mcp` lines (spec section 1)."""

    name: ClassVar[str] = "mcp"
    pipelined: ClassVar[bool] = False
    default_in_flight: ClassVar[int] = 1
    max_in_flight: ClassVar[int] = 1
    retransmits: ClassVar[bool] = False

    def __init__(self, link: LinkSettings | None = None, *,
                 timeout: float = DEFAULT_INTER_FRAME_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 first_seq: int | None = None) -> None:
        del link, first_seq  # no link layer: nothing to tune, no seqs
        # Expiry by the caller's timer only (expire at deadline): a late feed means the
        # reader was busy, not that the line was silent.
        self.deframer = Deframer(timeout=timeout, clock=clock, expire_on_feed=False)
        #: the hot path: bytes in -> frames, straight into the deframer (no extra call)
        self.feed: Callable[[bytes], list[Frame]] = self.deframer.feed
        self.restart_clock: Callable[[], None] = self.deframer.restart_clock
        self._out: list[bytes] = []

    @property
    def stats(self) -> DeframerStats:
        """The deframer's counters."""
        return self.deframer.stats

    def expire(self, now: float) -> list[Frame]:
        """Drop a stale partial frame; the frames found behind it."""
        return self.deframer.expire(now)

    @property
    def deadline(self) -> float | None:
        """When a held partial frame goes stale (None: none is held)."""
        return self.deframer.deadline

    def send(self, frame: Frame) -> None:
        """Queue a frame's bytes for the line (frames carry no seq: None)."""
        self._out.append(encode_frame(frame.cmd_id, frame.payload))

    def data_to_send(self) -> list[bytes]:
        """The writes queued since the last call: one per frame sent."""
        out, self._out = self._out, []
        return out

    @property
    def can_send(self) -> bool:
        """Always: no window."""
        return True

    @property
    def backlog(self) -> int:
        """Always 0: no window to wait for."""
        return 0

    @property
    def buffered(self) -> int:
        """Bytes of a partial frame held."""
        return self.deframer.buffered

    def counters(self) -> dict[str, int]:
        """The deframer's counters (bytes_in, frames, checksum_errors, ...)."""
        stats = self.deframer.stats
        return {name: getattr(stats, name) for name in _STATS}

    def watch(self, data: bytes) -> list[dict[str, Any]]:
        """Bytes from a line only listened to: each frame as ``{"frame": Frame, "wire":
        bytes}``."""
        return self._watched(self.deframer.feed(data))

    def watch_expire(self, now: float) -> list[dict[str, Any]]:
        """A listener's ``expire``: the frames found behind a stale partial frame."""
        return self._watched(self.deframer.expire(now))

    @staticmethod
    def _watched(frames: list[Frame]) -> list[dict[str, Any]]:
        return [{"frame": frame, "wire": encode_frame(frame.cmd_id, frame.payload)}
                for frame in frames]

    def close(self) -> None:
        """Drop what waits to be written."""
        self._out.clear()
