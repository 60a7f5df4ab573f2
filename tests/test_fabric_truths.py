"""The fabric tells the truth (issue 12, "the fabric's small lies"): what ``replayed`` means,
each status published and each state change logged once, retained statuses that follow
the devices (never undone by a stale copy, cleared when a device is removed), ``invalid``
before ``forbidden``, and Prometheus series that follow state changes and telemetry.

Everything runs through the real parts: simulated devices on ptys, the gateway, a real
Mosquitto, ``mcp-gateway run`` as a subprocess, real scrapes of ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from firmware_sim import Fleet, FleetSpec
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.bridge.metrics import status_units
from gateway.config import load_config
from gateway.frames.profiles import parse_profile
from gateway.reload import Reloader
from tests.harness import wait_for
from tests.mqtt_helpers import Client, Mosquitto, free_port
from tests.test_bridge import P, _toml, config_for, request, stack
from tests.test_cli_run import Lines

BIN = os.path.dirname(sys.executable)


def _set_password(passwords: Path, password: str) -> None:
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "gw", password],
                   check=True)


def _events(subscriber: Client, device: str = "sim-0") -> list[dict]:
    return subscriber.json_on(f"{P}/devices/{device}/events/")


async def test_replayed_means_waited_out_an_outage_not_the_first_connection(tmp_path,
                                                                          monkeypatch):
    """fabric.md, envelope ``replayed``: true when the event waited in the on-disk queue
    through a broker outage, not merely until the first connection after start. The broker
    refuses the gateway (wrong password) while it lets the subscriber in, so the subscriber
    is surely listening when the gateway's queue drains."""
    passwords = tmp_path / "passwd"
    _set_password(passwords, "not-yet")
    broker = Mosquitto(tmp_path, extra=f"password_file {passwords}\n")
    broker.start()
    monkeypatch.setenv("GW_TEST_PASSWORD", "s3cret")
    subscriber = Client(broker.port, client_id="sub-replayed")  # anonymous: let in
    subscriber.client.on_connect = lambda c, *a: c.subscribe(f"{P}/devices/+/events/#", qos=1)
    subscriber.subscribe(f"{P}/devices/+/events/#")
    links = tmp_path / "links"
    try:
        async with Fleet(FleetSpec(count=1, interval_ms=50, link_dir=links)):
            config = config_for(tmp_path, broker, ["sim-0"], links, broker={
                "username": "gw", "password_env": "GW_TEST_PASSWORD"})
            gateway = Gateway(config)
            async with Bridge(gateway, config) as bridge, gateway:
                await wait_for(lambda: "refused" in bridge.mqtt.last_error, what="a refusal")
                await wait_for(lambda: bridge.spool.count >= 5, what="events queued before "
                               "the first connection")
                _set_password(passwords, "s3cret")
                broker.proc.send_signal(signal.SIGHUP)  # mosquitto re-reads its passwords
                await wait_for(lambda: bridge.mqtt.connected, timeout=20, what="connected")
                await wait_for(lambda: len(_events(subscriber)) >= 10, what="events")
                first = _events(subscriber)
                assert first[0]["seq"] == 1
                assert not [e["seq"] for e in first if e.get("replayed")], \
                    "events that only waited for the first connection are marked replayed"

                # An outage: the broker comes back refusing the gateway again, the
                # subscriber reconnects, and only then does the gateway's queue drain.
                _set_password(passwords, "not-again")
                broker.stop()
                await wait_for(lambda: not bridge.mqtt.connected, what="the outage")
                before = len(_events(subscriber))
                spooled = bridge.spool.count
                await wait_for(lambda: bridge.spool.count >= spooled + 5, what="events queued "
                               "during the outage")
                broker.start()
                await wait_for(subscriber.client.is_connected, timeout=15, what="subscriber")
                await wait_for(lambda: "refused" in bridge.mqtt.last_error, timeout=15,
                               what="the gateway refused again")
                subscriber.subscribe(f"{P}/devices/+/events/#")
                _set_password(passwords, "s3cret")
                broker.proc.send_signal(signal.SIGHUP)
                await wait_for(lambda: bridge.mqtt.connected, timeout=20, what="reconnected")
                await wait_for(lambda: [e for e in _events(subscriber)[before:]
                                        if not e.get("replayed")], what="live events again")
    finally:
        subscriber.close()
        broker.stop()
    after = [bool(e.get("replayed")) for e in _events(subscriber)[before:]]
    waited = after.index(False)
    assert waited >= 5, "the events queued during the outage are not marked replayed"
    assert not any(after[waited:]), "an event sent live after the outage is marked replayed"


def _wait(predicate, timeout: float = 20.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def test_run_publishes_each_gateway_status_once_and_logs_each_state_change_once(tmp_path,
                                                                               broker):
    """One retained ``online`` at start, one ``offline`` at a clean stop (the DISCONNECT
    reaches the broker, so it does not publish the will as well), and one log line per
    device state change (the session's and the service's used to say it twice)."""
    links = tmp_path / "links"
    sim = subprocess.Popen([os.path.join(BIN, "mcp-sim"), "--pty", "--link-dir", str(links)],
                           stdout=subprocess.PIPE, text=True)
    watcher = Client(broker.port, client_id="watcher")
    watcher.subscribe(f"{P}/status")
    watcher.subscribe(f"{P}/devices/a/status")
    watcher.subscribe("marker/#")
    config = tmp_path / "gw.toml"
    config.write_text(f'gateway_id = "test-gw"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[broker]\nurl = "{broker.url}"\n'
                      f'[[ports]]\nname = "a"\npath = "{links}/sim-0"\n')
    try:
        sim.stdout.readline()
        gw = subprocess.Popen([os.path.join(BIN, "mcp-gateway"), "run", "--config",
                               str(config)], stderr=subprocess.PIPE, text=True)
        try:
            lines = Lines(gw.stderr)
            seen = lines.until("ready: ")
            _wait(lambda: any(json.loads(m.payload)["state"] == "online"
                              for m in watcher.on(f"{P}/devices/a/status")), what="a online")
            gw.send_signal(signal.SIGTERM)
            rest = lines.rest()
            assert gw.wait(10) == 0
        finally:
            gw.kill()
            gw.wait()
        # Whatever the broker does about the closed connection, it does before this marker.
        watcher.publish("marker/stop", b"1")
        _wait(lambda: watcher.on("marker/"), what="the marker")
        states = [json.loads(m.payload)["state"] for m in watcher.on(f"{P}/status")]
        assert states == ["online", "offline"]
        log = "".join(seen) + rest
        for change in ("unregistered (port_open)", "online (registered)",
                       "offline (gateway_stopped)"):
            assert log.count(change) == 1, (change, log)
        assert "a is online (registered) {" in log  # the line keeps the device's facts
    finally:
        watcher.close()
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)


def _retained(port: int, topic: str, client_id: str) -> list[bytes]:
    """What a new subscriber gets on ``topic`` (a filter: retained messages, plus anything
    published right then), up to a marker it publishes itself."""
    late = Client(port, client_id=client_id)
    try:
        late.subscribe(topic)
        late.subscribe(f"marker/{client_id}")
        late.publish(f"marker/{client_id}", b"1")
        _wait(lambda: late.on(f"marker/{client_id}"), what="the marker")
        return [m.payload for m in late.on("") if not m.topic.startswith("marker/")]
    finally:
        late.close()


async def test_a_status_left_unacknowledged_by_a_lost_connection_never_undoes_a_newer_one(
        tmp_path, broker):
    """A device's retained status holds its current state: a status the broker never
    acknowledged (it froze, then died) was sent again by paho on the next connection,
    after the fresh one, so the device stayed 'offline' on the fabric while online."""
    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=200)) as (
            fleet, gateway, bridge):
        await wait_for(lambda: gateway.device("sim-0").node_id, what="registration")
        broker.proc.send_signal(signal.SIGSTOP)  # accepts bytes, acknowledges nothing
        await fleet.devices[0].unplug()
        await wait_for(lambda: str(gateway.device("sim-0").state) == "offline",
                       what="offline, published but not acknowledged")
        broker.proc.kill()
        broker.proc.wait(10)
        broker.proc = None
        await wait_for(lambda: not bridge.mqtt.connected, what="the lost connection")
        await fleet.devices[0].replug()
        await wait_for(lambda: str(gateway.device("sim-0").state) == "online", timeout=10,
                       what="online again during the outage")
        broker.start()
        await wait_for(lambda: bridge.mqtt.connected, timeout=15, what="reconnected")
        topic = f"{P}/devices/sim-0/status"
        # paho's own record of unacknowledged publishes: empty once everything the new
        # connection sent (fresh statuses, and a stale copy if one were resent) is acked.
        await wait_for(lambda: not bridge.mqtt._client._out_messages, what="the statuses "
                       "of the new connection acknowledged")
        loop = asyncio.get_running_loop()
        retained = await loop.run_in_executor(None, _retained, broker.port, topic, "late")
        assert [json.loads(b)["state"] for b in retained] == ["online"]


async def test_a_device_removed_during_an_outage_is_cleared_when_the_broker_returns(
        tmp_path, broker):
    """fabric.md: a device removed from the configuration goes offline (removed), then its
    retained status is cleared once the broker has acknowledged that; removed while the
    broker is away, it is cleared when the connection returns (it used to be republished,
    retained, on every connection)."""
    links = tmp_path / "links"
    path = tmp_path / "gateway.toml"
    path.write_text(_toml(tmp_path, broker, links, [{"name": "sim-0"}, {"name": "sim-1"}]))
    config = load_config(path)
    async with Fleet(FleetSpec(count=2, interval_ms=200, link_dir=links)):
        gateway = Gateway(config)
        async with Bridge(gateway, config) as bridge, gateway:
            reloader = Reloader(path, gateway, bridge)
            await wait_for(lambda: all(s.node_id for s in gateway.devices.values()),
                           what="both registered")
            broker.stop()
            await wait_for(lambda: not bridge.mqtt.connected, what="the outage")
            path.write_text(_toml(tmp_path, broker, links, [{"name": "sim-0"}]))
            assert (await reloader.reload()).removed == ["sim-1"]
            broker.start()  # no persistence: it knows nothing retained until the gateway says
            await wait_for(lambda: bridge.mqtt.connected, timeout=15, what="reconnected")
            loop = asyncio.get_running_loop()

            def sim_1_cleared() -> bool:
                """sim-0's status is back on the broker and sim-1 has none."""
                bodies = [json.loads(b) for b in _retained(
                    broker.port, f"{P}/devices/+/status", f"late-{time.monotonic_ns()}") if b]
                sim_0 = [b["state"] for b in bodies if b["port"].endswith("sim-0")]
                sim_1 = [b["reason"] for b in bodies if b["port"].endswith("sim-1")]
                assert set(sim_1) <= {"removed"}, sim_1
                return sim_0 == ["online"] and not sim_1

            deadline = loop.time() + 10
            while not await loop.run_in_executor(None, sim_1_cleared):
                assert loop.time() < deadline, "sim-1's retained status was never cleared"
            assert not bridge.statuses.retiring


async def test_unknown_actions_keys_and_values_are_invalid_whatever_allow_says(tmp_path,
                                                                            broker):
    """fabric.md, response status: ``invalid`` for an unknown action/key/value whatever the
    allow list says; ``forbidden`` only for a known action the configuration does not allow."""
    client = Client(broker.port, client_id="asker")
    client.subscribe("replies/#")
    try:
        async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=1000),
                         ports={"allow": ["ping"]}) as (_, gateway, bridge):
            await wait_for(lambda: gateway.device("sim-0").node_id, what="registration")
            topic = f"{P}/devices/sim-0/requests"
            cases = [
                ({"action": "reboot"}, "invalid", "unknown action 'reboot'"),
                ({"action": "read", "payload": {"key": "nosuch"}}, "invalid", "no key"),
                ({"action": "write", "payload": {"key": "interval_ms", "value": 5}},
                 "invalid", "interval_ms"),
                ({"action": "write", "payload": {"key": "interval_ms", "value": 500}},
                 "forbidden", "not allowed"),
                ({"action": "read", "payload": {"key": 1}}, "forbidden", "'interval_ms'"),
                ({"action": "ping"}, "ok", None),
            ]
            for body, status, text in cases:
                _, response = await request(client, topic, body)
                assert response["status"] == status, (body, response)
                if text is not None:
                    assert text in response["error"]["message"], (body, response)
            assert bridge.request_server.invalid == 3
    finally:
        client.close()


async def _scrape(port: int) -> dict[str, list]:
    loop = asyncio.get_running_loop()
    url = f"http://127.0.0.1:{port}/metrics"
    text = await loop.run_in_executor(
        None, lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


async def test_prometheus_follows_state_changes_at_once_and_exports_status_fields(tmp_path,
                                                                               broker):
    """One ``mcp_device_online`` series per device (0/1) and an enum-style
    ``mcp_device_state`` (a series per known state, 1 for the current one), both refreshed
    when the state changes (the stats interval here is a minute); ``mcp_telemetry`` holds the
    latest numeric STATUS fields with their units, as events arrive."""
    port = free_port()
    spec = FleetSpec(count=1, interval_ms=100)
    async with stack(tmp_path, broker, spec=spec, stats_interval_s=60.0,
                     metrics={"address": port}) as (fleet, gateway, _):
        await wait_for(lambda: str(gateway.device("sim-0").state) == "online", what="online")

        async def states() -> dict[str, float]:
            metrics = await _scrape(port)
            online = [s for s in metrics.get("mcp_device_online", [])
                      if s.labels["device"] == "sim-0"]
            assert [s.labels for s in online] in ([], [{"gateway": "test-gw",
                                                        "device": "sim-0"}])
            found = {s.labels["state"]: s.value for s in metrics.get("mcp_device_state", [])
                     if s.labels["device"] == "sim-0"}
            if online:
                found["online-gauge"] = online[0].value
            return found

        deadline = asyncio.get_running_loop().time() + 5
        while (found := await states()).get("online") != 1.0:
            assert asyncio.get_running_loop().time() < deadline, found
        assert found == {"connecting": 0.0, "unregistered": 0.0, "online": 1.0,
                         "offline": 0.0, "online-gauge": 1.0}

        # Telemetry: the latest numeric STATUS fields, with units, updated as events come.
        uptimes = []
        deadline = asyncio.get_running_loop().time() + 5
        while len(set(uptimes)) < 2:
            assert asyncio.get_running_loop().time() < deadline, uptimes
            telemetry = {s.labels["field"]: s for s in (await _scrape(port))["mcp_telemetry"]
                         if s.labels["device"] == "sim-0"}
            assert {f: s.labels["unit"] for f, s in telemetry.items()} == {
                "temperature_c": "°C", "humidity_pct": "%", "battery_mv": "mV",
                "uptime_s": "s"}
            assert 15.0 <= telemetry["temperature_c"].value <= 30.0
            uptimes.append(telemetry["uptime_s"].value)

        await fleet.devices[0].unplug()
        await wait_for(lambda: str(gateway.device("sim-0").state) == "offline",
                       what="offline")
        deadline = asyncio.get_running_loop().time() + 5
        while (found := await states()).get("offline") != 1.0:
            assert asyncio.get_running_loop().time() < deadline, found
        assert found == {"connecting": 0.0, "unregistered": 0.0, "online": 0.0,
                         "offline": 1.0, "online-gauge": 0.0}


def test_telemetry_gauges_are_the_numeric_status_fields_only():
    """Bools, text and bytes are no gauge; a field without a unit has unit ''."""
    profile = parse_profile({"name": "mixed", "events": [{"id": 0x20, "name": "status",
                                                          "fields": [
        {"name": "level", "type": "u8"}, {"name": "open", "type": "bool"},
        {"name": "volts", "type": "f32", "unit": "V"}, {"name": "tag", "type": "utf8"}]}]})
    assert status_units(profile) == {"level": "", "volts": "V"}
    assert status_units(replace(profile, events={})) == {}
