"""Firmware under emulation for tests: build it with the device SDK's make, run it under QEMU
(the LM3S6965 board) or simavr (the ATmega328P board) with its UART on a pty.

    elf = build("build/lm3s6965/selftest.elf")
    async with qemu(elf) as emu:        # or simavr(elf)
        with PtyPort(emu.path) as port:
            ...
        await emu.restart()             # unplug and plug: emu.path is the new pty

A missing tool (compiler, emulator, simavr library) skips the test on a developer's machine
and fails it under CI (``tests.harness.lacking``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import os
import re
import shutil
import signal
import subprocess
import tty
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from tests.harness import lacking

REPO = Path(__file__).resolve().parents[1]
SDK = REPO / "device-sdk"
SIMAVR_PTY = "build/tools/simavr_pty"

#: QEMU's line naming the pty (stdout in QEMU 7.2, stderr in some other versions)
QEMU_PTY = re.compile(r"char device redirected to (/dev/\S+) \(label serial0\)")
#: simavr_pty's one line on stdout
SIMAVR_PTY_LINE = re.compile(r"^pty (/dev/\S+)$")

#: how long an emulator may take to name its pty, and to exit once told to
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def need_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        lacking(f"{name} is not installed")
    return path


def need_simavr() -> None:
    if not Path("/usr/include/simavr/sim_avr.h").exists():
        lacking("simavr's headers are not installed (libsimavr-dev)")
    for lib in ("simavr", "simavrparts"):
        if ctypes.util.find_library(lib) is None:
            lacking(f"lib{lib} is not installed (libsimavr-dev, libsimavrparts1)")
    need_program("cc")


def _makefile_args() -> list[str]:
    """The main Makefile when it includes boards.mk, else boards.mk on its own."""
    main = SDK / "Makefile"
    if main.exists() and "boards.mk" in main.read_text(errors="replace"):
        return []
    return ["-f", "boards.mk"]


def build(target: str) -> Path:
    """``make -C device-sdk TARGET`` (a path under device-sdk, e.g.
    ``build/atmega328p/selftest.elf``); returns that file's path. A failed build fails the
    test with make's output."""
    need_program("make")
    if "lm3s6965" in target:
        need_program("arm-none-eabi-gcc")
    if "atmega328p" in target:
        need_program("avr-gcc")
    if target.endswith("simavr_pty"):
        need_simavr()
    proc = subprocess.run(
        ["make", "-C", str(SDK), *_makefile_args(), target],
        capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"make {target} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    path = SDK / target
    if not path.exists():
        raise AssertionError(f"make {target} succeeded but made no {path}")
    return path


class Emulator:
    """An emulator subprocess (in its own process group) whose UART is the pty ``path``.

    ``start()`` runs it and waits (up to a deadline) for the line naming the pty;
    ``stop()`` sends SIGTERM to the group and waits, then SIGKILL after a deadline;
    ``restart()`` is both: the old pty goes away (an unplug) and ``path`` is the new one.
    ``output`` keeps what it printed (both streams), for failure messages."""

    def __init__(self, argv: Sequence[str], pattern: re.Pattern[str],
                 streams: tuple[str, ...] = ("stdout", "stderr")) -> None:
        self.argv = list(argv)
        self.pattern = pattern
        self.streams = streams  # the streams the pty line may come on
        self.path = ""
        self.output: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name

    def describe(self) -> str:
        rc = None if self.process is None else self.process.returncode
        tail = "".join(self.output[-30:])
        return f"{' '.join(self.argv)} (exit status {rc}); its output:\n{tail}"

    async def start(self, timeout: float = START_TIMEOUT) -> str:
        if self.process is not None and self.process.returncode is None:
            raise RuntimeError(f"{self.name} is running already")
        loop = asyncio.get_running_loop()
        found: asyncio.Future[str] = loop.create_future()
        self.output = []
        self.path = ""
        self.process = proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, "stdout", found)),
            asyncio.create_task(self._read(proc.stderr, "stderr", found)),
        ]
        exited = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait({found, exited}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if found in done:
            self.path = found.result()
            return self.path
        found.cancel()
        await self.stop()
        what = "exited" if done else f"named no pty in {timeout} s"
        raise AssertionError(f"{self.name} {what}: {self.describe()}")

    async def _read(self, stream: asyncio.StreamReader, name: str,
                    found: asyncio.Future[str]) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace")
            if len(self.output) < 1000:
                self.output.append(text)
            if name in self.streams and not found.done() and (
                    match := self.pattern.search(text.rstrip("\r\n"))):
                found.set_result(match.group(1))

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Terminate the process group, wait; kill it if it has not gone in ``timeout``."""
        proc = self.process
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for reader in self._readers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader, 1.0)  # the pipes close with the process
        self._readers = []
        return proc.returncode

    async def restart(self) -> str:
        """Stop and start again (an unplug and a plug): returns the new pty's path."""
        await self.stop()
        return await self.start()


@contextlib.asynccontextmanager
async def _running(emulator: Emulator) -> AsyncIterator[Emulator]:
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


def qemu_argv(elf: Path) -> list[str]:
    return [need_program("qemu-system-arm"), "-M", "lm3s6965evb", "-display", "none",
            "-monitor", "none", "-serial", "pty", "-kernel", str(elf)]


@contextlib.asynccontextmanager
async def qemu(elf: Path) -> AsyncIterator[Emulator]:
    """LM3S6965 firmware under ``qemu-system-arm -M lm3s6965evb``, UART0 on a pty."""
    async with _running(Emulator(qemu_argv(elf), QEMU_PTY)) as emulator:
        yield emulator


@contextlib.asynccontextmanager
async def simavr(elf: Path, harness: Path | None = None, mcu: str = "atmega328p",
                 frequency: int = 16_000_000) -> AsyncIterator[Emulator]:
    """ATmega firmware under simavr (device-sdk/tools/simavr_pty: real time, UART0 on a
    pty); the harness is built when not given."""
    if harness is None:
        need_simavr()
        harness = await asyncio.to_thread(build, SIMAVR_PTY)
    argv = [str(harness), "-m", mcu, "-f", str(frequency), str(elf)]
    async with _running(Emulator(argv, SIMAVR_PTY_LINE, streams=("stdout",))) as emulator:
        yield emulator


class PtyPort:
    """The test's end of an emulator's pty, raw and non-blocking. Everything read is kept in
    ``data``; ``chunks`` has each read with the loop time it arrived at."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.data = bytearray()
        self.chunks: list[tuple[float, bytes]] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._loop.add_reader(self.fd, self._on_readable)

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:  # EIO: the emulator went away
            self._loop.remove_reader(self.fd)
            chunk = b""
        if chunk:
            self.data += chunk
            self.chunks.append((self._loop.time(), chunk))
        self._changed.set()

    async def write(self, data: bytes) -> None:
        """Write all of ``data``: in one write when the pty has room, else as it drains."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                writable = self._loop.create_future()
                self._loop.add_writer(self.fd, writable.set_result, None)
                try:
                    await writable
                finally:
                    self._loop.remove_writer(self.fd)

    async def wait(self, predicate: Callable[[], Any], timeout: float = 10.0,
                   what: str = "it") -> Any:
        """Wait (woken by each read) until ``predicate()`` is truthy; AssertionError at the
        deadline."""
        try:
            async with asyncio.timeout(timeout):
                while not (value := predicate()):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"waited {timeout} s for {what} on {self.path}") from None
        return value
