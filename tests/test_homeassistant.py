"""Home Assistant MQTT discovery: the configs built from profiles, and the discovery job on a
real Mosquitto with simulated devices, read the way Home Assistant reads them (JSON configs,
Jinja templates evaluated with jinja2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import jinja2
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim import Fleet, FleetSpec
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.bridge.homeassistant import (
    device_class_of,
    discovery_configs,
    gateway_configs,
    node_id,
    readable,
    state_class_of,
)
from gateway.bridge.topics import Topics
from gateway.config import load_config
from gateway.frames import ProfileRegistry
from gateway.frames.profiles import FIELD_TYPES, FieldSpec, parse_profile
from gateway.reload import Reloader
from tests.harness import wait_for
from tests.mqtt_helpers import Client, Mosquitto
from tests.test_bridge import request

BIN = Path(sys.executable).parent
P = "mcp/v1/test-gw"
HA = "homeassistant"
TOPICS = Topics("mcp/v1", "test-gw")
COMPONENTS = ("sensor", "binary_sensor", "number", "switch", "text", "button")
CONFIG_TOPIC = re.compile(rf"{HA}/({'|'.join(COMPONENTS)})/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config")
FACTS = {"port": "sim-0", "profile": "env-sensor", "uid": "0102030405060708", "fw": "1.2.3",
         "model": "env-sensor"}
ENV = jinja2.Environment(undefined=jinja2.StrictUndefined)


def render(template: str, body: bytes | str) -> str:
    """A value template as Home Assistant evaluates it on a message's body."""
    return ENV.from_string(template).render(value_json=json.loads(body))


def available(config: dict[str, Any], retained: dict[str, bytes]) -> bool:
    """Home Assistant's availability of an entity under ``availability_mode: all``, from the
    retained messages on its availability topics."""
    assert config["availability_mode"] == "all"
    return all(render(a["value_template"], retained[a["topic"]]) == config["payload_available"]
               for a in config["availability"])


def env_configs(device_id: str = "sim-0", facts: dict[str, Any] = FACTS) -> dict[str, dict]:
    profile = ProfileRegistry().get("env-sensor")
    return discovery_configs(profile, device_id, facts, TOPICS, HA)


# ---------------------------------------------------------------------------------------
# The config builder


def test_env_sensor_configs_name_our_topics_with_full_keys():
    configs = env_configs()
    node = "test-gw_sim-0"
    assert set(configs) == {
        f"{HA}/sensor/{node}/status_temperature_c/config",
        f"{HA}/sensor/{node}/status_humidity_pct/config",
        f"{HA}/sensor/{node}/status_battery_mv/config",
        f"{HA}/sensor/{node}/status_uptime_s/config",
        f"{HA}/number/{node}/key_interval_ms/config",
        f"{HA}/text/{node}/key_name/config",
        f"{HA}/button/{node}/ping/config",
        f"{HA}/sensor/{node}/stats_rx_fps/config",
        f"{HA}/sensor/{node}/stats_checksum_errors/config",
    }
    temperature = configs[f"{HA}/sensor/{node}/status_temperature_c/config"]
    assert temperature["state_topic"] == f"{P}/devices/sim-0/events/status"
    assert temperature["value_template"] == "{{ value_json.payload.temperature_c }}"
    assert (temperature["unit_of_measurement"], temperature["device_class"],
            temperature["state_class"]) == ("°C", "temperature", "measurement")
    assert temperature["name"] == "Temperature"
    assert temperature["unique_id"] == "test-gw_sim-0_status_temperature_c"
    assert temperature["default_entity_id"] == "sensor.test_gw_sim_0_temperature_c"
    assert temperature["device"] == {"identifiers": ["0102030405060708"], "name": "sim-0",
                                     "model": "env-sensor", "sw_version": "1.2.3",
                                     "via_device": "mcp-gateway_test-gw"}
    assert temperature["availability"] == [
        {"topic": f"{P}/status",
         "value_template": "{{ 'offline' if value_json.state == 'offline' else 'online' }}"},
        {"topic": f"{P}/devices/sim-0/status",
         "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}"}]
    interval = configs[f"{HA}/number/{node}/key_interval_ms/config"]
    assert interval["command_topic"] == f"{P}/devices/sim-0/set/interval_ms"
    assert (interval["min"], interval["max"], interval["step"]) == (10, 3600000, 1)
    assert "state_topic" not in interval  # optimistic: the gateway keeps no key values
    name = configs[f"{HA}/text/{node}/key_name/config"]
    assert (name["command_topic"], name["max"]) == (f"{P}/devices/sim-0/set/name", 32)
    ping = configs[f"{HA}/button/{node}/ping/config"]
    assert (ping["command_topic"], ping["payload_press"]) == (f"{P}/devices/sim-0/press/ping",
                                                              "PRESS")
    errors = configs[f"{HA}/sensor/{node}/stats_checksum_errors/config"]
    assert errors["state_topic"] == f"{P}/stats"
    assert errors["entity_category"] == "diagnostic"
    stats = {"devices": {"sim-0": {"checksum_errors": 3, "rx_fps": 9.5}}}
    assert render(errors["value_template"], json.dumps(stats)) == "3"
    # Read-only keys are not commands; nothing is abbreviated.
    assert not any("fw_build" in topic for topic in configs)
    abbreviations = {"~", "stat_t", "cmd_t", "uniq_id", "dev", "avty", "avty_mode", "val_tpl",
                     "unit_of_meas", "dev_cla", "stat_cla", "ent_cat", "o", "ids", "mdl"}
    for config in configs.values():
        assert not abbreviations & (set(config) | set(config["device"]))


def test_without_a_uid_the_device_is_identified_by_gateway_and_device_id():
    device = next(iter(env_configs(facts={"profile": "env-sensor"}).values()))["device"]
    assert device == {"identifiers": ["test-gw_sim-0"], "name": "sim-0",
                      "model": "env-sensor", "via_device": "mcp-gateway_test-gw"}


def test_the_gateway_is_a_device_with_a_connectivity_sensor():
    (topic, config), = gateway_configs(TOPICS, HA).items()
    assert CONFIG_TOPIC.fullmatch(topic)
    assert config["device"]["identifiers"] == ["mcp-gateway_test-gw"]
    assert config["state_topic"] == f"{P}/status"
    assert render(config["value_template"], '{"state":"degraded"}') == "ON"
    assert render(config["value_template"], '{"state":"offline"}') == "OFF"


def test_availability_needs_the_gateway_up_and_the_device_online():
    """Availability mode all: a dead gateway's devices are unavailable even though their
    retained status still says online; degraded still serves."""
    config = env_configs()[f"{HA}/sensor/test-gw_sim-0/status_temperature_c/config"]
    device_online = {f"{P}/devices/sim-0/status": b'{"state":"online","reason":"registered"}'}
    assert available(config, {f"{P}/status": b'{"state":"online"}', **device_online})
    assert available(config, {f"{P}/status": b'{"state":"degraded"}', **device_online})
    assert not available(config, {f"{P}/status": b'{"state":"offline"}', **device_online})
    assert not available(config, {f"{P}/status": b'{"state":"online"}',
                                  f"{P}/devices/sim-0/status": b'{"state":"offline"}'})


def test_device_and_state_classes_only_where_the_unit_and_name_are_sure():
    def field(name: str, unit: str | None, kind: str = "u16", **extra: Any) -> FieldSpec:
        return FieldSpec(name, kind, unit=unit, **extra)

    assert device_class_of(field("humidity_pct", "%")) == "humidity"
    assert device_class_of(field("battery_pct", "%")) == "battery"
    assert device_class_of(field("duty_pct", "%")) is None  # a % of what?
    assert device_class_of(field("supply_v", "V")) == "voltage"
    assert device_class_of(field("reading", None)) is None
    assert device_class_of(field("label", "°C", "utf8")) is None
    assert state_class_of(field("uptime_s", "s", "u32")) == "total_increasing"
    assert state_class_of(field("pulses_total", None, "u32")) == "total_increasing"
    assert state_class_of(field("level", None)) == "measurement"
    assert state_class_of(field("label", None, "utf8")) is None
    overridden = field("level", "%", ha_device_class="moisture", ha_state_class="total")
    assert (device_class_of(overridden), state_class_of(overridden)) == ("moisture", "total")
    assert readable("temperature_c") == "Temperature"
    assert readable("uptime_s") == "Uptime"
    assert readable("door-open") == "Door open"
    assert readable("s") == "S"


def test_profile_overrides_reach_the_configs():
    profile = parse_profile({"name": "meter", "events": [{"id": 0x20, "name": "status", "fields": [
        {"name": "energy_wh", "type": "u32", "unit": "Wh", "ha_device_class": "energy",
         "ha_state_class": "total_increasing", "ha_icon": "mdi:flash"},
        {"name": "door", "type": "bool", "ha_device_class": "door"}]}]})
    configs = discovery_configs(profile, "m", {}, TOPICS, HA)
    energy = configs[f"{HA}/sensor/test-gw_m/status_energy_wh/config"]
    assert (energy["device_class"], energy["state_class"], energy["icon"]) == \
        ("energy", "total_increasing", "mdi:flash")
    door = configs[f"{HA}/binary_sensor/test-gw_m/status_door/config"]
    assert door["device_class"] == "door"
    assert render(door["value_template"], '{"payload":{"door":true}}') == "ON"
    assert render(door["value_template"], '{"payload":{"door":false}}') == "OFF"


def test_a_writable_bool_key_is_a_switch_sending_on_and_off():
    profile = parse_profile({"name": "relay", "keys": [
        {"id": 1, "name": "relay_on", "type": "bool", "access": "rw", "ha_icon": "mdi:power"},
        {"id": 2, "name": "blob", "type": "bytes", "access": "rw"}]})
    configs = discovery_configs(profile, "r", {}, TOPICS, HA)
    switch = configs[f"{HA}/switch/test-gw_r/key_relay_on/config"]
    assert (switch["command_topic"], switch["payload_on"], switch["payload_off"],
            switch["icon"]) == (f"{P}/devices/r/set/relay_on", "ON", "OFF", "mdi:power")
    assert not any("blob" in topic for topic in configs)  # bytes: no control


def test_templates_reach_fields_named_like_dict_methods_or_not_identifiers():
    """Jinja reads ``value_json.payload.items`` as the dict's method: such names (and names
    that are no identifiers) are subscripted."""
    profile = parse_profile({"name": "odd", "events": [{"id": 0x20, "name": "status", "fields": [
        {"name": name, "type": "u8"} for name in ("items", "keys", "2nd", "a-b", "level")]}]})
    configs = discovery_configs(profile, "m", {}, TOPICS, HA)
    event = json.dumps({"payload": {"items": 1, "keys": 2, "2nd": 3, "a-b": 4, "level": 5}})
    values = {name: render(configs[f"{HA}/sensor/test-gw_m/status_{name}/config"]
                           ["value_template"], event)
              for name in ("items", "keys", "2nd", "a-b", "level")}
    assert values == {"items": "1", "keys": "2", "2nd": "3", "a-b": "4", "level": "5"}
    level = configs[f"{HA}/sensor/test-gw_m/status_level/config"]["value_template"]
    assert level == "{{ value_json.payload.level }}"


def test_node_ids_are_safe_and_do_not_collide():
    assert node_id("gw", "sim-0") == "gw_sim-0"
    dotted, underscored = node_id("gw", "a.b"), node_id("gw", "a_b")
    assert dotted != underscored
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", dotted)


ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
names = st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
                  st.sampled_from(["items", "keys", "values", "get", "pop"]))
units = st.sampled_from([None, "°C", "%", "mV", "V", "s", "ms", "hPa", "ppm", "frames", "m³"])


@st.composite
def profiles(draw: st.DrawFn) -> dict[str, Any]:
    """Any valid profile table: STATUS fields of every type, keys ro and rw."""
    def fields(count: int) -> list[dict[str, Any]]:
        chosen = draw(st.lists(names, min_size=count, max_size=count, unique=True))
        out = []
        for i, name in enumerate(chosen):
            kind = draw(st.sampled_from([t for t in FIELD_TYPES if t not in ("utf8", "bytes")]
                                        if i < count - 1 else FIELD_TYPES))
            entry: dict[str, Any] = {"name": name, "type": kind}
            if kind in ("utf8", "bytes"):
                entry["max_len"] = draw(st.integers(0, 1000))
            elif kind != "bool":
                entry["unit"] = draw(units)
                if kind[0] in "ui" and draw(st.booleans()):
                    entry["scale"] = draw(st.sampled_from([0.001, 0.01, 0.5, 10]))
            out.append({k: v for k, v in entry.items() if v is not None})
        return out

    status = fields(draw(st.integers(0, 6)))
    keys = [{"id": i, "access": draw(st.sampled_from(["ro", "rw"])), **spec}
            for i, spec in enumerate(fields(draw(st.integers(0, 5))))]
    return {"name": "any", "events": [{"id": 0x20, "name": "status", "fields": status}],
            "keys": keys}


@given(profiles(), ids, ids)
def test_any_profile_gives_valid_distinct_topics_ids_and_templates(table, gateway_id, device_id):
    """Whatever the profile and ids: config topics in HA's characters, one per entity (no
    two entities share a topic or a unique id), JSON that round-trips, templates that
    evaluate on our envelope, number ranges HA accepts."""
    profile = parse_profile(table)
    topics = Topics("mcp/v1", gateway_id)
    configs = discovery_configs(profile, device_id, {}, topics, HA)
    status = profile.events[0x20].layout.fields
    writable = [k for k in profile.keys.values()
                if k.writable and k.field.type != "bytes"]
    assert len(configs) == len(status) + len(writable) + 1 + 2
    assert all(CONFIG_TOPIC.fullmatch(topic) for topic in configs)
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    payload = {f.name: (True if f.type == "bool" else 1) for f in status}
    event = json.dumps({"payload": payload})
    stats = json.dumps({"devices": {device_id: {"rx_fps": 1.5, "checksum_errors": 0}}})
    for config in configs.values():
        assert json.loads(json.dumps(config, ensure_ascii=False)) == config
        if "value_template" in config:
            source = stats if config["state_topic"] == topics.stats else event
            assert render(config["value_template"], source) in ("1", "1.5", "0", "ON")
        if "min" in config:
            assert config["min"] <= config["max"]
            assert config["step"] >= 0.001
        assert config["device"]["via_device"] == f"mcp-gateway_{gateway_id}"


# ---------------------------------------------------------------------------------------
# On a broker, with simulated devices


def _toml(tmp_path: Path, broker: Any, links: Path, names: list[str],
          profiles: dict[str, str] | None = None, extra: str = "",
          allow: tuple[str, ...] = ("read", "write", "ping")) -> str:
    """A configuration with HA discovery on, one port per name (``profiles``: a port's
    profile other than env-sensor, from ``tmp_path / "profiles"``)."""
    (tmp_path / "profiles").mkdir(exist_ok=True)
    lines = [f'gateway_id = "test-gw"\nstate_dir = "{tmp_path / "state"}"\n'
             f'profiles_dir = "{tmp_path / "profiles"}"\n'
             'stats_interval_s = 0.5\ngateway_allow = ["reload"]\n',
             f'[broker]\nurl = "{broker.url}"\n',
             f'[homeassistant]\nenabled = true\ndiscovery_prefix = "{HA}"\n', extra]
    lines += [f'[[ports]]\nname = "{n}"\npath = "{links / n}"\nallow = {json.dumps(list(allow))}\n'
              f'profile = "{(profiles or {}).get(n, "env-sensor")}"\n' for n in names]
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def ha_stack(tmp_path: Path, broker: Any, count: int = 2, interval_ms: int = 100,
                   extra: str = "", allow: tuple[str, ...] = ("read", "write", "ping")):
    links = tmp_path / "links"
    spec = replace(FleetSpec(count=count, interval_ms=interval_ms), link_dir=links)
    path = tmp_path / "gateway.toml"
    async with Fleet(spec) as fleet:
        path.write_text(_toml(tmp_path, broker, links, [d.name for d in fleet.devices],
                              extra=extra, allow=allow))
        config = load_config(path)
        gateway = Gateway(config)
        async with Bridge(gateway, config) as bridge, gateway:
            ha = bridge.homeassistant
            assert ha is not None
            Reloader(path, gateway, bridge)
            await wait_for(lambda: bridge.mqtt.subscribed, timeout=10, what="subscribed")
            yield fleet, gateway, bridge, ha, path


def latest(client: Client, prefix: str) -> dict[str, bytes]:
    """The latest body on each topic (an empty one: cleared)."""
    return {m.topic: m.payload for m in client.on(prefix)}


async def test_configs_of_two_devices_read_our_events_as_home_assistant_would(tmp_path, broker):
    async with ha_stack(tmp_path, broker) as (_fleet, gateway, _bridge, _ha, _path):
        await wait_for(lambda: all(s.node_id for s in gateway.devices.values()), what="online")
        client = Client(broker.port, client_id="ha")
        try:
            client.subscribe(f"{HA}/#")
            client.subscribe(f"{P}/#")
            want = {f"{HA}/sensor/test-gw_{d}/status_temperature_c/config" for d in gateway.devices}
            await wait_for(lambda: want <= set(latest(client, HA)), what="configs retained")
            configs = {t: json.loads(b) for t, b in latest(client, HA).items() if b}
            assert all(CONFIG_TOPIC.fullmatch(t) for t in configs)
            for device_id in ("sim-0", "sim-1"):
                node = f"test-gw_{device_id}"
                mine = {t: c for t, c in configs.items() if f"/{node}/" in t}
                assert len(mine) == 9
                assert {c["device"]["identifiers"][0] for c in mine.values()} == \
                    {gateway.device(device_id).hello["uid"]}
                await wait_for(lambda d=device_id: client.on(f"{P}/devices/{d}/events/status"),
                               what="an event")
                event = client.on(f"{P}/devices/{device_id}/events/status")[-1]
                decoded = json.loads(event.payload)["payload"]
                for field in ("temperature_c", "humidity_pct", "battery_mv", "uptime_s"):
                    sensor = mine[f"{HA}/sensor/{node}/status_{field}/config"]
                    assert sensor["state_topic"] == event.topic
                    assert render(sensor["value_template"], event.payload) == str(decoded[field])
                assert 15.0 <= float(render(
                    mine[f"{HA}/sensor/{node}/status_temperature_c/config"]["value_template"],
                    event.payload)) <= 30.0  # the simulator's range: a decoded value
                await wait_for(lambda: client.on(f"{P}/stats"), what="stats")
                rx = mine[f"{HA}/sensor/{node}/stats_rx_fps/config"]
                assert float(render(rx["value_template"], client.on(f"{P}/stats")[-1].payload)) \
                    >= 0
                status = latest(client, P)
                assert available(mine[f"{HA}/button/{node}/ping/config"], status)
            gateway_device = configs[f"{HA}/binary_sensor/mcp-gateway_test-gw/status/config"]
            assert gateway_device["device"]["identifiers"] == ["mcp-gateway_test-gw"]
        finally:
            client.close()


async def test_home_assistant_online_announces_everything_again(tmp_path, broker):
    async with ha_stack(tmp_path, broker) as (_fleet, gateway, _bridge, ha, _path):
        await wait_for(lambda: all(s.node_id for s in gateway.devices.values()), what="online")
        client = Client(broker.port, client_id="ha")
        try:
            client.subscribe(f"{HA}/+/+/+/config")
            await wait_for(lambda: len(latest(client, HA)) == 19, what="every config")
            seen = len(client.on(HA))
            published = ha.counters()["configs_published"]
            client.publish(f"{HA}/status", "offline")  # HA's will: nothing to do
            client.publish(f"{HA}/status", "online")
            await wait_for(lambda: len(client.on(HA)) >= seen + 19, what="configs again")
            again = client.on(HA)[seen:]
            assert {m.topic for m in again} == set(latest(client, HA))
            assert all(m.payload for m in again)
            assert ha.counters()["configs_published"] == published + 19
            assert ha.counters()["births"] == 1
        finally:
            client.close()


async def test_removing_a_device_clears_its_configs_and_only_its(tmp_path, broker):
    async with ha_stack(tmp_path, broker) as (_fleet, gateway, bridge, ha, path):
        await wait_for(lambda: all(s.node_id for s in gateway.devices.values()), what="online")
        client = Client(broker.port, client_id="ha")
        try:
            client.subscribe(f"{HA}/#")
            await wait_for(lambda: len(latest(client, HA)) == 19, what="every config")
            path.write_text(_toml(tmp_path, broker, tmp_path / "links", ["sim-0"]))
            assert bridge.reloader is not None
            report = await bridge.reloader()
            assert report.removed == ["sim-1"]

            def cleared() -> bool:
                now = latest(client, HA)
                gone = {t for t, b in now.items() if not b}
                return gone == {t for t in now if "/test-gw_sim-1/" in t}

            await wait_for(cleared, what="sim-1's configs cleared")
            await wait_for(lambda: not ha.retiring, what="the clears acknowledged")
            assert ha.counters()["configs_cleared"] == 9
        finally:
            client.close()
        later = Client(broker.port, client_id="later")  # what the broker keeps now
        try:
            later.subscribe(f"{HA}/#")
            await wait_for(lambda: len(latest(later, HA)) == 10, what="the retained configs")
            assert not any("sim-1" in t for t in latest(later, HA))
        finally:
            later.close()


async def test_clears_the_broker_missed_are_sent_on_the_next_connection(tmp_path):
    """A device removed while the broker is away: its configs are cleared once the gateway is
    connected again (the broker keeps retained messages across its restart here)."""
    broker = Mosquitto(tmp_path, extra=f"persistence true\npersistence_location {tmp_path}/\n")
    broker.start()
    try:
        async with ha_stack(tmp_path, broker) as (_fleet, gateway, bridge, ha, path):
            await wait_for(lambda: all(s.node_id for s in gateway.devices.values()),
                           what="online")
            client = Client(broker.port, client_id="ha")
            try:
                client.subscribe(f"{HA}/#")
                await wait_for(lambda: len(latest(client, HA)) == 19, what="every config")
                client.client.publish("test/persisted", b"1", qos=1,
                                      retain=True).wait_for_publish(5)
            finally:
                client.close()
            broker.stop()
            await wait_for(lambda: not bridge.mqtt.connected, what="the broker gone")
            path.write_text(_toml(tmp_path, broker, tmp_path / "links", ["sim-0"]))
            assert bridge.reloader is not None
            assert (await bridge.reloader()).removed == ["sim-1"]
            assert len(ha.retiring) == 9
            broker.start()
            await wait_for(lambda: bridge.mqtt.connected and not ha.retiring, timeout=15,
                           what="reconnected and the clears acknowledged")
            later = Client(broker.port, client_id="later")
            try:
                later.subscribe("#")
                await wait_for(lambda: later.on("test/persisted"), what="the broker kept "
                               "retained messages across its restart")
                await wait_for(lambda: len(latest(later, HA)) == 10, what="retained configs")
                assert not any("sim-1" in t for t in latest(later, HA))
            finally:
                later.close()
    finally:
        broker.stop()


async def test_glob_devices_are_announced_under_their_uid_ids_only(tmp_path, broker):
    """A device of a glob port takes its ``uid-...`` id after HELLO (``DeviceRenamed``):
    whatever its path id had is cleared, and its configs name the uid id's topics."""
    links = tmp_path / "links"
    path = tmp_path / "gateway.toml"
    path.write_text(f'gateway_id = "test-gw"\nstate_dir = "{tmp_path / "state"}"\n'
                    f'[broker]\nurl = "{broker.url}"\n[homeassistant]\nenabled = true\n'
                    f'[[ports]]\nname = "bus"\npath = "{links / "sim-*"}"\n')
    config = load_config(path)
    async with Fleet(FleetSpec(count=2, interval_ms=100, link_dir=links)) as fleet:
        gateway = Gateway(config)
        async with Bridge(gateway, config), gateway:
            uid_ids = {f"uid-{d.uid.hex()}" for d in fleet.devices}
            await wait_for(lambda: set(gateway.devices) == uid_ids, what="uid ids")
            late = Client(broker.port, client_id="late")
            try:
                late.subscribe(f"{HA}/#")

                def standing() -> set[str]:
                    """The node ids with configs the broker keeps (not cleared since)."""
                    return {t.split("/")[2] for t, b in latest(late, HA).items() if b}

                want = {f"test-gw_{d}" for d in uid_ids} | {"mcp-gateway_test-gw"}
                await wait_for(lambda: standing() == want, what="configs under uid ids only")
                topics = {d: f"{HA}/sensor/test-gw_{d}/status_uptime_s/config" for d in uid_ids}
                # a node id stands once its first config has come: wait for the one read here
                await wait_for(lambda: all(latest(late, HA).get(t) for t in topics.values()),
                               what="the uptime configs")
                for device_id, topic in topics.items():
                    config_body = json.loads(latest(late, HA)[topic])
                    assert config_body["state_topic"] == f"{P}/devices/{device_id}/events/status"
                    assert config_body["device"]["identifiers"] == [device_id[len("uid-"):]]
            finally:
                late.close()


async def test_controls_written_as_home_assistant_writes_them_reach_the_device(tmp_path,
                                                                               broker):
    """A ``number`` command is the plain value on its command topic (``250``), a ``text``
    the text, a ``button`` its ``payload_press``: each lands on the device."""
    async with ha_stack(tmp_path, broker) as (fleet, gateway, bridge, _ha, _path):
        await wait_for(lambda: all(s.node_id for s in gateway.devices.values()), what="online")
        client = Client(broker.port, client_id="ha")
        try:
            client.subscribe(f"{HA}/#")
            client.subscribe("replies/#")
            node = "test-gw_sim-0"
            wanted = [f"{HA}/{c}/{node}/{o}/config" for c, o in (
                ("number", "key_interval_ms"), ("text", "key_name"), ("button", "ping"))]
            await wait_for(lambda: set(wanted) <= set(latest(client, HA)), what="controls")
            number, text, button = (json.loads(latest(client, HA)[t]) for t in wanted)
            client.publish(number["command_topic"], "250")
            _, answer = await wait_for_read(client, "interval_ms", 250)
            assert answer["payload"]["unit"] == "ms"
            client.publish(text["command_topic"], "kitchen")
            await wait_for(lambda: fleet.devices[0].settings[2] == "kitchen", what="name")
            pongs = bridge.request_server.counters()["plain_commands"]
            client.publish(button["command_topic"], button["payload_press"])
            await wait_for(lambda: bridge.request_server.counters()["plain_commands"] > pongs,
                           what="the ping carried out")
            assert bridge.request_server.counters()["plain_commands_failed"] == 0
        finally:
            client.close()


async def wait_for_read(client: Client, key: str, value: Any) -> tuple[Any, dict]:
    """Read ``key`` of sim-0 with requests until it says ``value`` (a write is carried out
    after its command is taken: the first read may come first)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        message, answer = await request(client, f"{P}/devices/sim-0/requests",
                                        {"action": "read", "payload": {"key": key}})
        if answer["status"] == "ok" and answer["payload"]["value"] == value:
            return message, answer
        assert loop.time() < deadline, f"{key} still {answer}"


async def test_a_killed_gateway_makes_its_devices_unavailable(tmp_path, broker):
    """A SIGKILL: the devices' retained statuses still say online, but the gateway's will
    says offline, and under ``availability_mode: all`` every device entity is unavailable;
    the gateway's own connectivity sensor says off."""
    links = tmp_path / "links"
    async with Fleet(FleetSpec(count=2, interval_ms=200, link_dir=links)) as fleet:
        path = tmp_path / "gateway.toml"
        path.write_text(_toml(tmp_path, broker, links, [d.name for d in fleet.devices]))
        gateway = await asyncio.create_subprocess_exec(
            BIN / "mcp-gateway", "run", "--config", str(path),
            stderr=asyncio.subprocess.DEVNULL)
        client = Client(broker.port, client_id="ha")
        try:
            client.subscribe(f"{HA}/#")
            client.subscribe(f"{P}/#")

            def entities() -> dict[str, dict]:
                return {t: json.loads(b) for t, b in latest(client, HA).items()
                        if b and "/test-gw_sim-" in t}

            def all_available() -> bool:
                now = latest(client, P)
                return len(entities()) == 18 and all(
                    available(c, now) for c in entities().values())

            await wait_for(all_available, timeout=15, what="every device entity available")
            gateway.send_signal(signal.SIGKILL)
            await gateway.wait()
            await wait_for(lambda: json.loads(latest(client, P)[f"{P}/status"])["state"]
                           == "offline", timeout=15, what="the gateway's will")
        finally:
            if gateway.returncode is None:
                gateway.kill()
                await gateway.wait()
            client.close()
        late = Client(broker.port, client_id="late")  # Home Assistant starting now
        try:
            late.subscribe(f"{HA}/#")
            late.subscribe(f"{P}/#")
            statuses = {f"{P}/status", f"{P}/devices/sim-0/status", f"{P}/devices/sim-1/status"}
            await wait_for(lambda: len(latest(late, HA)) == 19 and statuses <= set(
                latest(late, P)), what="the retained configs and statuses")
            retained = latest(late, P)
            for device_id in ("sim-0", "sim-1"):
                status = json.loads(retained[f"{P}/devices/{device_id}/status"])
                assert status["state"] == "online"  # what the will overrides
            configs = [json.loads(b) for b in latest(late, HA).values()]
            devices = [c for c in configs if "availability" in c]
            assert len(devices) == 18
            assert not any(available(c, retained) for c in devices)
            (connectivity,) = [c for c in configs if "availability" not in c]
            assert render(connectivity["value_template"], retained[f"{P}/status"]) == "OFF"
        finally:
            late.close()


async def test_controls_appear_only_where_the_allow_list_lets_them_work(tmp_path, broker):
    """A number, text or button the port's ``allow`` list would refuse is not announced; a
    reload that allows (or forbids) one announces (or clears) it at once."""
    async with ha_stack(tmp_path, broker, count=1, allow=("read",)) as (
            _fleet, gateway, bridge, ha, path):
        await wait_for(lambda: gateway.device("sim-0").node_id, what="online")
        client = Client(broker.port, client_id="ha")
        number = f"{HA}/number/test-gw_sim-0/key_interval_ms/config"
        text = f"{HA}/text/test-gw_sim-0/key_name/config"
        button = f"{HA}/button/test-gw_sim-0/ping/config"
        try:
            client.subscribe(f"{HA}/#")
            await wait_for(lambda: len(latest(client, HA)) == 7, what="sensors and gateway")
            assert not {number, text, button} & set(latest(client, HA))

            async def reload_with(allow: tuple[str, ...]) -> None:
                path.write_text(_toml(tmp_path, broker, tmp_path / "links", ["sim-0"],
                                      allow=allow))
                assert bridge.reloader is not None
                assert (await bridge.reloader()).updated == ["sim-0"]

            await reload_with(("read", "ping", "write:interval_ms"))
            await wait_for(lambda: latest(client, HA).get(number) and latest(client, HA).get(
                button), what="the number and the button announced")
            assert text not in latest(client, HA)
            await reload_with(("read",))
            await wait_for(lambda: latest(client, HA).get(number) == b"" and latest(
                client, HA).get(button) == b"", what="the number and the button cleared")
            await wait_for(lambda: not ha.retiring, what="the clears acknowledged")
        finally:
            client.close()


async def test_a_profile_change_clears_what_the_new_profile_does_not_have(tmp_path, broker):
    """A reload gives sim-0 a profile without the ``name`` key: its text config is cleared,
    the rest published again (the device keeps its id, so the same topics)."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()  # (before the first configuration is written)
    (profiles / "lean.toml").write_text(
        'name = "lean"\n[[events]]\nid = 0x20\nname = "status"\nfields = [\n'
        '  { name = "temperature_c", type = "i16", scale = 0.01, unit = "°C" },\n'
        '  { name = "humidity_pct", type = "u16", scale = 0.01, unit = "%" },\n'
        '  { name = "battery_mv", type = "u16", unit = "mV" },\n'
        '  { name = "uptime_s", type = "u32", unit = "s" },\n]\n'
        '[[keys]]\nid = 1\nname = "interval_ms"\ntype = "u32"\naccess = "rw"\n'
        'min = 10\nmax = 3600000\n')
    async with ha_stack(tmp_path, broker, count=1) as (_fleet, gateway, bridge, ha, path):
        await wait_for(lambda: gateway.device("sim-0").node_id, what="online")
        client = Client(broker.port, client_id="ha")
        try:
            client.subscribe(f"{HA}/#")
            text = f"{HA}/text/test-gw_sim-0/key_name/config"
            await wait_for(lambda: latest(client, HA).get(text), what="the text config")
            path.write_text(_toml(tmp_path, broker, tmp_path / "links", ["sim-0"],
                                  profiles={"sim-0": "lean"}))
            assert bridge.reloader is not None
            assert (await bridge.reloader()).restarted == ["sim-0"]
            await wait_for(lambda: latest(client, HA).get(text) == b"", what="text cleared")
            await wait_for(lambda: not ha.retiring, what="the clear acknowledged")
            now = latest(client, HA)
            assert {t for t, b in now.items() if not b} == {text}
            assert json.loads(now[f"{HA}/number/test-gw_sim-0/key_interval_ms/config"])[
                "command_topic"] == f"{P}/devices/sim-0/set/interval_ms"
        finally:
            client.close()


async def test_beside_sparkplug_the_configs_and_their_events_are_the_same(tmp_path, broker):
    """Both integrations on: discovery still names the native topics, whose events (one
    queue for every output) the templates read."""
    async with ha_stack(tmp_path, broker, extra="[sparkplug]\nenabled = true\n") as (
            _fleet, gateway, bridge, _ha, _path):
        assert bridge.sparkplug is not None
        await wait_for(lambda: all(s.node_id for s in gateway.devices.values()), what="online")
        client = Client(broker.port, client_id="ha")
        try:
            client.subscribe(f"{HA}/#")
            client.subscribe(f"{P}/devices/+/events/status")
            await wait_for(lambda: len(latest(client, HA)) == 19, what="every config")
            await wait_for(lambda: client.on(f"{P}/devices/sim-1/events/status"), what="event")
            event = client.on(f"{P}/devices/sim-1/events/status")[-1]
            sensor = json.loads(latest(client, HA)[
                f"{HA}/sensor/test-gw_sim-1/status_battery_mv/config"])
            assert sensor["state_topic"] == event.topic
            assert render(sensor["value_template"], event.payload) == \
                str(json.loads(event.payload)["payload"]["battery_mv"])
            assert bridge.stats()["homeassistant"]["configs_published"] == 19
        finally:
            client.close()
