"""The conformance kit's requests checks (REQ-1..8) against the simulator: conformant on
both frame profiles and with a profile that has a device-specific command, then with each
break of the group."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.conformance.checks import CHECKS, Failed, load
from gateway.conformance.probe import Record
from gateway.conformance.rules import RULES
from gateway.frames import Command, Frame, encode_frame
from gateway.frames.commands import command_name
from tests.conformance_helpers import (
    assert_only_its_rule_fails,
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
        results = await kit(device, only=("requests",))
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
    valve = fault == "wrong-command-layout"  # env-sensor has no device-specific command
    dirs = (with_valve_profile(tmp_path),) if valve else ()
    async with simulated(tmp_path, frames=frames, breaks=(fault,),
                         profile="valve" if valve else "env-sensor") as device:
        results = await kit(device, only=("requests",), profile_dirs=dirs)
    assert_only_its_rule_fails(results, fault, why,
                               expected_skips=frozenset() if valve else frozenset({"REQ-7"}))


def test_every_requests_break_is_tested():
    assert set(breaks_of(REQUESTS)) == {
        "wrong-read-key", "write-not-stored", "readonly-writable", "unknown-key-answered",
        "no-unknown-nack", "no-bad-payload-nack", "wrong-command-layout", "double-answer"}


def _record(t: float, direction: str, cmd_id: int, payload: bytes = b"",
            claimed_by: str | None = None) -> Record:
    return Record(t, direction, encode_frame(cmd_id, payload), command_name(cmd_id),
                  Frame(cmd_id, payload), claimed_by=claimed_by)


async def _req_8(records: list[Record]) -> str:
    ctx = SimpleNamespace(probe=SimpleNamespace(records=records))
    return await CHECKS["REQ-8"].fn(ctx)  # type: ignore[arg-type]


async def test_req_8_takes_a_late_answer_and_fails_one_nobody_asked_for():
    """A late answer (its request had none in time) is still one answer; a response that
    answers no request of the kit's breaks REQ-8, as a second answer does."""
    load()
    read = _record(0.0, "tx", Command.READ, b"\x01\x00")
    late = _record(1.5, "rx", Command.READ_RESP, b"\x01\x00\xe8\x03\x00\x00")
    assert "(1 after the kit stopped waiting)" in await _req_8([read, late])
    stray = _record(2.0, "rx", Command.WRITE_ACK, b"\x01\x00\x00")
    with pytest.raises(Failed, match=r"WRITE_ACK at 2000\.0 ms answers nothing the kit asked"):
        await _req_8([read, late, stray])
    # PONGs to the device's own PINGs are the kit's (tx): not answers of the device
    ping = _record(3.0, "rx", Command.PING)
    pong = _record(3.0, "tx", Command.PONG)
    assert "1 answers" in await _req_8([read, late, ping, pong])
