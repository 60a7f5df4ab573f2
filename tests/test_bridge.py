"""The MQTT bridge end to end: simulated devices on ptys -> gateway -> a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from firmware_sim import Faults, Fleet, FleetSpec
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.bridge.mqtt import BrokerSettings, MqttConnection
from gateway.config import parse_config
from tests.harness import wait_for
from tests.mqtt_helpers import (
    Client,
    DurableWatcher,
    Mosquitto,
    free_port,
    make_client_certificate,
    tls_mosquitto,
)

P = "mcp/v1/test-gw"


def config_for(tmp_path: Path, mosquitto: Mosquitto, names: list[str], links: Path, **extra):
    ports = extra.pop("ports", {})
    return parse_config({
        "gateway_id": "test-gw",
        "state_dir": str(tmp_path / "state"),
        "stats_interval_s": 0.5,
        "broker": {"url": mosquitto.url, **extra.pop("broker", {})},
        **extra,
        "ports": [{"name": n, "path": str(links / n), "request_timeout_s": 0.3, "retries": 1,
                   **ports} for n in names],
    })


@contextlib.asynccontextmanager
async def stack(tmp_path, mosquitto, spec=None, outputs=(), **extra):
    links = tmp_path / "links"
    spec = replace(spec or FleetSpec(count=2, interval_ms=100), link_dir=links)
    async with Fleet(spec) as fleet:
        config = config_for(tmp_path, mosquitto, [d.name for d in fleet.devices], links, **extra)
        gateway = Gateway(config)
        async with Bridge(gateway, config, outputs=outputs) as bridge, gateway:
            # Requests published before the bridge's SUBACK would reach nobody.
            await wait_for(lambda: bridge.mqtt.subscribed, timeout=10,
                           what="the bridge subscribed to requests")
            yield fleet, gateway, bridge


@pytest.fixture
def client(broker):
    c = Client(broker.port)
    c.subscribe(f"{P}/#")
    c.subscribe("replies/#")
    yield c
    c.close()


async def test_statuses_and_events_reach_the_broker_in_order(tmp_path, broker, client):
    async with stack(tmp_path, broker) as (_fleet, _gateway, _bridge):
        await wait_for(lambda: any(s.get("state") == "online"
                                   for s in client.json_on(f"{P}/status")), what="gw online")
        for name in ("sim-0", "sim-1"):
            await wait_for(lambda n=name: any(
                s["state"] == "online" and s.get("node_id")
                for s in client.json_on(f"{P}/devices/{n}/status")), what=f"{name} online")
        await wait_for(lambda: len(client.on(f"{P}/devices/sim-1/events/status")) >= 10,
                       what="events")
        for name in ("sim-0", "sim-1"):
            # one counter for all of a device's events (the simulator logs on registering)
            seqs = [e["seq"] for e in client.json_on(f"{P}/devices/{name}/events/")]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            first = client.json_on(f"{P}/devices/{name}/events/status")[0]
            assert first["message_type"] == "event"
            assert first["source"] == f"test-gw/{name}"
            assert set(first["payload"]) == {"temperature_c", "humidity_pct", "battery_mv",
                                             "uptime_s"}
        await wait_for(lambda: client.json_on(f"{P}/stats"), what="stats")
        stats = client.json_on(f"{P}/stats")[-1]
        assert stats["devices"]["sim-0"]["rx_frames"] > 0
        assert stats["mqtt"]["connected"] is True
    # clean shutdown: every device and then the gateway offline, retained
    later = Client(broker.port)
    later.subscribe(f"{P}/#")
    await wait_for(lambda: any(m.retain for m in later.on(f"{P}/status")), what="retained")
    assert later.json_on(f"{P}/status")[-1]["state"] == "offline"
    assert later.json_on(f"{P}/devices/sim-0/status")[-1]["reason"] == "gateway_stopped"
    later.close()


async def request(client, topic, body, *, v5=True, correlation=b"\x00\xffcorr"):
    before = len(client.on("replies/"))
    if isinstance(body, bytes):
        client.publish(topic, body, response_topic="replies/a", correlation=correlation)
    elif v5:
        client.publish(topic, json.dumps(body), response_topic="replies/a", correlation=correlation)
    else:
        client.publish(topic, json.dumps({**body, "reply_to": "replies/b",
                                          "correlation_id": "c-31"}))
    await wait_for(lambda: len(client.on("replies/")) > before, what="a response")
    message = client.on("replies/")[before]
    return message, json.loads(message.payload)


async def test_requests_over_mqtt5_and_the_311_envelope(tmp_path, broker, client):
    ports = {"allow": ["read", "ping", "write:name"]}
    async with stack(tmp_path, broker, ports=ports) as (fleet, gateway, _bridge):
        await wait_for(lambda: all(s.node_id for s in gateway.devices.values()), what="online")
        topic = f"{P}/devices/sim-0/requests"
        message, response = await request(client, topic, {"action": "read",
                                                          "payload": {"key": "interval_ms"}})
        assert response["status"] == "ok"
        assert response["payload"] == {"key": "interval_ms", "value": 100, "unit": "ms"}
        assert message.properties.CorrelationData == b"\x00\xffcorr"
        assert response["latency_ms"] > 0

        _, response = await request(client, topic, {"action": "write",
                                                    "payload": {"key": "name", "value": "x1"}},
                                    v5=False)
        assert response["status"] == "ok"
        assert response["correlation_id"] == "c-31"
        assert fleet.devices[0].settings[2] == "x1"
        # a write answers like a read: the key and the value written (and its unit)
        assert response["payload"] == {"key": "name", "value": "x1"}

        _, response = await request(client, topic, {"action": "write",
                                                    "payload": {"key": "interval_ms",
                                                                "value": 500}})
        assert response["status"] == "forbidden"
        _, response = await request(client, topic, {"action": "raw", "payload": {"cmd_id": 48}})
        assert response["status"] == "forbidden"
        _, response = await request(client, topic, {"action": "read", "payload": {"key": "x"}})
        assert response["status"] == "invalid"
        assert "no key 'x'" in response["error"]["message"]
        _, response = await request(client, topic, b"{not json")
        assert response["status"] == "invalid"
        assert "not JSON" in response["error"]["message"]
        _, response = await request(client, f"{P}/devices/nope/requests",
                                    {"action": "ping"})
        assert response["status"] == "unknown_device"
        fleet.devices[1].faults = Faults(drop_rate=1.0)
        _, response = await request(client, f"{P}/devices/sim-1/requests", {"action": "ping"})
        assert response["status"] == "timeout"
        await fleet.devices[1].unplug()
        await wait_for(lambda: str(gateway.device("sim-1").state) == "offline", what="offline")
        _, response = await request(client, f"{P}/devices/sim-1/requests", {"action": "ping"})
        assert response["status"] == "offline"
        _, response = await request(client, f"{P}/requests", {"action": "list_devices"})
        assert set(response["payload"]["devices"]) == {"sim-0", "sim-1"}


async def test_a_broker_outage_loses_no_event(tmp_path, durable_broker):
    # The subscriber's session outlives the restart: what the gateway replays before the
    # subscriber is back waits for it (a plain one missed it, about one run in 13).
    broker = durable_broker
    subscriber = DurableWatcher(broker.port, f"{P}/devices/+/events/#")
    async with stack(tmp_path, broker) as (fleet, gateway, bridge):
        await wait_for(lambda: len(subscriber.on(f"{P}/devices/sim-0/")) >= 5, what="events")
        broker.stop()
        await wait_for(lambda: not bridge.mqtt.connected, what="the bridge to notice")
        await wait_for(lambda: bridge.spool.count >= 20, what="events to queue up")
        broker.start()
        await wait_for(lambda: bridge.mqtt.connected, timeout=15, what="reconnect")
        await wait_for(subscriber.client.is_connected, timeout=15, what="subscriber")
        sent_during = {d.name: d.counters.status_sent for d in fleet.devices}
        await wait_for(lambda: bridge.spool.count == 0, timeout=15, what="the queue to drain")
        await wait_for(lambda: all(
            max((e["seq"] for e in subscriber.json_on(f"{P}/devices/{n}/")), default=0)
            >= gateway.device(n).counters()["rx_frames"] - 50 for n in sent_during),
            what="the subscriber to catch up")
    for name in ("sim-0", "sim-1"):
        seqs = sorted({e["seq"] for e in subscriber.json_on(f"{P}/devices/{name}/")})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a gap in the event seqs"
        assert any(e.get("replayed") for e in subscriber.json_on(f"{P}/devices/{name}/"))
    subscriber.close()


async def test_a_tiny_queue_drops_the_oldest_and_counts_them(tmp_path, broker):
    spec = FleetSpec(count=1, interval_ms=20)
    async with stack(tmp_path, broker, spec=spec, queue={"max_messages": 5}) as (
            _fleet, _gateway, bridge):
        await wait_for(lambda: bridge.mqtt.connected, what="connected")
        broker.stop()
        await wait_for(lambda: bridge.spool.dropped >= 10, what="drops")
        assert bridge.spool.count <= 5
        assert bridge.stats()["mqtt"]["dropped"] == bridge.spool.dropped
        broker.start()


def test_the_last_will_says_offline_when_the_gateway_dies(tmp_path, broker):
    links = tmp_path / "links"
    sim = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "mcp-sim"), "--pty",
                            "--link-dir", str(links)], stdout=subprocess.PIPE, text=True)
    try:
        sim.stdout.readline()
        config = tmp_path / "gw.toml"
        config.write_text(f'gateway_id = "test-gw"\nstate_dir = "{tmp_path / "state"}"\n'
                          f'[broker]\nurl = "{broker.url}"\n'
                          f'[[ports]]\nname = "a"\npath = "{links}/sim-0"\n')
        gw = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "mcp-gateway"),
                               "run", "--config", str(config)], stderr=subprocess.DEVNULL)
        watcher = Client(broker.port)
        watcher.subscribe(f"{P}/status")
        deadline = time.monotonic() + 15
        while not any(json.loads(m.payload)["state"] == "online" for m in watcher.on(P)):
            assert time.monotonic() < deadline, "gateway never came online"
            time.sleep(0.05)
        gw.send_signal(signal.SIGKILL)
        gw.wait(10)
        deadline = time.monotonic() + 60  # the broker notices after 1.5 keepalives at most
        while json.loads(watcher.on(P)[-1].payload)["state"] != "offline":
            assert time.monotonic() < deadline, "no last will"
            time.sleep(0.05)
        watcher.close()
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)


async def test_tls_with_verification_and_a_wrong_host_name_refused(tmp_path):
    tls, certs = tls_mosquitto(tmp_path)
    port = tls.port
    tls.start()
    try:
        good = BrokerSettings(url=f"mqtts://localhost:{port}", ca_file=str(certs["ca"]),
                              client_id="tls-good")
        conn = MqttConnection(good)
        task = asyncio.create_task(conn.run())
        await wait_for(lambda: conn.connected, what="a verified TLS connection")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        wrong = replace(good, url=f"mqtts://127.0.0.1:{port}", client_id="tls-wrong")
        conn = MqttConnection(wrong)
        task = asyncio.create_task(conn.run())
        await wait_for(lambda: conn.last_error, what="a refusal")
        assert not conn.connected
        assert "certificate" in conn.last_error.lower() or "match" in conn.last_error.lower()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        tls.stop()


async def _connects(settings: BrokerSettings) -> tuple[bool, str]:
    """Does a connection with these settings get accepted? (and the last error if not)"""
    conn = MqttConnection(settings)
    task = asyncio.create_task(conn.run())
    try:
        await wait_for(lambda: conn.connected or conn.last_error, what="an answer")
        return conn.connected, conn.last_error
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_client_certificates(tmp_path):
    mutual, certs = tls_mosquitto(tmp_path, "require_certificate true\n")
    port = mutual.port
    cert, key = make_client_certificate(certs, tmp_path)
    mutual.start()
    try:
        config = parse_config({"state_dir": str(tmp_path / "s"), "broker": {
            "url": f"mqtts://localhost:{port}", "ca_file": str(certs["ca"]),
            "cert_file": str(cert), "key_file": str(key), "client_id": "with-cert"}})
        assert await _connects(config.broker) == (True, "")
        without = replace(config.broker, cert_file=None,
                          key_file=None, client_id="without-cert")
        accepted, error = await _connects(without)
        assert not accepted
        assert "certificate" in error.lower() or "before accepting" in error, error
    finally:
        mutual.stop()


async def test_username_and_password_from_a_file_or_the_environment(tmp_path, monkeypatch,
                                                                      caplog):
    secret = "s3cret-Pa55"
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "gw", secret],  # noqa: ASYNC221
                   check=True)
    port = free_port()
    locked = Mosquitto(tmp_path, port=port, extra=(
        f"allow_anonymous false\npassword_file {passwords}\n"))
    locked.start()
    try:
        (tmp_path / "broker-password").write_text(secret + "\n")
        monkeypatch.setenv("GW_BROKER_PASSWORD", secret)
        url = f"mqtt://127.0.0.1:{port}"
        for source in ({"password_file": str(tmp_path / "broker-password")},
                       {"password_env": "GW_BROKER_PASSWORD"}):
            config = parse_config({"state_dir": str(tmp_path / "s"), "broker": {
                "url": url, "username": "gw", **source}})
            settings = config.broker
            assert await _connects(settings) == (True, ""), source
            assert secret not in repr(config) + repr(settings)
        wrong = replace(settings, password="wrong")
        accepted, error = await _connects(wrong)
        assert not accepted
        assert "refused" in error
        assert secret not in caplog.text
    finally:
        locked.stop()


async def test_every_malformed_request_gets_its_own_invalid_over_mqtt(tmp_path, broker, client):
    from tests.test_envelope import MALFORMED  # noqa: PLC0415 - the same table as the parser's

    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=1000),
                     max_request_bytes=65536) as (fleet, _gateway, bridge):
        await wait_for(lambda: bridge.mqtt.connected, what="connected")
        topic = f"{P}/devices/sim-0/requests"
        for raw, message in MALFORMED:
            _, response = await request(client, topic, raw)
            assert response["status"] == "invalid", raw[:40]
            assert message in response["error"]["message"]
        assert bridge.request_server.invalid == len(MALFORMED)
        # and the device was never disturbed
        assert not any(f.cmd_id == 0x10 for f in fleet.devices[0].received)
        _, response = await request(client, topic, {"action": "ping"})
        assert response["status"] == "ok"


def test_a_gateway_killed_during_an_outage_loses_nothing_it_had_queued(tmp_path, broker):
    links = tmp_path / "links"
    binaries = os.path.dirname(sys.executable)
    sim = subprocess.Popen([os.path.join(binaries, "mcp-sim"), "--pty", "--link-dir", str(links),
                            "--interval-ms", "50"], stdout=subprocess.PIPE, text=True)
    subscriber = Client(broker.port, client_id="sub-kill")
    subscriber.client.on_connect = lambda c, *a: c.subscribe(f"{P}/devices/+/events/#", qos=1)
    subscriber.subscribe(f"{P}/devices/+/events/#")
    config = tmp_path / "gw.toml"
    config.write_text(f'gateway_id = "test-gw"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[broker]\nurl = "{broker.url}"\n'
                      f'[[ports]]\nname = "a"\npath = "{links}/sim-0"\n')
    run = [os.path.join(binaries, "mcp-gateway"), "run", "--config", str(config)]

    def wait(predicate, timeout=20.0, what="it"):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
            time.sleep(0.05)

    def seqs():
        return [json.loads(m.payload)["seq"] for m in subscriber.on(f"{P}/devices/a/")]

    try:
        sim.stdout.readline()
        gw = subprocess.Popen(run, stderr=subprocess.DEVNULL)
        wait(lambda: len(seqs()) >= 10, what="events before the outage")
        broker.stop()
        time.sleep(1.0)  # events pile up in the gateway's queue for a second
        gw.send_signal(signal.SIGKILL)
        gw.wait(10)
        broker.start()
        wait(subscriber.client.is_connected, what="the subscriber to reconnect")
        gw = subprocess.Popen(run, stderr=subprocess.DEVNULL)
        queued_max = max(seqs())
        wait(lambda: len(seqs()) and max(seqs()) > queued_max + 20, what="events after restart")
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(10) == 0
        got = sorted(set(seqs()))
        assert got == list(range(got[0], got[-1] + 1)), "events were lost"
        assert any(json.loads(m.payload).get("replayed") for m in subscriber.on(f"{P}/devices/a/"))
    finally:
        subscriber.close()
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)


async def test_trace_shows_the_last_frames_both_ways(tmp_path, broker, client):
    # STATUS once a second: the HELLO stays within the trace's last 64 frames.
    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=1000),
                     gateway_allow=["list_devices", "trace"]) as (_, gateway, _bridge):
        await wait_for(lambda: gateway.device("sim-0").node_id, what="registration")
        _, response = await request(client, f"{P}/requests",
                                    {"action": "trace", "payload": {"device": "sim-0"}})
        assert response["status"] == "ok"
        frames = response["payload"]["frames"]
        assert {f["dir"] for f in frames} == {"rx", "tx"}
        hello = next(f for f in frames if f["cmd"] == "HELLO")
        assert hello["fields"]["model"] == "env-sensor"
        assert hello["hex"].startswith("5a 01")
        assert any(f["cmd"] == "HELLO_ACK" and f["dir"] == "tx" for f in frames)
        _, response = await request(client, f"{P}/requests",
                                    {"action": "trace", "payload": {"device": "zz"}})
        assert response["status"] == "unknown_device"


async def test_prometheus_endpoint_serves_the_stats(tmp_path, broker):
    port = free_port()
    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=50),
                     metrics={"address": port}) as (_, _, bridge):
        await wait_for(lambda: bridge.last_stats and bridge.last_stats["devices"]["sim-0"][
            "rx_frames"] > 0, what="a stats interval")
        loop = asyncio.get_running_loop()
        url = f"http://127.0.0.1:{port}/metrics"
        text = await loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=5)
                                          .read().decode())
        assert 'mcp_device_rx_frames_total{device="sim-0",gateway="test-gw"}' in text
        assert "mcp_mqtt_connected 1.0" in text


async def test_the_bridge_over_mqtt_311(tmp_path, broker, client):
    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=100),
                     broker={"protocol": 3}) as (_, gateway, bridge):
        assert not bridge.mqtt.is_v5
        await wait_for(lambda: gateway.device("sim-0").node_id, what="registration")
        await wait_for(lambda: len(client.on(f"{P}/devices/sim-0/events/status")) >= 3,
                       what="events")
        _, response = await request(client, f"{P}/devices/sim-0/requests",
                                    {"action": "read", "payload": {"key": 3}}, v5=False)
        assert response["status"] == "ok"
        assert response["payload"]["value"] == 4242
        assert response["correlation_id"] == "c-31"


async def test_the_rate_limit_answers_busy(tmp_path, broker, client):
    async with stack(tmp_path, broker, spec=FleetSpec(count=1, interval_ms=1000),
                     ports={"rate_limit": 0.1}) as (_, gateway, _):
        await wait_for(lambda: gateway.device("sim-0").node_id, what="registration")
        statuses = []
        for _ in range(4):  # one request per 10 s, a burst of one: the rest must wait
            _, response = await request(client, f"{P}/devices/sim-0/requests",
                                        {"action": "ping"})
            statuses.append(response["status"])
        assert statuses == ["ok", "busy", "busy", "busy"]


async def test_events_in_flight_respect_the_brokers_receive_maximum(tmp_path):
    # Mosquitto announces max_inflight_messages as MQTT 5 Receive Maximum (its default: 20).
    limited = Mosquitto(tmp_path, extra="max_inflight_messages 8\n")
    limited.start()
    subscriber = Client(limited.port, client_id="sub-limited")
    subscriber.subscribe(f"{P}/devices/+/events/#")
    try:
        async with stack(tmp_path, limited, spec=FleetSpec(count=2, interval_ms=1000)) as (
                fleet, gateway, bridge):
            await wait_for(lambda: bridge.mqtt.connected, what="connected")
            assert bridge.mqtt.receive_maximum == 8
            assert bridge.window == 4  # room left for statuses and responses
            await wait_for(lambda: all(s.node_id for s in gateway.devices.values()),
                           what="registration")
            stop = asyncio.Event()
            floods = [asyncio.create_task(d.flood(stop, batch=16)) for d in fleet.devices]
            await wait_for(lambda: bridge.published >= 3000, timeout=30, what="a flood through")
            stop.set()
            sent = sum(await asyncio.gather(*floods))
            await wait_for(lambda: bridge.published >= sent, timeout=30, what="the rest")
            assert bridge.peak_in_flight <= 4
            await wait_for(lambda: len(subscriber.on(f"{P}/devices/")) >= sent, timeout=30,
                           what="the subscriber to get every event")
        for name in ("sim-0", "sim-1"):
            seqs = [e["seq"] for e in subscriber.json_on(f"{P}/devices/{name}/")]
            assert seqs == list(range(1, len(seqs) + 1)), "events out of order or missing"
    finally:
        subscriber.close()
        limited.stop()


async def test_glob_devices_appear_under_their_uid_ids(tmp_path, broker):
    links = tmp_path / "links"
    config = parse_config({
        "gateway_id": "test-gw", "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker.url},
        "ports": [{"name": "bus", "path": str(links / "sim-*")}]})
    async with Fleet(FleetSpec(count=2, interval_ms=100, link_dir=links)) as fleet:
        gateway = Gateway(config)
        async with Bridge(gateway, config), gateway:
            uid_ids = {f"uid-{d.uid.hex()}" for d in fleet.devices}
            await wait_for(lambda: set(gateway.devices) == uid_ids, what="uid ids")
            late = Client(broker.port, client_id="late")  # sees only what is retained
            late.subscribe(f"{P}/devices/+/status")

            def standing() -> set[str]:
                """Ids whose latest status (retained, or a clear since) is not empty."""
                latest = {m.topic.split("/")[4]: m.payload for m in late.on(P)}
                return {device for device, payload in latest.items() if payload}

            try:
                # The path ids' statuses are cleared (maybe after this client saw them).
                await wait_for(lambda: standing() == uid_ids, timeout=10,
                               what="statuses standing under the uid ids only")
            finally:
                late.close()
            client = Client(broker.port, client_id="asker")
            client.subscribe("replies/#")
            try:
                uid_id = sorted(uid_ids)[0]
                _, response = await request(client, f"{P}/devices/{uid_id}/requests",
                                            {"action": "ping"})
                assert response["status"] == "ok"  # the port's access rules apply
            finally:
                client.close()


def _toml(tmp_path, broker, links, ports: list[dict], url: str | None = None,
          gateway_allow: tuple[str, ...] = ("list_devices", "reload")) -> str:
    lines = [f'gateway_id = "test-gw"\nstate_dir = "{tmp_path / "state"}"\n'
             f"gateway_allow = {json.dumps(list(gateway_allow))}\n",
             f'[broker]\nurl = "{url or broker.url}"\n']
    for port in ports:
        lines.append("[[ports]]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in {"path": str(links / port["name"]),
                                                     **port}.items()))
    return "\n".join(lines)


async def test_reload_over_the_fabric_applies_the_file_or_changes_nothing(tmp_path, broker,
                                                                          client):
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.reload import Reloader  # noqa: PLC0415

    links = tmp_path / "links"
    path = tmp_path / "gateway.toml"
    path.write_text(_toml(tmp_path, broker, links, [{"name": "sim-0"}]))
    config = load_config(path)
    async with Fleet(FleetSpec(count=2, interval_ms=200, link_dir=links)):
        gateway = Gateway(config)
        async with Bridge(gateway, config) as bridge, gateway:
            Reloader(path, gateway, bridge)
            await wait_for(lambda: gateway.device("sim-0").node_id, what="sim-0 registered")
            await wait_for(lambda: bridge.mqtt.subscribed, what="the bridge subscribed")
            _, denied = await request(client, f"{P}/devices/sim-0/requests",
                                      {"action": "write", "payload": {"key": "interval_ms",
                                                                      "value": 500}})
            assert denied["status"] == "forbidden"
            # Add a port, open up writes on the other, move the broker (a restart's job).
            path.write_text(_toml(tmp_path, broker, links, [
                {"name": "sim-0", "allow": ["read", "ping", "write"]}, {"name": "sim-1"}],
                url="mqtt://127.0.0.1:1"))
            _, done = await request(client, f"{P}/requests", {"action": "reload"})
            assert done["status"] == "ok", done
            assert done["payload"] == {"added": ["sim-1"], "removed": [], "restarted": [],
                                       "updated": ["sim-0"], "needs_restart": ["broker"]}
            await wait_for(lambda: any(s.get("state") == "online" for s in client.json_on(
                f"{P}/devices/sim-1/status")), what="the added port's device online")
            _, written = await request(client, f"{P}/devices/sim-0/requests",
                                       {"action": "write", "payload": {"key": "interval_ms",
                                                                       "value": 500}})
            assert written["status"] == "ok", written
            # A broken file changes nothing and says every error.
            path.write_text('gateway_id = "test-gw"\n[[ports]]\nname = "x"\nbaudrate = 7\n')
            _, broken = await request(client, f"{P}/requests", {"action": "reload"})
            assert broken["status"] == "invalid"
            assert "ports[0].path" in broken["error"]["message"]
            assert "ports[0].baudrate" in broken["error"]["message"]
            assert set(gateway.devices) == {"sim-0", "sim-1"}
            # Removing a port takes its device off, with the reason on the fabric.
            path.write_text(_toml(tmp_path, broker, links, [{"name": "sim-0"}]))
            _, removed = await request(client, f"{P}/requests", {"action": "reload"})
            assert removed["payload"]["removed"] == ["sim-1"]
            def removed_then_cleared() -> bool:
                bodies = [m.payload for m in client.on(f"{P}/devices/sim-1/status")]
                return bodies[-1:] == [b""] and json.loads(bodies[-2])["reason"] == "removed"

            await wait_for(removed_then_cleared, what="sim-1 offline, removed, then cleared")
            assert set(gateway.devices) == {"sim-0"}
            assert bridge.mqtt.connected  # the broker change waits for a restart
            # Any other port setting restarts the port; the device comes back.
            path.write_text(_toml(tmp_path, broker, links, [{"name": "sim-0",
                                                             "heartbeat_s": 2.0}]))
            seen = len(client.json_on(f"{P}/devices/sim-0/status"))
            _, restarted = await request(client, f"{P}/requests", {"action": "reload"})
            assert restarted["payload"]["restarted"] == ["sim-0"]

            def restarted_and_back() -> bool:
                after = client.json_on(f"{P}/devices/sim-0/status")[seen:]
                return "reconfigured" in [s["reason"] for s in after] and \
                    after[-1]["state"] == "online"

            await wait_for(restarted_and_back, what="sim-0 offline (reconfigured), then online")


async def test_a_commit_delay_writes_only_what_the_broker_has_not_acknowledged(tmp_path,
                                                                            broker):
    async with stack(tmp_path, broker, spec=FleetSpec(count=2, interval_ms=20),
                     queue={"commit_delay_ms": 300}) as (_, _gateway, bridge):
        await wait_for(lambda: bridge.published >= 100, what="events through")
        assert bridge.spool.written < bridge.published / 4  # acked long before their commit
        broker.stop()
        await wait_for(lambda: not bridge.mqtt.connected, what="the outage")
        written = bridge.spool.written
        await wait_for(lambda: bridge.spool.written >= written + 20, what="the outage's events "
                       "on disk within the delay")
        broker.start()
        await wait_for(lambda: bridge.spool.count == 0, timeout=15, what="the queue to drain")
