"""The device SDK's microcontroller board ports, under emulation: the self-test firmware
(device-sdk/ports/selftest.c) echoes what it receives and writes "tick N" every second of
board_millis, on the LM3S6965 under QEMU and on the ATmega328P under simavr.

The test sends only bytes with the high bit set, so the echo (0x80-0xFF) and the tick lines
(ASCII) can be told apart in what comes back.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import AsyncIterator, Callable

import pytest

from tests.emulators import SIMAVR_PTY, Emulator, PtyPort, build, qemu, simavr

BOARDS = ["lm3s6965", "atmega328p"]
TICK = re.compile(rb"tick (\d+)\n")


def echoed(port: PtyPort) -> bytes:
    return bytes(b for b in port.data if b & 0x80)


def ascii_part(data: bytes | bytearray) -> bytes:
    return bytes(b for b in data if not b & 0x80)


def ticks(port: PtyPort) -> list[int]:
    """The tick numbers received so far; fails on anything that is not a tick line (a
    partial last line excepted)."""
    text = ascii_part(port.data)
    first = text.find(b"tick ")  # what came before the port was opened may be cut
    if first < 0:
        return []
    text = text[first:]
    complete = text[:text.rfind(b"\n") + 1]
    numbers = [int(m.group(1)) for m in TICK.finditer(complete)]
    assert b"".join(b"tick %d\n" % n for n in numbers) == complete, complete
    return numbers


def tick_times(port: PtyPort) -> list[float]:
    """When each complete tick line arrived (loop time of the read with its newline),
    from the first "tick " on."""
    times: list[float] = []
    seen_start = False
    tail = b""
    for at, chunk in port.chunks:
        tail += ascii_part(chunk)
        if not seen_start:
            if b"tick " not in tail:
                continue
            seen_start = True
            tail = tail[tail.find(b"tick "):]
        times.extend([at] * tail.count(b"\n"))
        tail = tail[tail.rfind(b"\n") + 1:]
    return times


def high_bytes(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(0x80 | rng.randrange(128) for _ in range(n))


@pytest.fixture(scope="module")
def firmware() -> Callable[[str], object]:
    """board -> (ELF, simavr harness or None), built once per module."""
    built: dict[str, tuple[object, object]] = {}

    def get(board: str):
        if board not in built:
            elf = build(f"build/{board}/selftest.elf")
            harness = build(SIMAVR_PTY) if board == "atmega328p" else None
            built[board] = (elf, harness)
        return built[board]
    return get


@pytest.fixture(params=BOARDS)
async def emulator(request, firmware) -> AsyncIterator[Emulator]:
    elf, harness = firmware(request.param)
    run = qemu(elf) if request.param == "lm3s6965" else simavr(elf, harness=harness)
    async with run as emu:
        yield emu


@contextlib.asynccontextmanager
async def opened(emu: Emulator) -> AsyncIterator[PtyPort]:
    """The emulator's pty, once the firmware echoes (see ``ready``)."""
    with PtyPort(emu.path) as port:
        await ready(port)
        yield port


async def ready(port: PtyPort) -> None:
    """Wait until the firmware runs its loop: bytes that reach a UART before board_init
    are lost, on a real board and under emulation alike (QEMU's PL011 drops its FIFO when
    the port turns the FIFO on), and an emulator names its pty before the firmware starts.
    So send probe bytes 0xC0, 0xC1, ... one at a time until one comes back. The UART keeps
    order, so once probe k is echoed no earlier probe is still on its way: clear what was
    read and start from nothing."""
    for k in range(50):
        probe = bytes([0xC0 + k % 64])
        await port.write(probe)
        with contextlib.suppress(AssertionError):
            await port.wait(lambda p=probe: echoed(port).endswith(p), timeout=0.2)
            port.data.clear()
            port.chunks.clear()
            return
    raise AssertionError(f"no echo from the firmware on {port.path} in 10 s")


async def test_echo_of_4k_in_one_write(emulator):
    data = high_bytes(4096, 1)
    async with opened(emulator) as port:
        await port.write(data)
        await port.wait(lambda: len(echoed(port)) >= len(data), timeout=15,
                        what=f"the echo of 4096 bytes from {emulator.name}")
        assert echoed(port) == data
        ticks(port)  # nothing else came back but well-formed tick lines


async def test_echo_of_4k_in_small_pieces(emulator):
    """Pieces of 1-64 bytes, each its own write, at most 200 bytes unanswered at a time."""
    data = high_bytes(4096, 2)
    rng = random.Random(3)
    async with opened(emulator) as port:
        sent = 0
        while sent < len(data):
            piece = data[sent:sent + rng.randint(1, 64)]
            await port.wait(lambda s=sent: s - len(echoed(port)) < 200, timeout=10,
                            what="room in the window")
            await port.write(piece)
            sent += len(piece)
        await port.wait(lambda: len(echoed(port)) >= len(data), timeout=15,
                        what=f"the echo of 4096 bytes from {emulator.name}")
        assert echoed(port) == data
        ticks(port)


async def test_ticks_in_order_at_real_time(emulator):
    async with opened(emulator) as port:
        await port.wait(lambda: len(ticks(port)) >= 4, timeout=10,
                        what=f"four tick lines from {emulator.name}")
        numbers = ticks(port)
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        times = tick_times(port)
        elapsed = times[3] - times[0]  # three of the firmware's seconds
        assert 3 * 0.75 <= elapsed <= 3 * 1.25, f"3 s of board_millis took {elapsed:.3f} s"


async def test_restart_gives_a_working_pty(emulator):
    old = emulator.process
    data = high_bytes(256, 4)
    async with opened(emulator) as port:
        await port.write(data)
        await port.wait(lambda: echoed(port) == data, timeout=10, what="the echo")
    await emulator.restart()
    assert old is not None
    assert old.returncode is not None
    assert emulator.process is not old
    async with opened(emulator) as port:
        await port.write(data)
        await port.wait(lambda: echoed(port) == data, timeout=10,
                        what="the echo after the restart")
