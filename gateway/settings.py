"""The runtime's groups of settings, each declared once: the object a layer runs with.

Plain frozen dataclasses with their defaults. ``gateway.config`` parses TOML into them;
the layers below (drivers, framing, session) take them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """How to open a port. Defaults: 115200 8N1, no flow control, exclusive open."""

    baudrate: int = 115200
    bytesize: int = 8
    parity: str = "none"
    stopbits: float = 1
    rtscts: bool = False
    exclusive: bool = True
    #: bytes per read; pyserial-asyncio's 1 KiB default is too small at high frame rates
    read_size: int = 65536
    #: writes past this many buffered bytes wait (send) or are refused (send_nowait)
    write_high_water: int = 16384
    #: inter-frame timeout; None: the spec's 100 ms, or longer where the baud rate needs it
    inter_frame_timeout: float | None = None

    def frame_timeout(self) -> float:
        """The inter-frame timeout: 100 ms, or two maximum frames' airtime at slow bauds."""
        if self.inter_frame_timeout is not None:
            return self.inter_frame_timeout
        bits_per_byte = 1 + self.bytesize + (self.parity != "none") + self.stopbits
        return max(0.1, 2 * 261 * bits_per_byte / self.baudrate)


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """The frame profile of a line and its link layer's knobs."""

    #: the frame profile (a name in the framing registry)
    frames: str = "mcp"
    #: resend an unacknowledged frame after this long, up to ``retries`` times (ms720)
    retransmit_s: float = 0.2
    retries: int = 3
    #: the send window (seqs past the oldest unacknowledged frame); later sends wait (ms720)
    window: int = 128
