"""The conformance kit against the SDK's env-sensor firmware: as a posix program, as
Cortex-M3 firmware under QEMU and as ATmega328P firmware under simavr, on both frame
profiles. Every rule passes (env-sensor declares no device command: REQ-7 skips)."""

from __future__ import annotations

import pytest

from gateway.conformance.rules import select
from gateway.conformance.runner import Options, run
from gateway.frames import ProfileRegistry
from tests.conformance_helpers import explain
from tests.sdk_firmware import Firmware

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
@pytest.mark.parametrize("target", ["posix", "qemu", "simavr"])
async def test_the_env_sensor_firmware_passes_every_rule(tmp_path, target, frames):
    profile = ProfileRegistry(()).get("env-sensor")
    async with Firmware(target, frames, tmp_path / "fw") as firmware:
        results = {r.rule.id: r for r in await run(Options(
            url=firmware.path, profile=profile, frames=frames))}
    assert list(results) == [r.id for r in select(None, frames)]
    verdicts = {rule: r.verdict for rule, r in results.items()}
    assert verdicts == {rule: "skip" if rule == "REQ-7" else "pass" for rule in results}, \
        explain(results) + "\n" + firmware.output
