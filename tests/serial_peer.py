"""A synchronous stand-in for the gateway in tests: pyserial + the real deframer."""

from __future__ import annotations

import time
from collections.abc import Callable

import serial

from gateway.frames import Command, Deframer, Frame, decode_payload, encode_frame, encode_payload


class SerialPeer:
    """Opens a port like the gateway does and waits for frames with a deadline."""

    def __init__(self, url: str) -> None:
        self.port = serial.serial_for_url(url, baudrate=115200, timeout=0.05)
        self.deframer = Deframer()
        self.received: list[tuple[float, Frame]] = []
        self._pending: list[tuple[float, Frame]] = []

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> SerialPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, cmd_id: int, payload: bytes = b"") -> None:
        self.port.write(encode_frame(cmd_id, payload))

    def _pump(self) -> None:
        data = self.port.read(4096)
        now = time.monotonic()
        for frame in self.deframer.feed(data):
            self.received.append((now, frame))
            self._pending.append((now, frame))

    def wait_for(self, match: Callable[[Frame], bool], timeout: float = 5.0) -> Frame:
        """The next received frame that ``match`` accepts; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (_, frame) in enumerate(self._pending):
                if match(frame):
                    del self._pending[: i + 1]
                    return frame
            self._pending.clear()
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching frame within {timeout} s")
            self._pump()

    def wait_cmd(self, cmd_id: int, timeout: float = 5.0) -> Frame:
        return self.wait_for(lambda f: f.cmd_id == cmd_id, timeout)

    def collect(self, seconds: float) -> list[tuple[float, Frame]]:
        """Everything not yet consumed plus what is received during the next ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump()
        got, self._pending = self._pending, []
        return got

    def register(self, node_id: int = 7, heartbeat_s: int = 5) -> dict:
        """Wait for HELLO and acknowledge it; returns the decoded HELLO."""
        hello = decode_payload(Command.HELLO, self.wait_cmd(Command.HELLO).payload)
        self.send(
            Command.HELLO_ACK,
            encode_payload(Command.HELLO_ACK, {"node_id": node_id, "heartbeat_s": heartbeat_s}),
        )
        return hello
