"""An open serial port (path or pyserial URL): bytes in -> Framing -> frames; frames -> bytes out.

Built on pyserial-asyncio's transport, so one event loop serves many ports. The driver
knows nothing of devices nor of frame profiles: the port's ``framing`` (chosen by name where
the port is opened) does the bytes, a ``FramedLine`` its timer; frames go to a callback, and
``closed`` reports when the port is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os

import serial
import serial_asyncio

from gateway.drivers.framed import FramedLine, FramesHandler
from gateway.errors import LinkClosed
from gateway.frames import Frame
from gateway.frames.framing import Framing, framing_for
from gateway.settings import LinkSettings, SerialSettings

log = logging.getLogger(__name__)

__all__ = ["MAX_BACKLOG", "FramesHandler", "SerialLink", "explain_open_error", "is_port_held"]

#: frames that may wait for a framing's send window before send_nowait refuses more
MAX_BACKLOG = 256
#: reads after one that filled its buffer, in the same wake-up
_MORE_READS = 3

PARITIES = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD,
            "mark": serial.PARITY_MARK, "space": serial.PARITY_SPACE}


def is_port_held(exc: BaseException) -> bool:
    """The open failed because another program holds the port (pyserial's exclusive open
    takes flock LOCK_EX|LOCK_NB; a device may also say EBUSY)."""
    text = str(exc)
    return getattr(exc, "errno", None) in (errno.EBUSY, errno.EWOULDBLOCK) \
        or "Could not exclusively lock" in text or "Resource busy" in text


def explain_open_error(path: str, exc: BaseException) -> str:
    """One line saying why a port did not open and what to do about it."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.EACCES or "Permission denied" in text:
        return (f"permission denied on {path}: add the gateway's user to the 'dialout' group "
                "(sudo usermod -aG dialout $USER, then log in again) or run the mcp-gateway "
                "service, which has it")
    if code == errno.ENOENT or "No such file" in text or ("could not open port" in text and \
            "[Errno 2]" in text):
        return f"{path} does not exist: is the device plugged in? (waiting for it)"
    if is_port_held(exc):
        return (f"{path} is in use by another program (exclusive open): close it, or set "
                "exclusive = false for this port")
    if "Connection refused" in text:
        return f"{path}: connection refused: is the device server listening?"
    return f"cannot open {path}: {text}"


class _Transport(serial_asyncio.SerialTransport):
    """pyserial-asyncio's transport, reading a POSIX port's descriptor with ``os.read`` per
    readiness: pyserial's ``read`` costs two ``select`` calls and a timeout object per call
    around the same read (a tenth of an event's CPU at edge rates). A read that fills the
    buffer is followed by more (up to ``_MORE_READS``), so a wake-up takes what the port
    holds, however long the loop lingered (``linger_ms``)."""

    def _read_ready(self) -> None:
        port = self._serial
        fd = getattr(port, "fd", None)
        if type(port) is not serial.Serial or fd is None:  # a URL handler (socket://...)
            super()._read_ready()
            return
        size = self._max_read_size
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            return  # woken, but another reader (or nothing) was there first
        except OSError as exc:
            self._close(exc=serial.SerialException(f"read failed: {exc}"))
            return
        if not data:  # as pyserial says it: Linux reports a vanished device this way
            self._close(exc=serial.SerialException(
                "device reports readiness to read but returned no data (device disconnected "
                "or multiple access on port?)"))
            return
        if len(data) == size:
            parts = [data]
            for _ in range(_MORE_READS):
                try:
                    more = os.read(fd, size)
                except OSError:  # drained (BlockingIOError), or the error shows next time
                    break
                parts.append(more)
                if len(more) < size:
                    break
            data = b"".join(parts)
        self._protocol.data_received(data)


async def _open_transport(url: str, protocol: asyncio.Protocol,
                          **options: object) -> asyncio.Transport:
    """``serial_asyncio.create_serial_connection`` with the direct-read transport."""
    port = serial.serial_for_url(url, **options)
    return _Transport(asyncio.get_running_loop(), protocol, port)


class SerialLink(asyncio.Protocol):
    """One open port. Create with ``await SerialLink.open(...)``; ``closed`` says why it ended."""

    def __init__(self, url: str, settings: SerialSettings, on_frames: FramesHandler,
                 link: LinkSettings | None = None) -> None:
        self.url = url
        self.settings = settings
        loop = asyncio.get_running_loop()
        #: the port's frame profile: bytes <-> frames, and its link layer's own frames
        self.framing: Framing = framing_for(link, timeout=settings.frame_timeout(),
                                            clock=loop.time)
        self.line = FramedLine(self.framing, self._write_raw, on_frames, name=url,
                               bytes_waiting=self._bytes_waiting)
        self.closed: asyncio.Future[BaseException | None] = loop.create_future()
        self.tx_frames = 0
        self.tx_bytes = 0
        self.tx_dropped = 0
        self._transport: asyncio.Transport | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._paused = False

    @classmethod
    async def open(cls, url: str, settings: SerialSettings, on_frames: FramesHandler,
                   link_settings: LinkSettings | None = None) -> SerialLink:
        """Open ``url`` (a device path or pyserial URL); raises OSError/SerialException."""
        link = cls(url, settings, on_frames, link_settings)
        transport = await _open_transport(
            url,
            link,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=PARITIES[settings.parity],
            stopbits=settings.stopbits,
            rtscts=settings.rtscts,
            exclusive=settings.exclusive,
        )
        # pyserial-asyncio calls connection_made later (call_soon): usable from now on.
        link._setup(transport)
        return link

    # ---------------------------------------------------------------- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._transport is None and not self.closed.done():
            self._setup(transport)

    def _setup(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        # pyserial-asyncio has no public knob for its read size.
        transport._max_read_size = self.settings.read_size  # type: ignore[attr-defined]
        transport.set_write_buffer_limits(high=self.settings.write_high_water)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.line.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.line.close()
        self._can_write.set()  # wake writers so they see the link is gone
        if not self.closed.done():
            self.closed.set_result(exc)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _bytes_waiting(self) -> bool:
        transport = self._transport
        serial_port = getattr(transport, "serial", None)
        if serial_port is None or self._paused:
            return False
        try:
            return bool(serial_port.in_waiting)
        except (OSError, ValueError, AttributeError, NotImplementedError):
            return False

    # ---------------------------------------------------------------- use

    @property
    def is_open(self) -> bool:
        """True until the port is closed or lost."""
        return self._transport is not None and not self.closed.done()

    def send_nowait(self, frame: Frame) -> bool:
        """Write a frame unless the port is backed up; False (and counted) if dropped.

        A full send window does not drop it: it waits in the framing's backlog (up to
        ``MAX_BACKLOG`` frames), so answers to the device are not lost to a busy line.
        """
        if self._transport is None or not self._can_write.is_set() \
                or self.framing.backlog >= MAX_BACKLOG:  # fmt: skip
            self.tx_dropped += 1
            return False
        self.tx_frames += 1
        self.line.send(frame)
        return True

    async def send(self, frame: Frame) -> int | None:
        """Write a frame, waiting while the port (or the framing's send window) is full;
        returns its seq (None where frames carry none); ``LinkClosed`` if the port is gone."""
        room = self.line.room
        while True:
            if self._transport is None:
                raise LinkClosed(f"{self.url} is closed")
            if not self._can_write.is_set():
                await self._can_write.wait()
            elif not room.is_set():
                await room.wait()
            else:
                self.tx_frames += 1
                return self.line.send(frame)

    def _write_raw(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None:
            transport.write(data)
            self.tx_bytes += len(data)

    def pause_reading(self) -> None:
        """Stop reading (backpressure from consumers); a held partial frame does not age."""
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.pause_reading()
            self._paused = True
            self.line.pause()

    def resume_reading(self) -> None:
        """Read again; a held partial frame's inter-frame timeout starts over."""
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.resume_reading()
            if self._paused:
                self._paused = False
                self.line.resume()

    def close(self) -> None:
        """Close the port (``closed`` resolves with None)."""
        if self._transport is not None:
            self._transport.close()
