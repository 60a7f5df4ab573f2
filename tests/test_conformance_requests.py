"""The conformance kit's requests checks (REQ-1..8) against the simulator: conformant on
both frame profiles and with a profile that has a device-specific command, then with each
break of the group."""

from __future__ import annotations

import time

import pytest

from firmware_sim.breaks import BREAKS
from gateway.conformance.rules import RULES
from tests.conformance_helpers import (
    breaks_of,
    explain,
    kit,
    simulated,
    verdicts,
    with_valve_profile,
)

REQUESTS = {r.id for r in RULES.values() if r.group == "requests"}


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
async def test_a_conformant_env_sensor_passes_requests(tmp_path, frames):
    async with simulated(tmp_path, frames=frames) as device:
        before = dict(device.settings)
        start = time.monotonic()
        results = await kit(device, only=("requests",))
        took = time.monotonic() - start
        settings = dict(device.settings)
    expected = dict.fromkeys(sorted(REQUESTS), "pass") | {"REQ-7": "skip"}
    if frames == "ms720":
        del expected["REQ-8"]  # an mcp rule
    assert verdicts(results) == expected, explain(results)
    assert "3 keys read" in results["REQ-1"].why
    assert "interval_ms 1000 -> 1001 -> 1000" in results["REQ-2"].why
    assert "fw_build: WRITE denied (status 6)" in results["REQ-3"].why
    assert "no device-specific commands" in results["REQ-7"].why
    assert settings == before, "every value written is written back"
    print(frames, f"{took:.2f} s", explain(results))


async def test_a_conformant_valve_passes_its_device_command(tmp_path):
    dirs = (with_valve_profile(tmp_path),)
    async with simulated(tmp_path, profile="valve") as device:
        results = await kit(device, only=("requests",), profile_dirs=dirs)
    assert verdicts(results) == dict.fromkeys(sorted(REQUESTS), "pass"), explain(results)
    assert "spin each answered with its declared layout" in results["REQ-7"].why


@pytest.mark.parametrize(("fault", "frames", "why"), [
    ("wrong-read-key", "mcp", "was answered by a READ_RESP of key 0x8001, not 0x0001"),
    ("wrong-read-key", "ms720", "was answered by a READ_RESP of key 0x8001, not 0x0001"),
    ("write-not-stored", "mcp", "reads 1000 after a WRITE of 1001 answered status 0"),
    ("readonly-writable", "mcp", "fw_build (0x0003) answered WRITE_ACK status 0, not 6"),
    ("unknown-key-answered", "mcp", "was answered by READ_RESP key=65535"),
    ("no-unknown-nack", "mcp", "no answer to the device-specific command 0x30"),
    ("no-unknown-nack", "ms720", "no answer to the device-specific command 0x30"),
    ("no-bad-payload-nack", "mcp", "no answer to a READ of 1 byte"),
    ("wrong-command-layout", "mcp", "does not decode by its declared layout (rpm u16, ok bool)"),
    ("double-answer", "mcp", "was answered twice"),
])
async def test_each_requests_break_fails_its_rule_alone(tmp_path, fault, frames, why):
    broken = BREAKS[fault]
    valve = fault == "wrong-command-layout"  # env-sensor has no device-specific command
    dirs = (with_valve_profile(tmp_path),) if valve else ()
    async with simulated(tmp_path, frames=frames, breaks=(fault,),
                         profile="valve" if valve else "env-sensor") as device:
        results = await kit(device, only=("requests",), profile_dirs=dirs)
    got = verdicts(results)
    assert got[broken.rule] == "fail", explain(results)
    assert why in results[broken.rule].why, explain(results)
    assert results[broken.rule].evidence, "a failure shows the frames"
    others = set(got) - {broken.rule} - set(broken.also)
    expected = {r: "skip" if r == "REQ-7" and not valve else "pass" for r in others}
    assert {r: got[r] for r in others} == expected, explain(results)


def test_every_requests_break_is_tested():
    assert set(breaks_of(REQUESTS)) == {
        "wrong-read-key", "write-not-stored", "readonly-writable", "unknown-key-answered",
        "no-unknown-nack", "no-bad-payload-nack", "wrong-command-layout", "double-answer"}
