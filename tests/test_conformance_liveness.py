"""The conformance kit's liveness checks against the simulator: conformant, then with each
fault that breaks one of them."""

from __future__ import annotations

import pytest

from tests.conformance_helpers import explain, kit, simulated, verdicts


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
async def test_a_conformant_device_passes_liveness(tmp_path, frames):
    async with simulated(tmp_path, frames=frames) as device:
        results = await kit(device, only=("liveness",))
    assert verdicts(results) == {"LIV-1": "pass", "LIV-2": "pass"}, explain(results)
    assert "6 PONGs" in results["LIV-1"].why
    assert "PINGs over" in results["LIV-2"].why


@pytest.mark.parametrize(("fault", "why"), [
    ("wrong-pong", "carries 4 payload bytes; a PONG is empty"),
    ("slow-pong", "the bound is 250 ms"),
])
async def test_a_wrong_or_late_pong_fails_liv_1_alone(tmp_path, fault, why):
    async with simulated(tmp_path, breaks=(fault,)) as device:
        results = await kit(device, only=("liveness",))
    assert verdicts(results) == {"LIV-1": "fail", "LIV-2": "pass"}, explain(results)
    assert why in results["LIV-1"].why
    # The failure quotes the frames both ways, in hex, decoded.
    lines = [e.line() for e in results["LIV-1"].evidence]
    assert any("kit->dev  5a 02 00 00 02  PING" in line for line in lines), lines
    assert any("dev->kit" in line and "PONG" in line for line in lines), lines


async def test_a_heartbeat_that_stops_fails_liv_2(tmp_path):
    async with simulated(tmp_path, breaks=("stops-heartbeat",)) as device:
        results = await kit(device, only=("liveness",))
    assert verdicts(results) == {"LIV-1": "pass", "LIV-2": "fail"}, explain(results)
    assert "without a PING" in results["LIV-2"].why
    assert "the heartbeat is 2 s" in results["LIV-2"].why
