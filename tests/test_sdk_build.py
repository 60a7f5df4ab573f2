"""The device SDK builds warning-free for every target, and its C unit tests pass."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.sdk_firmware import SDK, built

pytestmark = pytest.mark.timeout(300)


def test_the_c_unit_tests_pass_on_both_frame_profiles():
    built("posix")
    done = subprocess.run(["make", "-s", "-C", str(SDK), "test"], capture_output=True,
                          text=True, timeout=240, check=False)
    summaries = re.findall(r"^(\d+) passed, (\d+) failed$", done.stdout, re.MULTILINE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(summaries) == 2, done.stdout  # mcp, then ms720
    mcp, ms720 = ((int(p), int(f)) for p, f in summaries)
    assert mcp[1] == ms720[1] == 0, done.stdout
    assert mcp[0] >= 10, done.stdout
    assert ms720[0] > mcp[0], done.stdout  # ms720 adds the link's tests


@pytest.mark.parametrize("target", ["posix", "qemu", "simavr"])
def test_every_target_builds_with_warnings_as_errors(target):
    """-std=c99 -Wall -Wextra -Werror -pedantic, with gcc, arm-none-eabi-gcc and avr-gcc:
    a warning fails the build, so building is the check."""
    built(target)


def test_make_size_reports_the_core_and_the_example_on_each_target(tmp_path):
    built("qemu")
    built("simavr")
    report = tmp_path / "size.json"
    done = subprocess.run(["python3", str(SDK / "tools" / "size_report.py"), "--json",
                           str(report)], capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(report.read_text())
    assert set(figures["core"]) == {"cortex-m3 mcp", "cortex-m3 ms720 window 4",
                                    "atmega328p mcp", "atmega328p ms720 window 4",
                                    "atmega328p ms720 window 1"}
    assert all(f["flash"] > 500 and f["ram"] > 100 for f in figures["core"].values())
    uno = figures["example"]["atmega328p env-sensor-mcp"]
    assert uno["flash_free"] > 0, uno  # it fits the chip
    assert uno["ram_free"] > 0, uno
