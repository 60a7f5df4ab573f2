"""Home Assistant MQTT discovery: every online device appears in Home Assistant by itself.

For each device the gateway publishes retained discovery configs on
``{discovery_prefix}/{component}/{node_id}/{object_id}/config``, built from its profile
(``discovery_configs``): a ``sensor`` per STATUS field (reading our event envelope), a
``number``, ``switch`` or ``text`` per read-write key (written through the plain-value
command topic ``.../set/KEY``), a ``button`` for ``ping`` and two diagnostic sensors from
the stats. The gateway itself is a device too (``gateway_configs``): each device's
``via_device``.

Configs are published afresh on every connection and whenever Home Assistant says
``online`` on ``{discovery_prefix}/status`` (its birth: it may have lost them). A device id
that leaves the gateway (removed from the configuration, given up by a rename) has every
config it had cleared with an empty retained message, sent again on the next connection
until the broker has acknowledged it, as ``statuses.py`` clears its retained status. A
device that only goes offline keeps its configs: Home Assistant shows it unavailable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from gateway import __version__
from gateway.app import Gateway, UnknownDevice
from gateway.bridge.mqtt import Message, MqttConnection
from gateway.bridge.requests import allowed
from gateway.bridge.topics import Topics
from gateway.config import GatewayConfig, PortConfig
from gateway.frames.commands import Command
from gateway.frames.profiles import DeviceProfile, FieldSpec
from gateway.logs import Recurring
from gateway.session import DeviceRenamed, StateChange
from gateway.settings import HomeAssistantSettings

log = logging.getLogger(__name__)

#: what Home Assistant allows in a discovery topic's node id and object id
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
#: HA's text entities hold at most this many characters
_TEXT_MAX = 255
#: HA's number entities step at least this much
_STEP_MIN = 0.001
_F32_MAX = 3.4028234663852886e38

#: unit -> device class, where the unit alone says what is measured
_UNIT_CLASSES = {
    "°C": "temperature", "°F": "temperature", "K": "temperature",
    "V": "voltage", "mV": "voltage", "µV": "voltage", "kV": "voltage",
    "A": "current", "mA": "current",
    "W": "power", "kW": "power",
    "Pa": "pressure", "hPa": "pressure", "kPa": "pressure", "bar": "pressure",
    "mbar": "pressure", "psi": "pressure",
    "lx": "illuminance",
    "Hz": "frequency", "kHz": "frequency", "MHz": "frequency",
    "dBm": "signal_strength",
    "s": "duration", "ms": "duration", "min": "duration", "h": "duration", "d": "duration",
}
#: (unit, a word of the field's name) -> device class, where the unit needs the name
_NAMED_CLASSES = {
    ("%", "humidity"): "humidity",
    ("%", "battery"): "battery",
    ("%", "moisture"): "moisture",
    ("ppm", "co2"): "carbon_dioxide",
}
#: last words of a name that repeat its unit (``temperature_c``): left out of the name shown
_UNIT_WORDS = {"c", "f", "k", "pct", "percent", "v", "mv", "a", "ma", "w", "kw", "pa", "hpa",
               "kpa", "s", "ms", "lx", "hz", "dbm", "ppm"}

#: (stats counter, name shown, unit, state class) of the diagnostic sensors of a device
_DIAGNOSTICS = (("rx_fps", "Received frames per second", "frames/s", "measurement"),
                ("checksum_errors", "Checksum errors", None, "total_increasing"))


def node_id(gateway_id: str, device_id: str) -> str:
    """The discovery topic's node id of a device: ``{gateway_id}_{device_id}`` in HA's
    characters. Ids holding others (a ``.``) get a short hash of the original, so two ids
    never share a node id."""
    raw = f"{gateway_id}_{device_id}"
    safe = _UNSAFE.sub("_", raw)
    if safe != raw:
        safe += "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    return safe


def gateway_identifier(gateway_id: str) -> str:
    """The gateway's HA device identifier (each device's ``via_device``)."""
    return f"mcp-gateway_{gateway_id}"


def readable(name: str) -> str:
    """A field's name as HA shows it: ``temperature_c`` -> ``Temperature``."""
    words = [w for w in re.split(r"[_\-\s]+", name) if w]
    if len(words) > 1 and words[-1].lower() in _UNIT_WORDS:
        words.pop()
    text = " ".join(words) or name
    return text[0].upper() + text[1:]


def device_class_of(field: FieldSpec) -> str | None:
    """The HA device class of a field: its override, else one its unit (and name) make sure."""
    if field.ha_device_class is not None:
        return field.ha_device_class
    if not field.is_numeric or field.unit is None:
        return None
    if field.unit in _UNIT_CLASSES:
        return _UNIT_CLASSES[field.unit]
    words = set(re.split(r"[_\-]+", field.name.lower()))
    for (unit, word), device_class in _NAMED_CLASSES.items():
        if field.unit == unit and word in words:
            return device_class
    return None


def state_class_of(field: FieldSpec) -> str | None:
    """The HA state class of a field: its override, else ``total_increasing`` for a counter
    (an uptime, a ``*_total``), ``measurement`` for any other number, None for the rest."""
    if field.ha_state_class is not None:
        return field.ha_state_class
    if not field.is_numeric:
        return None
    words = re.split(r"[_\-]+", field.name.lower())
    if "uptime" in words or words[-1] == "total":
        return "total_increasing"
    return "measurement"


def _without_none(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if v is not None}


def _entity_id(component: str, gateway_id: str, device_id: str, name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", f"{gateway_id}_{device_id}_{name}".lower()).strip("_")
    return f"{component}.{slug}"


def _origin() -> dict[str, str]:
    return {"name": "mcp-gateway", "sw_version": __version__}


def gateway_configs(topics: Topics, prefix: str) -> dict[str, dict[str, Any]]:
    """The gateway's own HA device: a connectivity sensor on its retained status (a device
    must exist for the devices' ``via_device`` to name it). No availability of its own: when
    the gateway dies its will says offline, and the sensor says disconnected."""
    gateway_id = topics.gateway_id
    node = node_id("mcp-gateway", gateway_id)
    topic = f"{prefix}/binary_sensor/{node}/status/config"
    return {topic: {
        "name": "Status",
        "unique_id": f"{gateway_identifier(gateway_id)}_status",
        "default_entity_id": _entity_id("binary_sensor", "mcp-gateway", gateway_id, "status"),
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "state_topic": topics.status,
        "value_template": "{{ 'OFF' if value_json.state == 'offline' else 'ON' }}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device": {
            "identifiers": [gateway_identifier(gateway_id)],
            "name": f"mcp-gateway {gateway_id}",
            "model": "mcp-gateway",
            "sw_version": __version__,
        },
        "origin": _origin(),
    }}


#: may the fabric ask ``action`` (on the key named ``key``) of a device? (its port's allow list)
May = Callable[[str, str | None], bool]


def discovery_configs(profile: DeviceProfile, device_id: str, facts: dict[str, Any],
                      topics: Topics, prefix: str, *,
                      may: May = lambda action, key: True) -> dict[str, dict[str, Any]]:
    """Every discovery config of one device: config topic -> config (full key names).
    Controls only where ``may`` (the port's allow list) lets them work: a ``write:KEY``
    control per key allowed, ``ping`` if allowed."""
    gateway_id = topics.gateway_id
    node = node_id(gateway_id, device_id)
    device = _without_none({
        "identifiers": [str(facts["uid"]) if facts.get("uid") else f"{gateway_id}_{device_id}"],
        "name": device_id,
        "model": str(facts.get("model") or profile.name),
        "sw_version": str(facts["fw"]) if facts.get("fw") else None,
        "via_device": gateway_identifier(gateway_id),
    })
    availability = {
        "availability": [
            {"topic": topics.status,
             "value_template": "{{ 'offline' if value_json.state == 'offline' else 'online' }}"},
            {"topic": topics.device_status(device_id),
             "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}"},
        ],
        "availability_mode": "all",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    configs: dict[str, dict[str, Any]] = {}

    def add(component: str, object_id: str, name: str, entity: str,
            config: dict[str, Any]) -> None:
        topic = f"{prefix}/{component}/{node}/{object_id}/config"
        configs[topic] = _without_none({
            "name": name,
            "unique_id": f"{gateway_id}_{device_id}_{object_id}",
            "default_entity_id": _entity_id(component, gateway_id, device_id, entity),
            **config,
            **availability,
            "device": device,
            "origin": _origin(),
        })

    status = profile.events.get(Command.STATUS)
    if status is not None:
        state_topic = topics.device_event(device_id, status.name)
        for field in status.layout.fields:
            value = _member("value_json.payload", field.name)
            if field.type == "bool":
                add("binary_sensor", f"status_{field.name}", readable(field.name), field.name, {
                    "state_topic": state_topic,
                    "value_template": f"{{{{ 'ON' if {value} else 'OFF' }}}}",
                    "device_class": field.ha_device_class,
                    "icon": field.ha_icon,
                })
                continue
            add("sensor", f"status_{field.name}", readable(field.name), field.name, {
                "state_topic": state_topic,
                "value_template": f"{{{{ {value} }}}}",
                "unit_of_measurement": field.unit if field.is_numeric else None,
                "device_class": device_class_of(field),
                "state_class": state_class_of(field),
                "suggested_display_precision": field.decimals,
                "icon": field.ha_icon,
            })

    for key in profile.keys.values():
        spec = key.field
        if not key.writable or not may("write", key.name):
            continue
        if spec.is_numeric:
            low, high = _number_range(spec)
            add("number", f"key_{key.name}", readable(key.name), key.name, {
                "command_topic": topics.device_set(device_id, key.name),
                "min": low,
                "max": high,
                "step": _step(spec),
                "mode": "box",
                "unit_of_measurement": spec.unit,
                "device_class": spec.ha_device_class,
                "icon": spec.ha_icon,
                "optimistic": True,
            })
        elif spec.type == "bool":
            add("switch", f"key_{key.name}", readable(key.name), key.name, {
                "command_topic": topics.device_set(device_id, key.name),
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": spec.ha_device_class,
                "icon": spec.ha_icon,
                "optimistic": True,
            })
        elif spec.type == "utf8":
            add("text", f"key_{key.name}", readable(key.name), key.name, {
                "command_topic": topics.device_set(device_id, key.name),
                "max": min(spec.max_len, _TEXT_MAX) if spec.max_len is not None else _TEXT_MAX,
                "mode": "text",
                "icon": spec.ha_icon,
            })

    if may("ping", None):
        add("button", "ping", "Ping", "ping", {
            "command_topic": topics.device_press(device_id, "ping"),
            "payload_press": "PRESS",
            "entity_category": "diagnostic",
        })

    quoted = device_id.replace("\\", "\\\\").replace("'", "\\'")
    for counter, name, unit, state_class in _DIAGNOSTICS:
        add("sensor", f"stats_{counter}", name, counter, {
            "state_topic": topics.stats,
            "value_template": f"{{{{ value_json.devices['{quoted}'].{counter} }}}}",
            "unit_of_measurement": unit,
            "state_class": state_class,
            "entity_category": "diagnostic",
        })
    return configs


def _member(expression: str, name: str) -> str:
    """``expression.name`` in a template, or ``expression['name']`` where a dot would not
    reach the value: a name that is no identifier, or a dict method's (``items``, ``keys``:
    Jinja tries the attribute first)."""
    if name.isidentifier() and not hasattr(dict, name):
        return f"{expression}.{name}"
    return f"{expression}['{name}']"


def _number_range(spec: FieldSpec) -> tuple[float, float]:
    """A number's min and max: the key's bounds, else what its wire type holds."""
    held = spec.real_range
    if held is None:
        top = _F32_MAX if spec.type == "f32" else sys.float_info.max
        held = (-top, top)
    return (spec.min if spec.min is not None else held[0],
            spec.max if spec.max is not None else held[1])


def _step(spec: FieldSpec) -> float:
    """A number's step: its scale (an integer's 1 without one), at least HA's smallest."""
    if spec.scale is not None:
        return max(spec.scale, _STEP_MIN)
    return 1 if spec.type not in ("f32", "f64") else _STEP_MIN


def encode_config(config: dict[str, Any]) -> bytes:
    """A config as published: JSON, full key names, UTF-8 (``°C`` as it is)."""
    return json.dumps(config, ensure_ascii=False, separators=(",", ":")).encode()


class HomeAssistantDiscovery:
    """The retained discovery configs of the gateway and its devices: ``take`` every device
    state change in order, ``connected`` on every connection, ``on_message`` for what
    arrives on ``subscriptions``, ``acked`` for PUBACKs of non-event publishes."""

    def __init__(self, gateway: Gateway, mqtt: MqttConnection, topics: Topics,
                 settings: HomeAssistantSettings, config: GatewayConfig) -> None:
        self.gateway = gateway
        self.mqtt = mqtt
        self.topics = topics
        self.prefix = settings.discovery_prefix
        #: the ports by name: their allow lists say which controls are announced
        self._ports: Mapping[str, PortConfig] = {p.name: p for p in config.ports}
        #: the facts of each device last announced (to announce it again after a reload)
        self._facts: dict[str, dict[str, Any]] = {}
        self._birth_topic = f"{self.prefix}/status"
        self._gateway = {t: encode_config(c)
                         for t, c in gateway_configs(topics, self.prefix).items()}
        #: each device's configs as published (kept while it is offline: HA shows it
        #: unavailable): device id -> {config topic: body}
        self._devices: dict[str, dict[str, bytes]] = {}
        #: config topics to clear (an id that left, a config a profile no longer has):
        #: topic -> the generation of that clear (a topic may retire, return, retire again)
        self._retiring: dict[str, int] = {}
        self._generation = 0
        #: unacknowledged clears: mid -> (topic, generation)
        self._clear_mids: dict[int, tuple[str, int]] = {}
        self.published = 0
        self.cleared = 0
        self.births = 0
        self._unknown = Recurring(log, "Home Assistant discovery: a device that came online "
                                  "is no longer known (it left before its configs were built)",
                                  level=logging.DEBUG)
        self._odd_birth = Recurring(log, f"Home Assistant discovery: unexpected body on "
                                    f"{self._birth_topic} (expected online or offline)")
        self._announcing = Recurring(log, "Home Assistant said online: discovery configs "
                                     "published again", level=logging.INFO)

    @property
    def subscriptions(self) -> list[str]:
        """What the bridge subscribes to on every connection: HA's birth and will."""
        return [self._birth_topic]

    # ------------------------------------------------------------------ devices

    def take(self, event: StateChange | DeviceRenamed) -> None:
        """A device's state change: online announces it (its facts may be new), removal or a
        rename clears what its id had, anything else changes nothing."""
        if isinstance(event, DeviceRenamed):
            self._retire_device(event.old_id)
            return
        if event.state == "offline" and event.reason == "removed":
            self._retire_device(event.device_id)
            return
        if event.state != "online":
            return
        self._facts[event.device_id] = event.facts
        self._announce_device(event.device_id)

    def _announce_device(self, device_id: str) -> None:
        try:
            session = self.gateway.device(device_id)
        except UnknownDevice:
            self._unknown.occurred(device_id)
            return
        port = self._ports.get(session.settings.port_name)

        def may(action: str, key: str | None) -> bool:
            return port is not None and allowed(port, action, key)

        configs = {topic: encode_config(config) for topic, config in discovery_configs(
            session.profile, device_id, self._facts.get(device_id, {}), self.topics,
            self.prefix, may=may).items()}
        old = self._devices.get(device_id, {})
        self._devices[device_id] = configs
        for topic in old.keys() - configs.keys():
            self._retire(topic)  # the profile or the allow list changed: what went goes
        for topic, body in configs.items():
            if old.get(topic) == body and topic not in self._retiring:
                continue  # the same config again: nothing for HA to do
            self._retiring.pop(topic, None)
            self._publish(topic, body)

    def apply(self, config: GatewayConfig) -> None:
        """A reloaded configuration: controls follow the new allow lists at once."""
        self._ports = {p.name: p for p in config.ports}
        for device_id in list(self._devices):
            self._announce_device(device_id)

    def _retire_device(self, device_id: str) -> None:
        self._facts.pop(device_id, None)
        for topic in self._devices.pop(device_id, {}):
            self._retire(topic)

    def _retire(self, topic: str) -> None:
        self._generation += 1
        self._retiring[topic] = self._generation
        self._clear(topic)

    def _clear(self, topic: str) -> None:
        mid = self.mqtt.publish(topic, b"", retain=True, resend=False)
        if mid is not None:
            self.cleared += 1
            self._clear_mids[mid] = (topic, self._retiring[topic])

    def _publish(self, topic: str, body: bytes) -> None:
        if self.mqtt.publish(topic, body, retain=True, resend=False) is not None:
            self.published += 1

    def acked(self, mid: int) -> None:
        """A PUBACK of a non-event publish: a clear is done, if it was the latest one."""
        clear = self._clear_mids.pop(mid, None)
        if clear is not None and self._retiring.get(clear[0]) == clear[1]:
            del self._retiring[clear[0]]

    @property
    def retiring(self) -> tuple[str, ...]:
        """Config topics still to be cleared."""
        return tuple(self._retiring)

    # ------------------------------------------------------------------ connections

    def connected(self) -> None:
        """A new connection: unfinished clears again, then every config afresh."""
        self._clear_mids.clear()
        for topic in self._retiring:
            self._clear(topic)
        self._announce()

    def _announce(self) -> None:
        for topic, body in self._gateway.items():
            self._publish(topic, body)
        for configs in self._devices.values():
            for topic, body in configs.items():
                self._publish(topic, body)

    def on_message(self, message: Message) -> bool:
        """True if the message was HA's birth or will (``online`` announces everything
        again); False for any other topic."""
        if message.topic != self._birth_topic:
            return False
        body = message.payload.strip()
        if body == b"online":
            self.births += 1
            self._announcing.occurred()
            self._announce()
        elif body != b"offline":
            self._odd_birth.occurred(repr(body[:40]))
        return True

    def counters(self) -> dict[str, int]:
        """For the stats: configs published, clears published, HA births answered."""
        return {"configs_published": self.published, "configs_cleared": self.cleared,
                "births": self.births}
