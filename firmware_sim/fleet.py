"""Many simulated devices in one process: an async ``Fleet`` and a ``FleetThread`` for sync code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from firmware_sim.device import Faults, SimulatedDevice
from firmware_sim.links import Link, PtyLink, TcpLink
from gateway.frames import ProfileRegistry
from gateway.frames.framing import DEFAULT_FRAMES

T = TypeVar("T")


@dataclass
class FleetSpec:
    """What to simulate: how many devices, over which link, with which faults."""

    count: int = 1
    profile: str = "env-sensor"
    link: str = "pty"  # "pty" or "tcp"
    name_prefix: str = "sim"
    tcp_host: str = "127.0.0.1"
    #: first TCP port (device i listens on tcp_port + i); 0 picks free ports
    tcp_port: int = 0
    #: directory for stable symlinks NAME -> /dev/pts/N (like udev's by-id links)
    link_dir: Path | None = None
    send_hello: bool = True
    interval_ms: int | None = None
    faults: Faults = field(default_factory=Faults)
    #: the frame profile (a name in gateway.frames.framing.FRAMINGS)
    frames: str = DEFAULT_FRAMES
    #: retransmissions of an unacknowledged frame before the device gives it up (where the
    #: framing has a link layer)
    link_retries: int = 3
    #: faults for device 0 only (the demo's one noisy device); None: the same as the rest
    first_device_faults: Faults | None = None
    seed: int | None = None
    profile_dirs: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")
        if self.link not in ("pty", "tcp"):
            raise ValueError(f"link must be 'pty' or 'tcp', got {self.link!r}")


class Fleet:
    """Starts the devices of a ``FleetSpec``; ``async with Fleet(spec) as fleet``."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.devices: list[SimulatedDevice] = []

    def _link(self, index: int, name: str) -> Link:
        spec = self.spec
        if spec.link == "tcp":
            return TcpLink(spec.tcp_host, spec.tcp_port + index if spec.tcp_port else 0)
        return PtyLink(spec.link_dir / name if spec.link_dir else None)

    async def __aenter__(self) -> Fleet:
        spec = self.spec
        profile = ProfileRegistry(list(spec.profile_dirs)).get(spec.profile)
        if spec.link_dir:
            spec.link_dir.mkdir(parents=True, exist_ok=True)
        try:
            for index in range(spec.count):
                name = f"{spec.name_prefix}-{index}"
                faults = spec.first_device_faults if index == 0 else None
                device = SimulatedDevice(
                    name,
                    profile,
                    self._link(index, name),
                    send_hello=spec.send_hello,
                    faults=faults or spec.faults,
                    interval_ms=spec.interval_ms,
                    seed=None if spec.seed is None else spec.seed + index,
                    frames=spec.frames,
                    link_retries=spec.link_retries,
                )
                await device.start()
                self.devices.append(device)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for device in reversed(self.devices):
            await device.stop()

    def device(self, name: str) -> SimulatedDevice:
        """A device by name."""
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(f"no simulated device {name!r}")


class FleetThread:
    """A ``Fleet`` on its own event loop in a thread, for synchronous tests and tools.

    ``with FleetThread(spec) as sim: serial.Serial(sim.devices[0].link.path)``;
    ``sim.call(coro_fn, ...)`` runs a coroutine on the fleet's loop and waits for it.
    """

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.fleet = Fleet(spec)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet", daemon=True)

    @property
    def devices(self) -> list[SimulatedDevice]:
        """The running devices (read their attributes; change them through ``call``)."""
        return self.fleet.devices

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the fleet's loop and return its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def __enter__(self) -> FleetThread:
        self._thread.start()
        try:
            self.call(self.fleet.__aenter__())
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.call(self.fleet.__aexit__(None, None, None))
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        with contextlib.suppress(RuntimeError):
            self._loop.close()
