"""The conformance kit against a simulated device on a real pty, in one event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from firmware_sim import Fleet, FleetSpec
from firmware_sim.breaks import BREAKS
from firmware_sim.device import Faults, SimulatedDevice
from gateway.conformance.runner import Options, Result, run
from gateway.frames import ProfileRegistry

#: a profile with a device-specific command, for REQ-7 (written into a test's tmp dir)
VALVE_PROFILE = """\
name = "valve"
description = "A valve with a spin command, for the conformance tests"

[[events]]
id = 0x20
name = "status"
fields = [
  { name = "position_pct", type = "u8", unit = "%", min = 0, max = 100 },
  { name = "uptime_s", type = "u32", unit = "s", sim = "uptime" },
]

[[keys]]
id = 0x0001
name = "interval_ms"
type = "u32"
unit = "ms"
access = "rw"
min = 10
max = 3600000
default = 1000

[[keys]]
id = 0x0004
name = "serial"
type = "u32"
access = "ro"
default = 77

[[commands]]
id = 0x30
name = "spin"
request = [{ name = "rpm", type = "u16" }]
response = [{ name = "rpm", type = "u16" }, { name = "ok", type = "bool" }]

[[commands]]
id = 0x31
name = "reboot"
request = []
response = []
"""


@contextlib.asynccontextmanager
async def simulated(tmp_path: Path, *, frames: str = "mcp", breaks: tuple[str, ...] = (),
                    profile: str = "env-sensor", link_retries: int = 3,
                    send_hello: bool = True, seed: int = 7,
                    ) -> AsyncIterator[SimulatedDevice]:
    """One simulated device on a pty (its path: ``device.link.path``)."""
    dirs = (tmp_path / "profiles",) if (tmp_path / "profiles").is_dir() else ()
    spec = FleetSpec(count=1, profile=profile, frames=frames, link_retries=link_retries,
                     faults=Faults(breaks=frozenset(breaks)), send_hello=send_hello,
                     seed=seed, link_dir=tmp_path / "links", profile_dirs=dirs)
    async with Fleet(spec) as fleet:
        yield fleet.devices[0]


def with_valve_profile(tmp_path: Path) -> Path:
    """Write the ``valve`` profile into ``tmp_path/profiles``."""
    directory = tmp_path / "profiles"
    directory.mkdir(exist_ok=True)
    (directory / "valve.toml").write_text(VALVE_PROFILE)
    return directory


async def kit(device: SimulatedDevice, *, only: tuple[str, ...] | None = None,
              link_retries: int = 3, profile_dirs: tuple[Path, ...] = (),
              hello_timeout_s: float = 3.0, reboot_timeout_s: float = 30.0,
              ask_operator: Callable[[str], None] | None = None) -> dict[str, Result]:
    """Run the kit on the device's port as its profile and frames say; results by rule id."""
    profile = ProfileRegistry(profile_dirs).get(device.profile.name)
    options = Options(url=device.link.path, profile=profile, frames=device.frames, only=only,
                      link_retries=link_retries, hello_timeout_s=hello_timeout_s,
                      reboot_timeout_s=reboot_timeout_s, ask_operator=ask_operator)
    return {r.rule.id: r for r in await run(options)}


def verdicts(results: dict[str, Result]) -> dict[str, str]:
    return {rule_id: r.verdict for rule_id, r in results.items()}


def explain(results: dict[str, Result]) -> str:
    """Every verdict with why, and a failure's evidence: for an assertion's message."""
    lines = []
    for r in results.values():
        lines.append(f"{r.rule.id} {r.verdict} {r.why}")
        lines += [f"    {e.line()}" for e in r.evidence] if r.verdict == "fail" else []
    return "\n".join(lines)


def breaks_of(group_rules: set[str]) -> list[str]:
    """The breaks whose rule is one of ``group_rules``."""
    return [b.name for b in BREAKS.values() if b.rule in group_rules]


def assert_only_its_rule_fails(results: dict[str, Result], fault: str, why: str, *,
                               expected_skips: frozenset[str] = frozenset()) -> None:
    """The break's rule failed, saying ``why`` and showing frames; every other rule run
    that the break does not list in ``also`` passed (or is one of ``expected_skips``)."""
    broken = BREAKS[fault]
    assert results[broken.rule].verdict == "fail", explain(results)
    assert why in results[broken.rule].why, explain(results)
    assert results[broken.rule].evidence, "a failure shows the frames"
    others = set(results) - {broken.rule, *broken.also}
    expected = {r: "skip" if r in expected_skips else "pass" for r in others}
    assert {r: results[r].verdict for r in others} == expected, explain(results)
