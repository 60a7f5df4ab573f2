"""An in-memory line: two ends, each a Framing, joined by callbacks on the loop; no port.

For session and transaction tests where a pty adds nothing: a ``MemoryLink`` offers what
a ``DeviceSession`` uses of a ``SerialLink`` (``send``, ``send_nowait``, tx counters,
``framing``, ``closed``, ``is_open``, pause/resume), and its bytes reach the other end on
a later loop turn, in order, through a ``Wire`` that may lose, corrupt or split them.
``memory_pair`` makes two joined ends; the simulator's ``firmware_sim.links.MemoryDeviceLink``
puts a simulated device on the other end instead.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.drivers.framed import FramedLine, FramesHandler
from gateway.drivers.serial import MAX_BACKLOG
from gateway.errors import LinkClosed
from gateway.frames import Frame
from gateway.frames.deframer import DEFAULT_INTER_FRAME_TIMEOUT
from gateway.frames.framing import framing_for
from gateway.settings import LinkSettings


def _ignore(frames: list[Frame]) -> None:
    """Frames nobody asked for."""


@dataclass(frozen=True, slots=True)
class LineFaults:
    """What a wire does to each write; each rate is a probability in [0, 1]."""

    #: the write is lost whole
    loss: float = 0.0
    #: one byte of the write is changed
    corrupt: float = 0.0
    #: the write arrives in pieces (each a separate read at the other end)
    split: bool = False
    seed: int | None = None


class Wire:
    """One direction of an in-memory line: each write is delivered to ``deliver`` on a
    later loop turn, in order, after the faults."""

    def __init__(self, deliver: Callable[[bytes], None], faults: LineFaults | None = None
                 ) -> None:
        self.deliver = deliver
        self.faults = faults or LineFaults()
        self.rng = random.Random(self.faults.seed)
        self.lost = 0
        self.corrupted = 0
        self._loop = asyncio.get_running_loop()

    def __call__(self, data: bytes) -> None:
        faults, rng = self.faults, self.rng
        if faults.loss and rng.random() < faults.loss:
            self.lost += 1
            return
        if faults.corrupt and data and rng.random() < faults.corrupt:
            self.corrupted += 1
            i = rng.randrange(len(data))
            data = data[:i] + bytes([data[i] ^ rng.randint(1, 255)]) + data[i + 1:]
        pieces = [data]
        if faults.split and len(data) > 1:
            cuts = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1)))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        for piece in pieces:
            self._loop.call_soon(self.deliver, piece)


class MemoryLink:
    """One end of an in-memory line, shaped like ``SerialLink`` for the layers above it."""

    def __init__(self, url: str, link: LinkSettings | None = None,
                 on_frames: FramesHandler = _ignore, *,
                 timeout: float = DEFAULT_INTER_FRAME_TIMEOUT,
                 first_seq: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.url = url
        self.framing = framing_for(link, timeout=timeout, clock=loop.time, first_seq=first_seq)
        self.line = FramedLine(self.framing, self._write, on_frames, name=url)
        self.closed: asyncio.Future[BaseException | None] = loop.create_future()
        self.tx_frames = 0
        self.tx_bytes = 0
        self.tx_dropped = 0
        #: where this end's bytes go (``connect``)
        self.wire: Wire | None = None
        self._paused = False
        self._inbox: deque[bytes] = deque()

    @property
    def on_frames(self) -> FramesHandler:
        """Where frames read go (a session's ``on_frames``)."""
        return self.line.on_frames

    @on_frames.setter
    def on_frames(self, handler: FramesHandler) -> None:
        self.line.on_frames = handler

    def connect(self, wire: Wire) -> None:
        """Where this end's bytes go: a ``Wire`` to the other end (its ``faults`` may be
        changed at any time)."""
        self.wire = wire

    def receive(self, data: bytes) -> None:
        """Bytes from the other end (held while reading is paused)."""
        if self.closed.done():
            return
        if self._paused:
            self._inbox.append(data)
        else:
            self.line.feed(data)

    @property
    def is_open(self) -> bool:
        """True until closed."""
        return not self.closed.done()

    def send_nowait(self, frame: Frame) -> bool:
        """Send a frame unless the framing's backlog is full; False (and counted) if not."""
        if self.closed.done() or self.framing.backlog >= MAX_BACKLOG:
            self.tx_dropped += 1
            return False
        self.tx_frames += 1
        self.line.send(frame)
        return True

    async def send(self, frame: Frame) -> int | None:
        """Send a frame, waiting for room in the framing's window; its seq, if any."""
        while True:
            if self.closed.done():
                raise LinkClosed(f"{self.url} is closed")
            if self.line.room.is_set():
                self.tx_frames += 1
                return self.line.send(frame)
            await self.line.room.wait()

    def _write(self, data: bytes) -> None:
        if self.wire is not None and not self.closed.done():
            self.tx_bytes += len(data)
            self.wire(data)

    def pause_reading(self) -> None:
        """Hold what arrives until ``resume_reading``."""
        self._paused = True
        self.line.pause()

    def resume_reading(self) -> None:
        """Take what arrived meanwhile, in order."""
        if not self._paused:
            return
        self._paused = False
        self.line.resume()
        while self._inbox and not self._paused:
            self.line.feed(self._inbox.popleft())

    def close(self) -> None:
        """Close this end (``closed`` resolves with None); the other end hears nothing more."""
        if not self.closed.done():
            self.line.close()
            self.closed.set_result(None)


def memory_pair(link: LinkSettings | None = None, *, faults: LineFaults | None = None,
                names: tuple[str, str] = ("memory://a", "memory://b"),
                first_seqs: tuple[int | None, int | None] = (None, None),
                ) -> tuple[MemoryLink, MemoryLink]:
    """Two ends of one line of profile ``link.frames``, joined both ways by a ``Wire``
    with ``faults`` (each direction its own random stream). Set each end's ``on_frames``."""
    a = MemoryLink(names[0], link, first_seq=first_seqs[0])
    b = MemoryLink(names[1], link, first_seq=first_seqs[1])
    faults = faults or LineFaults()
    back = replace(faults, seed=None if faults.seed is None else faults.seed + 1)
    a.connect(Wire(b.receive, faults))
    b.connect(Wire(a.receive, back))
    return a, b
