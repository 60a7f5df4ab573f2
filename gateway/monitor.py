"""``mcp-gateway monitor``: open serial ports, deframe, print every decoded frame.

A field tool and the first end-to-end path (port -> Deframer -> decode). By default it also
answers what firmware waits for (HELLO_ACK to HELLO, PONG to PING) so devices register;
``--passive`` only listens. The full gateway (sessions, bridge) builds on the same frames.

The port's frame profile (``--frames``) is a ``Framing`` from the registry: unless passive
the monitor speaks it as the gateway would (on `ms720` it acknowledges what it reads, as a
device expects, and each line has the frame's ``request_seq``); passive, it prints what
the framing's ``watch`` sees on the wire (on `ms720`: each frame's seq, ACKs, NACKs and
duplicates too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import serial
import serial_asyncio

from gateway.drivers.framed import FramedLine
from gateway.drivers.serial import is_port_held
from gateway.errors import GatewayError
from gateway.frames import (
    Command,
    DeviceProfile,
    Frame,
    decode_payload,
    encode_payload,
)
from gateway.frames.describe import describe
from gateway.frames.framing import DEFAULT_FRAMES, framing_class, framing_for
from gateway.settings import LinkSettings

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_RETRY_S = 1.0


def _discard(data: bytes) -> None:
    """A passive monitor's writes: none."""


class PortHeld(GatewayError):
    """The port is locked by another program, most likely the gateway: the monitor would
    take frames from it (a tty hands each byte to one reader), so it refuses."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"{url} is held by another program (the gateway?); the monitor does not share a "
            "port, it would take the frames from it. To watch a live port use: mcp-gateway "
            "request GATEWAY - trace '{\"device\": \"DEVICE\"}'")
        self.url = url


class _PortProtocol(asyncio.Protocol):
    """Hands received bytes to the monitor; never awaits, never raises."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self.on_data = on_data
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # pyserial-asyncio reads 1 KiB at a time by default: too small at high frame rates.
        transport._max_read_size = _READ_SIZE  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.on_data(data)
        except Exception:
            log.exception("frame handler failed")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


class PortMonitor:
    """Watches one port: prints frames, answers HELLO/PING unless passive, reopens on loss."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        profile: DeviceProfile | None,
        out: TextIO = sys.stdout,
        passive: bool = False,
        baudrate: int = 115200,
        node_ids: dict[str, int] | None = None,
        frames: str = DEFAULT_FRAMES,
    ) -> None:
        framing_class(frames)  # ValueError for a profile that is not registered
        self.name = name
        self.url = url
        self.profile = profile
        self.out = out
        self.passive = passive
        self.baudrate = baudrate
        self.node_ids = node_ids if node_ids is not None else {}
        self.frames = frames
        #: the port's framing and its driver, new for every open (made in ``run``)
        self.line: FramedLine | None = None
        self.frames_seen = 0
        self._transport: asyncio.Transport | None = None

    async def run(self) -> None:
        """Open the port, follow it, and open it again whenever it goes away."""
        try:
            while True:
                await self._watch_once()
                await asyncio.sleep(_RETRY_S)
        finally:
            if self.line is not None:
                self.line.close()

    async def _watch_once(self) -> None:
        """One open of the port, with a new framing, until the port goes away."""
        loop = asyncio.get_running_loop()
        if self.line is not None:
            self.line.close()
        framing = framing_for(LinkSettings(frames=self.frames), clock=loop.time)
        # Passive: nothing is ever written, not even the link's answers.
        self.line = FramedLine(framing, _discard if self.passive else self._write,
                               self._on_frames, name=self.name)
        try:
            # Exclusive, as the gateway opens its ports (gateway/drivers/serial.py): a
            # port it holds is refused, and the gateway cannot take one watched here.
            transport, protocol = await serial_asyncio.create_serial_connection(
                loop, lambda: _PortProtocol(self._on_data), self.url, baudrate=self.baudrate,
                exclusive=True)
        except (serial.SerialException, OSError) as exc:
            if is_port_held(exc):
                raise PortHeld(self.url) from None
            log.warning("%s: cannot open %s: %s; retrying", self.name, self.url, exc)
            return
        self._transport = transport
        self._print({"event": "port_open", "path": self.url})
        try:
            exc = await protocol.closed
        finally:
            transport.close()
            self._transport = None
        self._print({"event": "port_lost", "reason": str(exc) if exc else "closed"})

    def _print(self, record: dict[str, Any]) -> None:
        record = {"t": round(time.time(), 3), "port": self.name, **record}
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.flush()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _send(self, cmd_id: int, payload: bytes, request_seq: int | None) -> None:
        if self.line is not None:
            self.line.send(Frame(cmd_id, payload, request_seq))

    def _on_data(self, data: bytes) -> None:
        line = self.line
        if line is None:
            return
        if self.passive:
            self._on_wire(line.watch(data))
        else:
            line.feed(data)

    def _on_wire(self, seen: list[dict[str, Any]]) -> None:
        """Passive: what is on the wire as it comes (link frames and duplicates included)."""
        for record in seen:
            record.pop("wire", None)
            record.pop("msg_type", None)
            frame = record.pop("frame", None)
            if frame is not None:
                self.frames_seen += 1
                self._print({**describe(frame, self.profile), **record})
            else:
                self._print(record)

    def _on_frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.frames_seen += 1
            record = describe(frame, self.profile)
            if frame.request_seq is not None:
                record["request_seq"] = frame.request_seq
            self._print(record)
            if self.passive:
                continue
            if frame.cmd_id == Command.HELLO:
                try:
                    uid = decode_payload(Command.HELLO, frame.payload)["uid"]
                except GatewayError:
                    continue
                node_id = self.node_ids.setdefault(uid, len(self.node_ids) + 1)
                ack = {"node_id": node_id, "heartbeat_s": 5}
                self._send(Command.HELLO_ACK, encode_payload(Command.HELLO_ACK, ack),
                           frame.request_seq)
            elif frame.cmd_id == Command.PING:
                self._send(Command.PONG, b"", frame.request_seq)


async def monitor_ports(monitors: list[PortMonitor]) -> None:
    """Run monitors until cancelled; ``PortHeld`` (all of them stop) if a port is held."""
    try:
        async with asyncio.TaskGroup() as tasks:
            for monitor in monitors:
                tasks.create_task(monitor.run(), name=f"monitor-{monitor.name}")
    except ExceptionGroup as group:
        held = group.subgroup(PortHeld)
        if held is None:
            raise
        raise held.exceptions[0] from None
