#!/usr/bin/env python3
"""Flash and RAM of the SDK core and of the example firmware, per target (`make size`).

The core is measured by linking tests/size_main.c (the smallest program that uses all of
the device API) and summing the sizes of the symbols the core brings (the program's own
main, key table and the like are left out); its RAM is the mcp_device_t the application
allocates. The example firmware is measured whole with `size` (flash = text + data, RAM =
data + bss; the stack comes on top).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parent.parent
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Os",
        "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections", f"-I{SDK / 'include'}"]
ARCHES = {
    "cortex-m3": (["arm-none-eabi-gcc", "-mcpu=cortex-m3", "-mthumb", "--specs=nano.specs",
                   "--specs=nosys.specs"], "arm-none-eabi-nm", "arm-none-eabi-size",
                  {"flash": 256 * 1024, "ram": 64 * 1024}),
    "atmega328p": (["avr-gcc", "-mmcu=atmega328p"], "avr-nm", "avr-size",
                   {"flash": 32 * 1024, "ram": 2048}),
}
#: (name, -D options): the core configurations measured
CORES = [
    ("mcp", ["-DMCP_MS720=0"]),
    ("ms720 window 4", ["-DMCP_MS720=1", "-DMCP_MS720_WINDOW=4"]),
    ("ms720 window 1", ["-DMCP_MS720=1", "-DMCP_MS720_WINDOW=1"]),
]
#: the application's own symbols in size_main.c
APP = {"main", "keys", "cfg", "dev", "value", "write", "status"}
CORE_SOURCES = sorted(str(p) for p in (SDK / "src").glob("*.c"))


def symbols(nm: str, elf: Path) -> dict[str, tuple[str, int]]:
    out = subprocess.run([nm, "-S", "--defined-only", str(elf)], capture_output=True,
                         text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            table[parts[3]] = (parts[2].lower(), int(parts[1], 16))
    return table


def core_size(arch: str, options: list[str], build: Path) -> dict[str, int]:
    cc, nm, _, _ = ARCHES[arch]
    build.mkdir(parents=True, exist_ok=True)
    empty, used = build / f"{arch}-empty.elf", build / f"{arch}-{'-'.join(options)}.elf"
    subprocess.run([*cc, *WARN, "-DEMPTY", "-o", str(empty), str(SDK / "tests/size_main.c")],
                   check=True)
    subprocess.run([*cc, *WARN, *options, "-o", str(used), *CORE_SOURCES,
                    str(SDK / "tests/size_main.c")], check=True)
    base = symbols(nm, empty)
    flash = ram = 0
    for name, (kind, size) in symbols(nm, used).items():
        if name in base or name in APP:
            continue
        if kind in "tr":
            flash += size
        elif kind in "d":
            flash += size
            ram += size
        elif kind in "b":
            ram += size
    device = symbols(nm, used)["dev"][1]
    return {"flash": flash, "ram": ram + device, "device_struct": device}


def whole_size(arch: str, elf: Path) -> dict[str, int]:
    _, _, size, _ = ARCHES[arch]
    out = subprocess.run([size, str(elf)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(x) for x in out.splitlines()[1].split()[:3])
    return {"flash": text + data, "ram": data + bss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=SDK / "build")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report: dict[str, dict] = {"core": {}, "example": {}}
    print(f"{'':24} {'flash B':>8} {'RAM B':>7}")
    for arch in ARCHES:
        for name, options in CORES:
            if arch == "cortex-m3" and name == "ms720 window 1":
                continue
            sizes = core_size(arch, options, args.build / "size")
            report["core"][f"{arch} {name}"] = sizes
            print(f"core {arch:11} {name:15} {sizes['flash']:8} {sizes['ram']:7}")
    boards = {"cortex-m3": "lm3s6965", "atmega328p": "atmega328p"}
    for arch, board in boards.items():
        limits = ARCHES[arch][3]
        for elf in sorted((args.build / board).glob("env-sensor-*.elf")):
            sizes = whole_size(arch, elf)
            sizes |= {"flash_free": limits["flash"] - sizes["flash"],
                      "ram_free": limits["ram"] - sizes["ram"]}
            report["example"][f"{board} {elf.stem}"] = sizes
            print(f"example {board:10} {elf.stem:20} {sizes['flash']:8} {sizes['ram']:7}"
                  f"   free: {sizes['flash_free']} B flash, {sizes['ram_free']} B RAM")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
