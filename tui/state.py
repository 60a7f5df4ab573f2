"""What the dashboard knows of the fabric, fed by MQTT messages; no widgets in here.

Messages change the state and mark what changed; the screens redraw what is marked a few
times a second (never once per message), so 2,000 events/s cost a dict update each.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HISTORY_POINTS = 240  # per numeric field: 4 minutes at one STATUS a second
LOG_LINES = 200
#: what a device whose gateway is offline shows, whatever its own retained status says
STALE = "stale"
#: sort keys, in the order ``s`` cycles through them, and whether each sorts descending
SORTS: dict[str, bool] = {"device": False, "gateway": False, "state": False, "rx": True,
                          "errors": True}


@dataclass
class GatewayView:
    """One gateway seen on the broker."""

    gateway_id: str
    state: str = "unknown"
    #: why it is in that state, when not plainly online (``spool_error`` while degraded)
    reason: str = ""
    version: str = ""
    started_at: float | None = None
    mqtt: dict[str, Any] = field(default_factory=dict)
    uptime_s: float | None = None
    #: when this dashboard saw the gateway's status say offline (None while it is not)
    offline_since: float | None = None


@dataclass
class DeviceView:
    """One device: its status, its stats, its latest telemetry and recent history."""

    gateway_id: str
    device_id: str
    state: str = "unknown"
    reason: str = ""
    since: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)
    history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    last_event: float | None = None
    #: when its gateway went offline, while it is: the device's own status no longer holds
    gateway_offline_since: float | None = None

    @property
    def shown_state(self) -> str:
        """The state to show: ``stale`` while the gateway is offline, unless the device's
        own status already says offline (spec: a device's status holds only while its
        gateway's status is online)."""
        if self.gateway_offline_since is not None and self.state != "offline":
            return STALE
        return self.state

    @property
    def available(self) -> bool:
        """False when the device is offline or its gateway is: its rates are history."""
        return self.shown_state not in ("offline", STALE)

    @property
    def rx_fps(self) -> float | None:
        """Frames/s received from it, None when it is not available (the last stats
        before it went away would be a stale rate)."""
        return float(self.stats.get("rx_fps", 0) or 0) if self.available else None

    @property
    def key(self) -> tuple[str, str]:
        """(gateway, device): devices of different gateways may share ids."""
        return self.gateway_id, self.device_id

    @property
    def errors(self) -> int:
        """Checksum errors and discarded bytes (what the line lost)."""
        return int(self.stats.get("checksum_errors", 0)) + int(
            self.stats.get("discarded_bytes", 0))

    @property
    def last_seen(self) -> float | None:
        """The latest of the device's own last_seen and its last event."""
        seen = [t for t in (self.stats.get("last_seen"), self.last_event) if t]
        return max(seen) if seen else None

    def note(self, text: str, when: float | None = None) -> None:
        """A line in the device's log (events, LOG lines, requests and responses)."""
        stamp = time.strftime("%H:%M:%S", time.localtime(when or time.time()))
        self.log.append(f"{stamp} {text}")


class FabricState:
    """Gateways and devices under one topic prefix, updated by ``apply(topic, payload)``."""

    def __init__(self, prefix: str = "mcp/v1",
                 clock: Callable[[], float] = time.time) -> None:
        self.prefix = prefix.rstrip("/")
        #: wall-clock time for what the dashboard saw when (a fixed one for screenshots)
        self.clock = clock
        self.gateways: dict[str, GatewayView] = {}
        self.devices: dict[tuple[str, str], DeviceView] = {}
        #: devices whose row changed since ``take_changes`` (None: removed)
        self._changed: set[tuple[str, str]] = set()
        self._gateways_changed = False
        self.messages = 0
        self.bad_messages = 0

    def subscriptions(self, gateway: str | None = None) -> list[str]:
        """Topic filters for everything the dashboard shows (one gateway, or all)."""
        gw = gateway or "+"
        p = self.prefix
        return [f"{p}/{gw}/status", f"{p}/{gw}/stats", f"{p}/{gw}/devices/+/status",
                f"{p}/{gw}/devices/+/events/#"]

    def device(self, gateway_id: str, device_id: str) -> DeviceView:
        """The device, created on first sight."""
        key = (gateway_id, device_id)
        view = self.devices.get(key)
        if view is None:
            gateway = self.gateways.get(gateway_id)
            view = self.devices[key] = DeviceView(
                gateway_id, device_id,
                gateway_offline_since=gateway.offline_since if gateway else None)
        return view

    def gateway(self, gateway_id: str) -> GatewayView:
        """The gateway, created on first sight."""
        view = self.gateways.get(gateway_id)
        if view is None:
            view = self.gateways[gateway_id] = GatewayView(gateway_id)
            self._gateways_changed = True
        return view

    def apply(self, topic: str, payload: bytes, now: float | None = None) -> None:
        """Take one message; anything malformed is counted and ignored. ``now`` is when it
        arrived (default: the clock), for events without a timestamp and gateways going
        offline."""
        self.messages += 1
        if not topic.startswith(self.prefix + "/"):
            return
        parts = topic[len(self.prefix) + 1:].split("/")
        try:
            body = json.loads(payload) if payload else None
        except ValueError:
            self.bad_messages += 1
            return
        if body is not None and not isinstance(body, dict):
            self.bad_messages += 1
            return
        gw = parts[0]
        if len(parts) == 2 and parts[1] == "status":
            self._gateway_status(gw, body, self.clock() if now is None else now)
        elif len(parts) == 2 and parts[1] == "stats":
            self._stats(gw, body)
        elif len(parts) == 4 and parts[1] == "devices" and parts[3] == "status":
            self._device_status(gw, parts[2], body)
        elif len(parts) >= 5 and parts[1] == "devices" and parts[3] == "events":
            self._event(gw, parts[2], "/".join(parts[4:]), body, now)

    def _gateway_status(self, gw: str, body: dict[str, Any] | None, now: float) -> None:
        view = self.gateway(gw)
        if body is None:
            del self.gateways[gw]
            offline_since = None  # gone from the broker: nothing says its devices are stale
        else:
            view.state = str(body.get("state", "unknown"))
            view.reason = str(body.get("reason") or "")
            view.version = str(body.get("version", view.version))
            view.started_at = body.get("started_at", view.started_at)
            if view.state != "offline":
                view.offline_since = None
            elif view.offline_since is None:
                view.offline_since = now
            offline_since = view.offline_since
        self._gateways_changed = True
        for device in self.devices.values():
            if device.gateway_id == gw and device.gateway_offline_since != offline_since:
                if offline_since is not None and device.state != "offline":
                    device.note(f"stale: gateway {gw} offline", offline_since)
                device.gateway_offline_since = offline_since
                self._changed.add(device.key)

    def _stats(self, gw: str, body: dict[str, Any] | None) -> None:
        if body is None:
            return
        view = self.gateway(gw)
        view.mqtt = dict(body.get("mqtt") or {})
        view.uptime_s = body.get("uptime_s")
        self._gateways_changed = True
        for device_id, stats in (body.get("devices") or {}).items():
            if isinstance(stats, dict):
                device = self.device(gw, device_id)
                device.stats = stats
                self._changed.add(device.key)

    def _device_status(self, gw: str, device_id: str, body: dict[str, Any] | None) -> None:
        key = (gw, device_id)
        if body is None:  # a cleared retained status: the id is gone (renamed, removed)
            self.devices.pop(key, None)
            self._changed.add(key)
            return
        device = self.device(gw, device_id)
        state = str(body.get("state", "unknown"))
        if state != device.state:
            device.note(f"state {state} ({body.get('reason', '')})")
        device.state = state
        device.reason = str(body.get("reason", ""))
        device.since = body.get("since")
        device.facts = {k: v for k, v in body.items() if k not in ("state", "reason", "since")}
        self._changed.add(key)

    def _event(self, gw: str, device_id: str, name: str, body: dict[str, Any] | None,
               now: float | None) -> None:
        if body is None:
            return
        device = self.device(gw, device_id)
        fields = body.get("payload")
        when = body.get("timestamp") or now or self.clock()
        device.last_event = when
        if name == "log" and isinstance(fields, dict):
            device.note(f"LOG {fields.get('level', '')}: {fields.get('text', '')}", when)
        elif isinstance(fields, dict):
            if name == "status":
                device.telemetry = fields
                for key, value in fields.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        points = device.history.get(key)
                        if points is None:
                            points = device.history[key] = deque(maxlen=HISTORY_POINTS)
                        points.append((when, float(value)))
            else:
                device.note(f"event {name} {json.dumps(fields, ensure_ascii=False)}", when)
        self._changed.add(device.key)

    def take_changes(self) -> tuple[set[tuple[str, str]], bool]:
        """The devices changed since the last call, and whether any gateway changed."""
        changed, self._changed = self._changed, set()
        gateways, self._gateways_changed = self._gateways_changed, False
        return changed, gateways

    def counts(self) -> tuple[int, int, int]:
        """(online, stale, all) devices, by the state shown."""
        shown = [d.shown_state for d in self.devices.values()]
        return shown.count("online"), shown.count(STALE), len(shown)

    def rows(self, text: str = "", sort: str = "device") -> list[DeviceView]:
        """Devices matching ``text`` (in id, gateway, shown state, profile or model), sorted
        by one of ``SORTS`` (ties by device id)."""
        needle = text.lower().strip()
        views = [d for d in self.devices.values()
                 if not needle or needle in " ".join((
                     d.device_id, d.gateway_id, d.shown_state, str(d.facts.get("profile", "")),
                     str(d.facts.get("model", "")))).lower()]
        keys = {
            "device": lambda d: (d.device_id, d.gateway_id),
            "gateway": lambda d: (d.gateway_id, d.device_id),
            "state": lambda d: (d.shown_state, d.device_id),
            "rx": lambda d: (-(d.rx_fps or 0.0), d.device_id),
            "errors": lambda d: (-d.errors, d.device_id),
        }
        return sorted(views, key=keys.get(sort, keys["device"]))
