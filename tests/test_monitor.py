"""``mcp-gateway monitor`` and the gateway never share a port: the monitor opens ports
exclusively, as the gateway does, and refuses one the gateway holds instead of taking its
frames (a tty hands each byte to one reader; issue 12, item 2)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
import serial

from firmware_sim import FleetSpec
from tests.harness import fleet_and_gateway, is_state, is_telemetry, next_event, wait_for

BIN = Path(sys.executable).parent


async def test_the_monitor_refuses_a_port_the_gateway_holds(tmp_path):
    async with fleet_and_gateway(tmp_path, FleetSpec(count=1, interval_ms=50)) as (
            _fleet, gateway, events):
        await next_event(events, is_state("sim-0", "online"), timeout=10)
        await next_event(events, is_telemetry("sim-0"), timeout=5)
        received = gateway.device("sim-0").counters()["rx_frames"]
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "mcp-gateway"), "monitor", str(tmp_path / "links" / "sim-0"), "--passive",
            "--duration", "15", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1, err.decode()
        assert time.monotonic() - started < 10  # refused at once, not after --duration
        assert out == b""  # not one frame taken from the gateway
        message = err.decode()
        assert "is held by another program (the gateway?)" in message
        assert "mcp-gateway request GATEWAY - trace '{\"device\": \"DEVICE\"}'" in message
        assert "Traceback" not in message
        # The gateway kept its port and its frames.
        await wait_for(lambda: gateway.device("sim-0").counters()["rx_frames"] > received + 5,
                       what="more frames at the gateway")
        assert str(gateway.device("sim-0").state) == "online"


async def test_a_watched_port_is_locked_against_the_gateway(tmp_path):
    """The lock goes both ways: while the monitor has a port, an exclusive open (the
    gateway's) fails, so the two never split a port's bytes."""
    links = tmp_path / "links"
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "mcp-sim"), "--pty", "--count", "1", "--link-dir", str(links),
        "--interval-ms", "50", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    monitor = None
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 15)
        monitor = await asyncio.create_subprocess_exec(
            str(BIN / "mcp-gateway"), "monitor", str(links / "sim-0"), "--passive",
            "--duration", "20", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert monitor.stdout is not None
        opened = await asyncio.wait_for(monitor.stdout.readline(), 15)
        assert b'"port_open"' in opened
        with pytest.raises(serial.SerialException, match="Could not exclusively lock"):
            serial.Serial(str(links / "sim-0"), exclusive=True)
    finally:
        for child in (monitor, proc):
            if child is not None and child.returncode is None:
                child.terminate()
                await child.wait()
