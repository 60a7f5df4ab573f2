"""The device end of a real pty, written by hand: the frames a test chooses, in the writes it
chooses (a HELLO flood, a STATUS in the same read as a bad HELLO). The gateway opens ``path``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty

from gateway.frames import Command, Deframer, Frame, encode_frame, encode_payload

#: a STATUS the env-sensor profile decodes (10 bytes)
STATUS = encode_frame(Command.STATUS, bytes(10))


def hello(uid: int | str) -> bytes:
    """A well-formed HELLO frame from ``uid`` (an int is written as 16 hex digits)."""
    uid_hex = uid if isinstance(uid, str) else f"{uid:016x}"
    return encode_frame(Command.HELLO, encode_payload(Command.HELLO, {
        "proto": 1, "uid": uid_hex, "fw": "1.0.0", "model": "raw", "caps": []}))


#: a HELLO whose payload does not parse (NACK 2)
BAD_HELLO = encode_frame(Command.HELLO, b"\x01\x02")


class RawPort:
    """A pty pair: the test writes to and reads from the master; ``path`` is the slave."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self._deframer = Deframer()
        self.received: list[Frame] = []

    def __enter__(self) -> RawPort:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def write(self, data: bytes) -> None:
        """Write all of ``data`` (in one write when the pty has room), reading meanwhile."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view):]
            except BlockingIOError:
                self.pump()
                await asyncio.sleep(0.001)  # the gateway reads the pty on this loop
        self.pump()

    def pump(self) -> list[Frame]:
        """Read what the gateway sent; every frame received so far."""
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self.master, 1 << 16):
                self.received.extend(self._deframer.feed(data))
        return self.received

    def replies(self, cmd_id: int, code: int | None = None) -> list[Frame]:
        """Frames received with ``cmd_id`` (for NACKs, with ``code`` if given)."""
        self.pump()
        return [f for f in self.received if f.cmd_id == cmd_id and
                (code is None or f.payload[1:2] == bytes([code]))]
