"""An unplug storm (a loose cable, a device rebooting in a loop) is logged once, then
counted, then once when it is over: not three lines per unplug (issue 13, log floods; the
adversarial bench logged 713 WARNING lines for 713 unplugs)."""

from __future__ import annotations

import logging

from firmware_sim import FleetSpec
from gateway.session import DeviceState
from tests.harness import fleet_and_gateway, wait_for

UNPLUGS = 12


async def test_an_unplug_storm_is_a_few_lines_not_one_per_unplug(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, "gateway.ports")
    async with fleet_and_gateway(tmp_path, FleetSpec(count=1, interval_ms=1000),
                                 heartbeat_s=5) as (fleet, gateway, _):
        device, session = fleet.devices[0], gateway.device("sim-0")
        await wait_for(lambda: session.state is DeviceState.ONLINE, timeout=10, what="online")
        for number in range(UNPLUGS):
            opens = gateway.runners["sim-0"].opens
            await device.unplug()
            await wait_for(lambda: session.state is DeviceState.OFFLINE, timeout=10,
                           what=f"offline after unplug {number}")
            await device.replug()
            await wait_for(lambda opens=opens: gateway.runners["sim-0"].opens > opens
                           and session.state is DeviceState.ONLINE, timeout=10,
                           what=f"online after replug {number}")
    ports = [r for r in caplog.records if r.name == "gateway.ports"]
    loud = [r.getMessage() for r in ports if r.levelno >= logging.INFO]
    # The first loss and its reopen are said; the rest are counted (a summary at most every
    # 10 s; this storm takes a few seconds).
    assert len(loud) <= 6, loud
    assert sum("lost its port" in line for line in loud) >= 1
    # Nothing is hidden: every loss is in the debug lines or counted.
    assert sum("opened" in r.getMessage() for r in ports) >= UNPLUGS
