"""A serial line that corrupts bytes: a firmware's port on one side, a new pty the gateway
opens on the other, and each byte passed either way replaced by a random other byte with a
given probability."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tty
from pathlib import Path

from firmware_sim.links import PtyLink


class NoisyRelay:
    """``async with NoisyRelay(device_path, symlink, rate=0.05)``: the gateway opens
    ``symlink``; ``attach(path)`` moves the device side to a new port (a restarted
    emulator) while the gateway side stays up."""

    def __init__(self, device_path: str, symlink: Path, *, rate: float, seed: int = 1) -> None:
        self.rate = rate
        self._random = random.Random(seed)
        self._device_path = device_path
        self._fd: int | None = None
        self.gateway_side = PtyLink(symlink)
        self.passed = {"to_device": 0, "to_gateway": 0}
        self.corrupted = {"to_device": 0, "to_gateway": 0}

    async def __aenter__(self) -> NoisyRelay:
        self.gateway_side.on_data = self._to_device
        self.gateway_side.symlink.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        await self.gateway_side.plug()
        self.attach(self._device_path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._detach()
        await self.gateway_side.close()

    def attach(self, device_path: str) -> None:
        """Relay to the device at ``device_path`` (closing the previous one)."""
        self._detach()
        fd = os.open(device_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._from_device)

    def _detach(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _noisy(self, data: bytes, way: str) -> bytes:
        out = bytearray(data)
        for i in range(len(out)):
            if self._random.random() < self.rate:
                out[i] ^= self._random.randrange(1, 256)
                self.corrupted[way] += 1
        self.passed[way] += len(out)
        return bytes(out)

    def _from_device(self) -> None:
        try:
            data = os.read(self._fd, 65536)  # type: ignore[arg-type]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the emulator went away: wait for attach()
            self._detach()
            return
        if data:
            self.gateway_side.write(self._noisy(data, "to_gateway"))

    def _to_device(self, data: bytes) -> None:
        if self._fd is None:
            return  # no device: the bytes are lost, as on an unplugged line
        noisy = self._noisy(data, "to_device")
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._fd, noisy)
