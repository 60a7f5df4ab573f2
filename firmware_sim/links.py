"""The simulator's physical links: a pseudo-terminal pair, a TCP listener, or an in-memory
line to a gateway's end, all unpluggable.

A link carries bytes only; it hands received bytes to ``on_data`` and never blocks the loop
on a write (like a UART with nobody listening, bytes that do not fit are lost and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections.abc import Callable
from pathlib import Path

from gateway.drivers.memory import LineFaults, MemoryLink, Wire

log = logging.getLogger(__name__)

DataHandler = Callable[[bytes], None]
_READ_SIZE = 65536
_OUT_LIMIT = 1 << 20
_FLOOD_LOW_WATER = 2048


class Link:
    """Base of the simulator's links: plug/unplug, write, and an ``on_data`` callback."""

    def __init__(self) -> None:
        self.on_data: DataHandler = lambda data: None
        self.dropped_tx_bytes = 0

    @property
    def path(self) -> str:
        """What a gateway opens to reach the device (a tty path or a ``socket://`` URL)."""
        raise NotImplementedError

    @property
    def plugged(self) -> bool:
        """True while the link is up."""
        raise NotImplementedError

    async def plug(self) -> None:
        """Bring the link up (again)."""
        raise NotImplementedError

    async def unplug(self) -> None:
        """Take the link down, as if the cable were pulled."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Send bytes now; what cannot be sent without blocking is dropped and counted."""
        raise NotImplementedError

    async def write_all(self, data: bytes) -> None:
        """Send all of ``data``, waiting while the other side is slow (flood mode)."""
        self.write(data)


class PtyLink(Link):
    """A pseudo-terminal pair in raw mode; the gateway opens the slave side's path.

    Unplugging closes both ends, so a gateway reading the slave gets EIO, like a pulled USB
    adapter. Plugging back creates a new pty, under a new path (the old one is gone); the
    optional ``symlink`` always points at the current one, as udev's by-id links do.
    """

    def __init__(self, symlink: Path | None = None) -> None:
        super().__init__()
        self.symlink = symlink
        self._master: int | None = None
        self._slave: int | None = None
        self._spare: tuple[int, int] | None = None
        self._path = ""
        self._out = bytearray()
        self._writing = False
        self._flush_soon = False
        self._drained: asyncio.Future[None] | None = None

    @property
    def path(self) -> str:
        return str(self.symlink) if self.symlink else self._path

    @property
    def tty_path(self) -> str:
        """The current /dev/pts/N path."""
        return self._path

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @staticmethod
    def _open_pair() -> tuple[int, int]:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        return master, slave

    async def plug(self) -> None:
        if self._master is not None:
            return
        master, slave = self._spare or self._open_pair()
        self._spare = None
        self._master, self._slave = master, slave
        self._path = os.ttyname(slave)
        asyncio.get_running_loop().add_reader(master, self._readable)
        if self.symlink:
            tmp = self.symlink.with_name(f".{self.symlink.name}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._path)
            tmp.replace(self.symlink)
        log.debug("pty link up at %s", self.path)

    async def unplug(self) -> None:
        if self._master is None:
            return
        # Reserve the next pty before releasing this one, so the device comes back elsewhere.
        self._spare = self._open_pair()
        self._close()

    def _close(self) -> None:
        if self._master is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._master)
        if self._writing:
            loop.remove_writer(self._master)
            self._writing = False
        self.dropped_tx_bytes += len(self._out)  # unplugged with bytes still to send
        self._out.clear()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self.symlink:
            with contextlib.suppress(FileNotFoundError):
                self.symlink.unlink()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)  # type: ignore[arg-type]
        self._master = self._slave = None

    async def close(self) -> None:
        """Release everything (also the reserved spare pty)."""
        self._close()
        if self._spare:
            for fd in self._spare:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._spare = None

    def _readable(self) -> None:
        try:
            data = os.read(self._master, _READ_SIZE)  # type: ignore[arg-type]
        except BlockingIOError:
            return
        except OSError:
            # EIO: nobody has the slave open right now; our own slave fd prevents most.
            return
        if data:
            self.on_data(data)

    def write(self, data: bytes) -> None:
        # Whole frames only: a frame that does not fit the outgoing buffer is dropped whole,
        # and bytes queued behind a slow reader keep their order.
        if self._master is None or len(self._out) + len(data) > _OUT_LIMIT:
            self.dropped_tx_bytes += len(data)
            return
        self._out += data
        # One write per loop turn for everything sent in it (a burst of frames, a UART FIFO).
        if not self._writing and not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        master = self._master
        if master is None:
            return
        try:
            sent = os.write(master, self._out) if self._out else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self.dropped_tx_bytes += len(self._out)
            self._out.clear()
            sent = 0
        del self._out[:sent]
        loop = asyncio.get_running_loop()
        if self._out and not self._writing:
            loop.add_writer(master, self._flush)
            self._writing = True
        elif not self._out:
            if self._writing:
                loop.remove_writer(master)
                self._writing = False
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    async def write_all(self, data: bytes) -> None:
        # Keep what waits in our buffer small, so answers are not stuck behind a flood.
        while self._master is not None and len(self._out) > _FLOOD_LOW_WATER:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        self.write(data)


class TcpLink(Link):
    """A TCP listener on loopback; ``socket://host:port`` reaches it through pyserial.

    One client at a time: a new connection replaces the previous one (a reconnecting
    gateway). Unplugging closes the connection and stops listening until plugged back.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._transport: asyncio.Transport | None = None

    @property
    def path(self) -> str:
        return f"socket://{self.host}:{self.port}"

    @property
    def plugged(self) -> bool:
        return self._server is not None

    @property
    def connected(self) -> bool:
        """True while a client is connected."""
        return self._transport is not None

    async def plug(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _TcpProtocol(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def unplug(self) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        await self._server.wait_closed()
        self._server = None

    async def close(self) -> None:
        """Release the listener and any connection."""
        await self.unplug()

    def _attach(self, transport: asyncio.Transport) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._transport = transport

    def _detach(self, transport: asyncio.Transport) -> None:
        if self._transport is transport:
            self._transport = None

    def write(self, data: bytes) -> None:
        transport = self._transport
        # A stalled reader must not make us buffer without bound: past 1 MiB, drop.
        if transport is None or transport.get_write_buffer_size() > 1 << 20:
            self.dropped_tx_bytes += len(data)
            return
        transport.write(data)


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, link: TcpLink) -> None:
        self._link = link
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._link._attach(self._transport)

    def data_received(self, data: bytes) -> None:
        self._link.on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._link._detach(self._transport)


class MemoryDeviceLink(Link):
    """A simulated device's end of an in-memory line whose other end is a gateway's
    ``gateway.drivers.memory.MemoryLink``: no pty, for tests where one adds nothing.

    Unplugging closes the gateway's end (its ``closed`` resolves, as a lost port's does);
    plugging back needs a new ``MemoryLink``: pass it to ``plug_into``.
    """

    def __init__(self, gateway_end: MemoryLink, faults: LineFaults | None = None) -> None:
        super().__init__()
        self.faults = faults
        self._plugged = False
        self._attach(gateway_end)

    def _attach(self, gateway_end: MemoryLink) -> None:
        self.gateway_end = gateway_end
        gateway_end.connect(Wire(self._receive, self.faults))
        self._to_gateway = Wire(gateway_end.receive, self.faults)

    @property
    def path(self) -> str:
        return self.gateway_end.url

    @property
    def plugged(self) -> bool:
        return self._plugged

    async def plug(self) -> None:
        self._plugged = True

    async def unplug(self) -> None:
        self._plugged = False
        self.gateway_end.close()

    async def plug_into(self, gateway_end: MemoryLink) -> None:
        """Join a new gateway end (the port opened again) and plug in."""
        self._attach(gateway_end)
        await self.plug()

    def _receive(self, data: bytes) -> None:
        if self._plugged:
            self.on_data(data)

    def write(self, data: bytes) -> None:
        if self._plugged:
            self._to_gateway(data)
        else:
            self.dropped_tx_bytes += len(data)
