"""The SDK's env-sensor firmware behind the real gateway and a real Mosquitto: as a posix
program, under QEMU and under simavr. It registers, its STATUS values arrive on MQTT as the
firmware computes them, requests over MQTT round-trip, a killed and restarted emulator comes
back; and on ms720, through a line that corrupts 5 % of the bytes both ways, every STATUS
arrives exactly once and in order."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.config import parse_config
from tests.harness import wait_for
from tests.mqtt_helpers import Client, Mosquitto
from tests.noisy_relay import NoisyRelay
from tests.sdk_firmware import Firmware

pytestmark = pytest.mark.timeout(240)
P = "mcp/v1/test-gw"
NAME = "sensor"
DEVICE = f"{P}/devices/{NAME}"
TARGETS = ["posix", "qemu", "simavr"]


def expected_status(uptime_s: int) -> dict:
    """What env-sensor's STATUS says at ``uptime_s`` (examples/env-sensor/main.c)."""
    def triangle(step: int, span: int) -> int:
        at = step % (2 * span)
        return at if at < span else 2 * span - at
    return {"temperature_c": round((2000 + 5 * triangle(uptime_s, 60)) * 0.01, 2),
            "humidity_pct": round((4500 + 20 * triangle(uptime_s, 50)) * 0.01, 2),
            "battery_mv": 3300 - min(uptime_s // 60, 400), "uptime_s": uptime_s}


@contextlib.asynccontextmanager
async def gateway_on(tmp_path: Path, broker: Mosquitto, path: str, frames: str,
                     **port: object) -> AsyncIterator[Gateway]:
    config = parse_config({
        "gateway_id": "test-gw", "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker.url},
        "ports": [{"name": NAME, "path": path, "frames": frames, "profile": "env-sensor",
                   "request_timeout_s": 1.0, "allow": ["read", "ping", "write"], **port}],
    })
    gateway = Gateway(config)
    async with Bridge(gateway, config) as bridge, gateway:
        await wait_for(lambda: bridge.mqtt.subscribed, timeout=10, what="the bridge subscribed")
        yield gateway


def statuses(client: Client) -> list[dict]:
    return [e["payload"] for e in client.json_on(f"{DEVICE}/events/status")]


def online_with_node(client: Client) -> list[dict]:
    return [s for s in client.json_on(f"{DEVICE}/status")
            if s.get("state") == "online" and s.get("node_id")]


async def ask(client: Client, body: dict, timeout: float = 10.0) -> dict:
    before = len(client.on("replies/"))
    client.publish(f"{DEVICE}/requests", json.dumps(body), response_topic="replies/e2e",
                   correlation=b"e2e")
    await wait_for(lambda: len(client.on("replies/")) > before, timeout=timeout,
                   what=f"an answer to {body}")
    return json.loads(client.on("replies/")[before].payload)


@pytest.fixture
def client(broker):
    c = Client(broker.port)
    c.subscribe(f"{P}/#")
    c.subscribe("replies/#")
    yield c
    c.close()


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
@pytest.mark.parametrize("target", TARGETS)
async def test_registers_reports_answers_and_comes_back_after_a_restart(
        tmp_path, broker, client, target, frames):
    async with Firmware(target, frames, tmp_path / "links" / NAME) as firmware, \
            gateway_on(tmp_path, broker, firmware.path, frames) as gateway:
        await wait_for(lambda: online_with_node(client), timeout=15, what="registered")
        node_id = online_with_node(client)[-1]["node_id"]
        await wait_for(lambda: len(statuses(client)) >= 2, timeout=10, what="STATUS events")
        for status in statuses(client):
            assert status == expected_status(status["uptime_s"]), firmware.output

        assert (await ask(client, {"action": "ping"}))["status"] == "ok"
        read = await ask(client, {"action": "read", "payload": {"key": "fw_build"}})
        assert (read["status"], read["payload"]["value"]) == ("ok", 4242)
        written = await ask(client, {"action": "write",
                                     "payload": {"key": "name", "value": "kitchen"}})
        assert written["status"] == "ok", written
        read = await ask(client, {"action": "read", "payload": {"key": "name"}})
        assert read["payload"]["value"] == "kitchen"
        denied = await ask(client, {"action": "write",
                                    "payload": {"key": "fw_build", "value": 1}})
        assert denied["status"] != "ok", denied
        print(denied)

        # Unplugged: the emulator (or program) killed, and started again on a new pty.
        await firmware.stop()
        await wait_for(lambda: str(gateway.device(NAME).state) == "offline", timeout=15,
                       what="offline after the kill")
        seen = len(statuses(client))
        await firmware.start()
        await wait_for(lambda: len(statuses(client)) > seen + 1, timeout=20,
                       what="STATUS again after the restart")
        assert online_with_node(client)[-1]["node_id"] == node_id  # the same uid, the same id
        read = await ask(client, {"action": "read", "payload": {"key": "name"}})
        assert read["payload"]["value"] == "env-sensor"  # a reboot: the default again


@pytest.mark.parametrize("target", TARGETS)
async def test_ms720_through_a_line_corrupting_5_percent_of_bytes_loses_no_status(
        tmp_path, broker, client, target):
    count = 12
    async with Firmware(target, "ms720", tmp_path / "fw", variant="noisy") as firmware, \
            NoisyRelay(firmware.path, tmp_path / "links" / NAME, rate=0.05) as relay, \
            gateway_on(tmp_path, broker, str(tmp_path / "links" / NAME), "ms720",
                       link_retries=40):
        await wait_for(lambda: len(statuses(client)) >= count, timeout=60,
                       what=f"{count} STATUS events through the noise")
    uptimes = [s["uptime_s"] for s in statuses(client)]
    # One STATUS a second, the k-th at uptime k: each exactly once, in order.
    assert uptimes == list(range(uptimes[0], uptimes[0] + len(uptimes))), uptimes
    for status in statuses(client):
        assert status == expected_status(status["uptime_s"])
    assert relay.corrupted["to_gateway"] > 0.03 * relay.passed["to_gateway"], relay.corrupted
    assert relay.corrupted["to_device"] > 0.03 * relay.passed["to_device"], relay.corrupted


@pytest.mark.parametrize("target", ["posix", "simavr"])
async def test_a_reset_while_the_gateway_keeps_the_line_open_is_a_new_ms720_sequence(
        tmp_path, broker, client, target):
    """An Uno's USB bridge keeps the tty open while the chip resets: the gateway's link sees
    the device's seqs start over without a reopen. The firmware's first seq differs from
    boot to boot (posix: time and pid; the ATmega328P: a boot counter in EEPROM x 2^20),
    so the gateway takes them as a new sequence, not as duplicates of the old one.
    (QEMU's lm3s6965 has no entropy nor non-volatile memory the port could use: its first
    seq is a constant, see device-sdk/README.md.)"""
    async with Firmware(target, "ms720", tmp_path / "fw") as firmware, \
            NoisyRelay(firmware.path, tmp_path / "links" / NAME, rate=0.0) as relay, \
            gateway_on(tmp_path, broker, str(tmp_path / "links" / NAME), "ms720"):
        await wait_for(lambda: len(statuses(client)) >= 2, timeout=20, what="STATUS")
        seen = len(statuses(client))
        await firmware.restart()  # the reset; the gateway's port stays open
        relay.attach(firmware.emulator.path)
        await wait_for(lambda: any(s["uptime_s"] <= 2 for s in statuses(client)[seen:]),
                       timeout=15, what="the rebooted device's STATUS")
    after = [s["uptime_s"] for s in statuses(client)[seen:]]
    reboot = next(i for i, uptime in enumerate(after) if uptime <= 2)
    assert after[reboot:] == list(range(after[reboot], after[reboot] + len(after) - reboot))
