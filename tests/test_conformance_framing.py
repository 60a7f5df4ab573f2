"""The conformance kit's framing checks (FRM-1..5) against the simulator: conformant on
both frame profiles, then with each break of the group."""

from __future__ import annotations

import pytest

from gateway.conformance.rules import RULES
from tests.conformance_helpers import (
    assert_only_its_rule_fails,
    breaks_of,
    explain,
    kit,
    simulated,
    verdicts,
)

FRAMING = {r.id for r in RULES.values() if r.group == "framing"}


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
async def test_a_conformant_device_passes_framing(tmp_path, frames):
    async with simulated(tmp_path, frames=frames) as device:
        results = await kit(device, only=("framing",))
    assert verdicts(results) == dict.fromkeys(sorted(FRAMING), "pass"), explain(results)
    assert "s, every one with a good header, length and" in results["FRM-1"].why
    assert "garbage ignored" in results["FRM-2"].why
    assert "not acted on" in results["FRM-3"].why
    assert "dropped; a PING" in results["FRM-4"].why
    assert "byte by byte and in two parts" in results["FRM-5"].why


@pytest.mark.parametrize(("fault", "frames", "why"), [
    ("bad-checksum", "mcp", "failed their checksum"),
    ("bad-checksum", "ms720", "failed their CRC-16"),
    ("no-resync", "mcp", "after 37 bytes of garbage"),
    ("acts-on-bad-checksum", "mcp", "with a wrong checksum was acted on: answered by READ_RESP"),
    ("acts-on-bad-checksum", "ms720", "with a wrong CRC was acted on: answered by"),
    ("no-frame-timeout", "mcp", "keep a partial frame past the inter-frame timeout"),
    ("no-frame-timeout", "ms720", "keep a partial frame past the inter-frame timeout"),
    ("whole-writes-only", "mcp", "written byte by byte"),
    ("whole-writes-only", "ms720", "written byte by byte"),
])
async def test_each_framing_break_fails_its_rule_alone(tmp_path, fault, frames, why):
    async with simulated(tmp_path, frames=frames, breaks=(fault,)) as device:
        results = await kit(device, only=("framing",))
    assert_only_its_rule_fails(results, fault, why)


def test_every_framing_break_is_tested():
    tested = {"bad-checksum", "no-resync", "acts-on-bad-checksum", "no-frame-timeout",
              "whole-writes-only"}
    assert set(breaks_of(FRAMING)) == tested
