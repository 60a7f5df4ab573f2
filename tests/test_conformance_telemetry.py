"""The conformance kit's telemetry checks (TEL-1..4: STATUS layout and period, a WRITE of
interval_ms, LOG frames) against the simulator: conformant, then with each fault that breaks
one of them."""

from __future__ import annotations

import pytest

from gateway.conformance.checks.telemetry import log_problems
from gateway.conformance.rules import RULES
from tests.conformance_helpers import (
    assert_only_its_rule_fails,
    breaks_of,
    explain,
    kit,
    simulated,
    verdicts,
)

GROUP = {r.id for r in RULES.values() if r.group == "telemetry"}

#: what each break's failure must say (the why names the fault, with its numbers)
WHY = {
    "short-status": "it has 9 payload bytes; the profile's status layout",
    "fast-status": "interval_ms is 1000 ms, so it must be 900 ms-1100 ms",
    "ignores-interval-write": "no STATUS in the 0.75 s after the one at",
    "bad-log": "level 9, but levels are 0 (debug) to 4 (error); its text",
}


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
async def test_a_conformant_device_passes_telemetry(tmp_path, frames):
    async with simulated(tmp_path, frames=frames) as device:
        results = await kit(device, only=("telemetry",))
        interval_ms = device.interval_s * 1000
    assert verdicts(results) == dict.fromkeys(sorted(GROUP), "pass"), explain(results)
    assert "all decode by the status layout (10 bytes" in results["TEL-1"].why
    assert "(interval_ms 1000 ms)" in results["TEL-2"].why
    assert "interval_ms 1000 -> 250 ms" in results["TEL-3"].why
    assert interval_ms == 1000, "TEL-3 leaves interval_ms as it found it"
    assert "1 LOG frame, level info" in results["TEL-4"].why  # the one sent on registering
    assert sum(r.duration_s for r in results.values()) < 9


def test_a_log_payload_is_judged_byte_by_byte():
    assert log_problems(b"\x01registered") == []
    assert log_problems(b"\x04caf\xc3\xa9") == []
    assert log_problems(b"") == ["it has no level byte"]
    assert log_problems(b"\x05ok") == ["level 5, but levels are 0 (debug) to 4 (error)"]
    assert log_problems(b"\x00\xc3") == [r"its text b'\xc3' is not UTF-8 (unexpected end of "
                                         "data at byte 0)"]


@pytest.mark.parametrize("fault", breaks_of(GROUP))
async def test_each_telemetry_break_fails_its_rule_and_only_that(tmp_path, fault):
    async with simulated(tmp_path, breaks=(fault,)) as device:
        results = await kit(device, only=("telemetry",))
    assert_only_its_rule_fails(results, fault, WHY[fault])


def test_every_telemetry_break_has_its_expected_why():
    assert set(WHY) == set(breaks_of(GROUP))


async def test_tel_4_is_skipped_with_its_reason_when_no_log_came(tmp_path):
    """The simulator logs on registering; one that sends no HELLO never does."""
    async with simulated(tmp_path, send_hello=False) as device:
        results = await kit(device, only=("TEL-1", "TEL-4"), hello_timeout_s=0.5)
    assert verdicts(results) == {"TEL-1": "pass", "TEL-4": "skip"}, explain(results)
    assert "sent no LOG frame during the run" in results["TEL-4"].why
