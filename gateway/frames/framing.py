"""The framing interface: one line's frame profile, sans-IO, and the registry of profiles.

A ``Framing`` turns the bytes of one line into frames and frames into bytes, with the
link's own frames (ACKs, NACKs, retransmissions) going out through the same object. The
serial driver, the session, the monitor and the simulator hold one and never ask which
profile it is; the profile is chosen once, by name, where a line is opened
(``framing_for``). Adding a profile is one module implementing ``Framing`` and one line
in ``FRAMINGS``.

Sans-IO: nothing here reads a clock or a port. The caller passes ``now`` (or a clock the
deframer reads on each feed), writes what ``data_to_send()`` returns, and calls
``expire(now)`` at ``deadline``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

from gateway.frames.wire import Frame


class Framing(Protocol):
    """One line's framing: bytes <-> frames, and the link's own frames."""

    #: the profile's name, as config and the command line spell it
    name: ClassVar[str]
    #: responses carry the request's seq, so requests may be pipelined
    pipelined: ClassVar[bool]
    #: requests in flight per device: the default, and at most
    default_in_flight: ClassVar[int]
    max_in_flight: ClassVar[int]

    def feed(self, data: bytes) -> list[Frame]:
        """Bytes from the line; the frames for the layer above, in order, each once."""
        ...

    def expire(self, now: float) -> list[Frame]:
        """Run what is due at ``now`` (a stale partial frame, retransmissions, a gap given
        up on); the frames that delivers."""
        ...

    @property
    def deadline(self) -> float | None:
        """When ``expire`` must next be called (None: nothing is pending)."""
        ...

    def send(self, frame: Frame) -> int | None:
        """Queue a frame for the line; its seq (None where frames carry none)."""
        ...

    def data_to_send(self) -> bytes:
        """The bytes to write now: frames, and the link's ACKs and retransmissions."""
        ...

    @property
    def can_send(self) -> bool:
        """True while a ``send`` would go out at once (the link's window has room)."""
        ...

    @property
    def backlog(self) -> int:
        """Frames sent that wait for room in the window."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes of a partial frame held."""
        ...

    def restart_clock(self) -> None:
        """A held partial frame's inter-frame timeout starts over (reads were paused)."""
        ...

    def counters(self) -> dict[str, int]:
        """What the framing counted: bytes, frames, checksum errors, discarded bytes...
        and the link's own counters where it has a link layer."""
        ...

    def close(self) -> None:
        """The line is gone: drop what waits (frames unacknowledged, the backlog)."""
        ...


FramingFactory = Callable[..., Framing]
