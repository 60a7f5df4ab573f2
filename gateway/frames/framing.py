"""The framing interface: one line's frame profile, sans-IO, and the registry of profiles.

A ``Framing`` turns the bytes of one line into frames and frames into bytes, with the
link's own frames (ACKs, NACKs, retransmissions) going out through the same object. The
serial driver, the session, the monitor and the simulator hold one and never ask which
profile it is; the profile is chosen once, by name, where a line is opened
(``framing_for``). Adding a profile is one module implementing ``Framing`` and one line
in ``FRAMINGS``.

Sans-IO: nothing here reads a port, and time is the clock the caller gives (read on each
feed and send) or the ``now`` it passes to ``expire``. The caller writes what
``data_to_send()`` returns after each call, and calls ``expire(now)`` at ``deadline``
(``gateway.drivers.framed.FramedLine`` does all three over asyncio).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from gateway.frames.deframer import DEFAULT_INTER_FRAME_TIMEOUT
from gateway.frames.mcp_framing import McpFraming
from gateway.frames.reliable import Ms720Framing
from gateway.frames.wire import Frame
from gateway.settings import LinkSettings, default_of


class Framing(Protocol):
    """One line's framing: bytes <-> frames, and the link's own frames."""

    #: the profile's name, as config and the command line spell it
    name: ClassVar[str]
    #: responses carry the request's seq, so requests may be pipelined
    pipelined: ClassVar[bool]
    #: requests in flight per device: the default, and at most
    default_in_flight: ClassVar[int]
    max_in_flight: ClassVar[int]
    #: the link acknowledges every frame and sends it again until acknowledged, so a frame
    #: the line loses still arrives (the simulator models its noise on every write then)
    retransmits: ClassVar[bool]

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

    def data_to_send(self) -> list[bytes]:
        """The writes to make now, in order: frames, and the link's ACKs and
        retransmissions. Each is a whole frame (or one read's ACKs back to back), so a
        line that loses a write loses whole frames, as the simulator's faults need."""
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

    def watch(self, data: bytes) -> list[dict[str, Any]]:
        """Bytes from a line only listened to (a passive monitor): what is on the wire as
        it comes, nothing answered or held; each ``{"frame": Frame, "wire": bytes, ...}``
        with what the profile adds (ms720: its ``seq`` and ``msg_type``), or a link-level
        frame (``{"link": "ack", ...}``)."""
        ...

    def watch_expire(self, now: float) -> list[dict[str, Any]]:
        """A listener's ``expire``: a partial frame held past the inter-frame timeout at
        ``now`` is dropped (its bytes counted as discarded), and what is found behind it
        comes out as ``watch`` gives it. Call it at ``deadline``."""
        ...

    def close(self) -> None:
        """The line is gone: drop what waits (frames unacknowledged, the backlog)."""
        ...


#: every frame profile by name: adding one is its module and a line here
FRAMINGS: dict[str, type[Framing]] = {
    McpFraming.name: McpFraming,
    Ms720Framing.name: Ms720Framing,
}
#: the profile of a line that does not say (declared with the setting)
DEFAULT_FRAMES: str = default_of(LinkSettings, "frames")


def framing_class(frames: str) -> type[Framing]:
    """The framing registered as ``frames``; ``ValueError`` naming the ones there are."""
    try:
        return FRAMINGS[frames]
    except KeyError:
        raise ValueError(f"unknown frame profile {frames!r}; expected one of "
                         f"{', '.join(FRAMINGS)}") from None


def framing_for(link: LinkSettings | None = None, *,
                timeout: float = DEFAULT_INTER_FRAME_TIMEOUT,
                clock: Callable[[], float] = time.monotonic,
                first_seq: int | None = None) -> Framing:
    """A new framing for one line, of the profile ``link.frames``, with its knobs.

    ``first_seq`` None picks a random one: the other end's duplicate filter never mistakes
    a restarted end's new frames for old ones.
    """
    link = link or LinkSettings()
    if first_seq is None:
        first_seq = random.randrange(1 << 32)
    return framing_class(link.frames)(link, timeout=timeout, clock=clock, first_seq=first_seq)
