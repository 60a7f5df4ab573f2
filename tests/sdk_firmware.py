"""The SDK's env-sensor firmware in tests: built once per session, run as a posix program on
a pty of its own, under QEMU (Cortex-M3) or under simavr (ATmega328P), behind a stable
symlink that follows it across restarts (as a udev name follows a replugged device)."""

from __future__ import annotations

import contextlib
import functools
import subprocess
from pathlib import Path

from tests.emulators import QEMU_PTY, SIMAVR_PTY_LINE, Emulator, need_program, need_simavr

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "device-sdk"
BUILD = SDK / "build"

#: target -> (make target, tools it needs)
TARGETS = {
    "posix": ("host", ("gcc", "make")),
    "qemu": ("lm3s6965", ("arm-none-eabi-gcc", "qemu-system-arm", "make")),
    "simavr": ("atmega328p", ("avr-gcc", "make", "gcc")),
}


@functools.cache
def built(target: str) -> None:
    """Build a target's firmware (both frame profiles) once; a missing tool skips (fails
    under CI)."""
    make_target, tools = TARGETS[target]
    for tool in tools:
        need_program(tool)
    if target == "simavr":
        need_simavr()
    done = subprocess.run(["make", "-s", "-C", str(SDK), make_target], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, f"make {make_target} failed:\n{done.stdout}{done.stderr}"


def command(target: str, frames: str, uid: str, variant: str = "",
            eeprom: Path | None = None) -> list[str]:
    """How to run a target's env-sensor firmware of the ``frames`` profile (``variant``
    "noisy": the ms720 build with 40 resends); simavr keeps the chip's EEPROM in
    ``eeprom`` across restarts, as a chip does across resets."""
    built(target)
    name = f"env-sensor-{frames}" + (f"-{variant}" if variant else "")
    if target == "posix":
        return [str(BUILD / "host" / name), "--uid", uid]
    if target == "qemu":
        return ["qemu-system-arm", "-M", "lm3s6965evb", "-display", "none", "-monitor", "none",
                "-serial", "pty", "-kernel", str(BUILD / "lm3s6965" / f"{name}.elf")]
    keep = ["-e", str(eeprom)] if eeprom is not None else []
    return [str(BUILD / "tools" / "simavr_pty"), *keep,
            str(BUILD / "atmega328p" / f"{name}.elf")]


#: the line naming the pty: QEMU's, or the posix firmware's and simavr_pty's "pty PATH"
_PTY_LINE = {"qemu": QEMU_PTY, "posix": SIMAVR_PTY_LINE, "simavr": SIMAVR_PTY_LINE}


class Firmware:
    """``async with Firmware(target, frames, link)``: the firmware running (an
    ``tests.emulators.Emulator``), its serial port at ``link``, a symlink to the current pty;
    ``restart()`` kills it and starts it again (a new pty: the symlink moves), ``stop()``
    kills it (the symlink goes)."""

    def __init__(self, target: str, frames: str, link: Path, *, variant: str = "",
                 uid: str = "c0ffee0000000001") -> None:
        self.target, self.frames, self.link, self.uid = target, frames, link, uid
        self.variant = variant
        eeprom = link.with_name(f"{link.name}.eeprom")
        self.emulator = Emulator(command(target, frames, uid, variant, eeprom),
                                 _PTY_LINE[target])

    @property
    def path(self) -> str:
        return str(self.link)

    @property
    def output(self) -> str:
        """What the firmware (or its emulator) printed."""
        return "".join(self.emulator.output)

    async def __aenter__(self) -> Firmware:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        tty = await self.emulator.start()
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(f".{self.link.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(tty)
        tmp.replace(self.link)

    async def stop(self) -> None:
        await self.emulator.stop()
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()

    async def restart(self) -> None:
        await self.stop()
        await self.start()
