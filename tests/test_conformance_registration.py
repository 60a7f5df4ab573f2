"""The conformance kit's registration checks (REG-1..6, spec section 3 "Registration")
against the simulator: conformant, then with each fault that breaks one of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim.device import SimulatedDevice
from gateway.conformance.checks.registration import hello_problems
from gateway.conformance.rules import RULES
from gateway.frames import Command, encode_payload
from tests.conformance_helpers import (
    assert_only_its_rule_fails,
    breaks_of,
    explain,
    kit,
    simulated,
    verdicts,
    with_valve_profile,
)
from tests.harness import wait_for

GROUP = {r.id for r in RULES.values() if r.group == "registration"}

#: what each break's failure must say (the why names the fault, with its numbers)
WHY = {
    "no-hello": "no HELLO in 3 s",
    "hello-once": "no HELLO again within 2 s of the one at",
    "bad-hello": "proto is 2, not 1; model 'env-sensorenv-sensor",
    "hello-after-ack": "s after the kit's HELLO_ACK",
    "ignores-heartbeat": "no PING in the 2.5 s after the HELLO_ACK at",
    "ignores-nack5": "no HELLO within 1.5 s of NACK 5 (not registered) to its PING",
    "new-uid": "after NACK 5 it sent HELLO with uid",
}


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
async def test_a_conformant_device_passes_registration(tmp_path, frames):
    async with simulated(tmp_path, frames=frames) as device:
        results = await kit(device, only=("registration",))
        assert verdicts(results) == dict.fromkeys(sorted(GROUP), "pass"), explain(results)
        # REG-2's, and REG-6's after NACK 5: the kit's last HELLO_ACK may still be on its
        # way to the device when the run returns (seen under load in CI).
        await wait_for(lambda: device.counters.registrations == 2, timeout=5,
                       what="the device registered twice")
    assert "3 unanswered HELLOs" in results["REG-2"].why
    assert "model 'env-sensor'" in results["REG-3"].why
    assert "heartbeat_s=2" in results["REG-5"].why
    assert "same uid" in results["REG-6"].why


async def test_liv_2_counts_the_heartbeat_from_the_registration_after_nack_5(tmp_path):
    """REG-6 unregisters the device on purpose (NACK 5): LIV-2, passive over the transcript,
    must judge the heartbeat from the new registration, not across the gap REG-6 made."""
    async with simulated(tmp_path) as device:
        results = await kit(device, only=("registration", "liveness"))
    assert set(verdicts(results).values()) == {"pass"}, explain(results)
    assert "PINGs over" in results["LIV-2"].why


def test_a_40_byte_model_is_named_with_its_length_though_the_decoder_refuses_it():
    good = encode_payload(Command.HELLO, {"proto": 1, "uid": "00" * 8, "fw": "1.0.0",
                                          "model": "", "caps": ["status"]})
    assert hello_problems(good) == []
    long_model = good[:12] + bytes([40]) + b"m" * 40 + good[13:]
    assert hello_problems(long_model) == ["model " + repr("m" * 40) + " is 40 bytes, over 32"]
    assert hello_problems(good[:12] + b"\x01\xe9" + good[13:]) == [r"model b'\xe9' is not ASCII"]
    assert hello_problems(good + b"\x00") == ["1 byte follows the caps"]
    assert hello_problems(good[:-2]) == ["cap 1 of 1 claims 6 bytes but only 4 follow"]
    assert hello_problems(good[:5]) == ["it is 5 bytes, shorter than proto, uid, fw and the "
                                        "model's length byte (13 bytes)"]


@pytest.mark.parametrize("fault", breaks_of(GROUP))
async def test_each_registration_break_fails_its_rule_and_only_that(tmp_path, fault):
    async with simulated(tmp_path, breaks=(fault,)) as device:
        results = await kit(device, only=("registration",))
    assert_only_its_rule_fails(results, fault, WHY[fault])


def test_every_registration_break_has_its_expected_why():
    assert set(WHY) == set(breaks_of(GROUP))


async def _registered(device: SimulatedDevice, dirs: tuple[Path, ...] = ()) -> None:
    """A first run leaves the device registered: it sends no HELLO to the next one."""
    await kit(device, only=("LIV-1",), profile_dirs=dirs)
    assert device.registered


async def test_a_registered_device_is_rebooted_by_its_profiles_reboot_command(tmp_path):
    dirs = (with_valve_profile(tmp_path),)
    async with simulated(tmp_path, profile="valve") as device:
        await _registered(device, dirs)
        results = await kit(device, only=("REG-1", "REG-2"), profile_dirs=dirs,
                            hello_timeout_s=1.0)
    assert verdicts(results) == {"REG-1": "pass", "REG-2": "pass"}, explain(results)
    assert "(after the kit asked for a reboot)" in results["REG-1"].why


async def test_without_a_reboot_command_the_kit_asks_the_operator_to_reset(tmp_path):
    asked: list[str] = []
    async with simulated(tmp_path) as device:
        await _registered(device)

        def operator(line: str) -> None:  # presses the reset button
            asked.append(line)
            device.reboot()

        results = await kit(device, only=("REG-1",), hello_timeout_s=1.0,
                            ask_operator=operator)
    assert verdicts(results) == {"REG-1": "pass"}, explain(results)
    assert "(after the kit asked for a reboot)" in results["REG-1"].why
    assert len(asked) == 1
    assert "reset or power-cycle it now (waiting up to 30 s)" in asked[0]


async def test_an_operator_who_does_not_reset_fails_reg_1_after_the_timeout(tmp_path):
    asked: list[str] = []
    async with simulated(tmp_path) as device:
        await _registered(device)
        results = await kit(device, only=("REG-1", "REG-3"), hello_timeout_s=1.0,
                            reboot_timeout_s=1.0, ask_operator=asked.append)
    assert verdicts(results) == {"REG-1": "fail", "REG-3": "skip"}, explain(results)
    assert results["REG-1"].why == "no HELLO in 1 s, nor in 1 s after a reset"
    assert len(asked) == 1
