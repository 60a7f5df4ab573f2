"""The conformance kit's framing checks (FRM-1..5) against the simulator: conformant on
both frame profiles, then with each break of the group."""

from __future__ import annotations

import time

import pytest

from firmware_sim.breaks import BREAKS
from gateway.conformance.rules import RULES
from tests.conformance_helpers import breaks_of, explain, kit, simulated, verdicts

FRAMING = {r.id for r in RULES.values() if r.group == "framing"}


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
async def test_a_conformant_device_passes_framing(tmp_path, frames):
    async with simulated(tmp_path, frames=frames) as device:
        start = time.monotonic()
        results = await kit(device, only=("framing",))
        took = time.monotonic() - start
    assert verdicts(results) == dict.fromkeys(sorted(FRAMING), "pass"), explain(results)
    assert "every one with a good header, length and" in results["FRM-1"].why
    assert "garbage ignored" in results["FRM-2"].why
    assert "not acted on" in results["FRM-3"].why
    assert "dropped; a PING" in results["FRM-4"].why
    assert "byte by byte and in two parts" in results["FRM-5"].why
    print(frames, f"{took:.2f} s", explain(results))
