"""The conformance kit's liveness checks against the simulator: conformant, then with each
fault that breaks one of them."""

from __future__ import annotations

import asyncio
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

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


async def test_the_command_checks_only_the_rules_asked_for(tmp_path):
    """``--only LIV-1``: that rule alone, in the table, the JSON and the JUnit file."""
    binary = str(Path(sys.executable).parent / "mcp-gateway")
    async with simulated(tmp_path) as device:
        json_file, junit_file = tmp_path / "r.json", tmp_path / "r.xml"
        proc = await asyncio.create_subprocess_exec(
            binary, "conformance", device.link.path, "--only", "LIV-1", "--json",
            str(json_file), "--junit", str(junit_file), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert "1 passed, 0 failed, 0 skipped" in out.decode()
    document = json.loads(json_file.read_text())
    assert [(r["id"], r["verdict"]) for r in document["results"]] == [("LIV-1", "pass")]
    cases = ET.parse(junit_file).getroot().iter("testcase")
    assert [c.get("name").split()[0] for c in cases] == ["LIV-1"]
