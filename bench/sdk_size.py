"""Flash and RAM of the device SDK: the core (mcp, ms720) and the env-sensor example, per
target, beside the issue's goals (-Os; Cortex-M3: the mcp core in at most 2 KiB of flash
and 400 B of RAM, ms720 with window 4 and 64-byte payloads in 5 KiB and 1.5 KiB; the mcp
example fits the ATmega328P).

It builds the firmware (make lm3s6965 atmega328p) and runs device-sdk/tools/size_report.py,
then prints the table and the figures as JSON. Sizes do not depend on time, so --smoke
measures the same thing (it is only accepted, for tests/test_benches.py).

    .venv/bin/python bench/sdk_size.py [--smoke]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SDK = Path(__file__).resolve().parent.parent / "device-sdk"
GOALS = {"cortex-m3 mcp": (2048, 400), "cortex-m3 ms720 window 4": (5120, 1536)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same run (sizes are sizes)")
    parser.parse_args()
    built = subprocess.run(["make", "-s", "-C", str(SDK), "lm3s6965", "atmega328p"],
                           capture_output=True, text=True, check=False)
    if built.returncode != 0:
        print(built.stdout + built.stderr, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "size.json"
        done = subprocess.run([sys.executable, str(SDK / "tools" / "size_report.py"),
                               "--json", str(report)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return 1
        figures = json.loads(report.read_text())
    print(done.stdout, end="")
    for name, (flash, ram) in GOALS.items():
        got = figures["core"][name]
        verdict = "met" if got["flash"] <= flash and got["ram"] <= ram else "MISSED"
        print(f"goal {name}: flash {got['flash']} / {flash} B, RAM {got['ram']} / {ram} B: "
              f"{verdict}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
