"""The stats on a Prometheus endpoint (off unless configured; loopback by default).

Scrapes never read live state from another thread: counters come from the snapshot the
bridge takes every stats interval, device states from a snapshot the bridge replaces (on
its loop) whenever a device changes state, and telemetry from a dict the loop only stores
into, copied whole under the GIL at each scrape.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.errors import MetricsUnavailable
from gateway.frames import Command, DeviceProfile
from gateway.session import DeviceState

_DEVICE_COUNTERS = ("rx_frames", "tx_frames", "rx_bytes", "checksum_errors", "discarded_bytes",
                    "timeouts", "retries")
#: ms720 devices only
_LINK_COUNTERS = ("link_retransmits", "link_lost", "link_duplicates", "link_gaps_skipped")
#: every state a device can be in: one ``mcp_device_state`` series each, so none appears or
#: disappears when a device changes state (the Prometheus "enum" convention)
_STATES = tuple(str(state) for state in DeviceState)


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What a scrape shows of one device besides its counters."""

    state: str
    #: the numeric fields of its profile's STATUS event, and their units ("" if none)
    units: Mapping[str, str]


def status_units(profile: DeviceProfile) -> dict[str, str]:
    """The numeric STATUS fields of a profile (bool, text and bytes excluded) and units."""
    spec = profile.events.get(Command.STATUS)
    if spec is None:
        return {}
    return {f.name: f.unit or "" for f in spec.layout.fields if f.is_numeric}


class StatsCollector(Collector):
    """Turns the ``{p}/{gw}/stats`` body, the device states and the latest STATUS fields
    into metric families."""

    def __init__(self, snapshot: Callable[[], dict[str, Any] | None], gateway_id: str, *,
                 devices: Callable[[], Mapping[str, DeviceView]] = dict,
                 telemetry: Callable[[], dict[str, dict[str, Any]]] = dict) -> None:
        self._snapshot = snapshot
        self._devices = devices
        self._telemetry = telemetry
        self._gateway = gateway_id

    def collect(self) -> Iterator[Any]:
        devices = self._devices()  # replaced, never changed, by the bridge: safe to read
        yield from self._device_states(devices)
        yield self._latest_telemetry(devices)
        stats = self._snapshot()
        if stats:
            yield from self._stats(stats)

    def _device_states(self, devices: Mapping[str, DeviceView]) -> Iterator[Any]:
        gw = self._gateway
        online = GaugeMetricFamily("mcp_device_online", "1 when the device is online",
                                   labels=["gateway", "device"])
        state = GaugeMetricFamily("mcp_device_state", "1 for the state the device is in, "
                                  "0 for the others", labels=["gateway", "device", "state"])
        for device, view in devices.items():
            online.add_metric([gw, device], 1.0 if view.state == "online" else 0.0)
            for name in _STATES:
                state.add_metric([gw, device, name], 1.0 if view.state == name else 0.0)
        yield online
        yield state

    def _latest_telemetry(self, devices: Mapping[str, DeviceView]) -> GaugeMetricFamily:
        gw = self._gateway
        family = GaugeMetricFamily("mcp_telemetry", "The latest value of a numeric field of "
                                   "the device's STATUS event",
                                   labels=["gateway", "device", "field", "unit"])
        # dict.copy() runs in C under the GIL: the loop's stores cannot interleave with it.
        latest = self._telemetry().copy()
        for device, view in devices.items():
            fields = latest.get(device)
            if not fields:
                continue
            for name, unit in view.units.items():
                value = fields.get(name)
                # A frame that did not decode carries raw_hex and no fields: nothing to show.
                if isinstance(value, int | float) and not isinstance(value, bool):
                    family.add_metric([gw, device, name, unit], float(value))
        return family

    def _stats(self, stats: dict[str, Any]) -> Iterator[Any]:
        gw = self._gateway
        for name in (*_DEVICE_COUNTERS, *_LINK_COUNTERS):
            family = CounterMetricFamily(f"mcp_device_{name}", f"Device {name.replace('_', ' ')}",
                                         labels=["gateway", "device"])
            for device, values in stats["devices"].items():
                if name in values:
                    family.add_metric([gw, device], values[name])
            yield family
        for name, help_text in (("queue_depth", "Requests queued or in flight"),
                                ("rx_fps", "Frames received per second")):
            gauge = GaugeMetricFamily(f"mcp_device_{name}", help_text, labels=["gateway", "device"])
            for device, values in stats["devices"].items():
                gauge.add_metric([gw, device], values[name])
            yield gauge
        mqtt = stats["mqtt"]
        yield GaugeMetricFamily("mcp_mqtt_connected", "1 when connected to the broker",
                                value=1.0 if mqtt["connected"] else 0.0)
        for name in ("published", "dropped", "rejected", "reconnects", "failovers", "requests",
                     "invalid_requests", "requests_busy", "requests_withheld", "not_durable"):
            yield CounterMetricFamily(f"mcp_mqtt_{name}", f"MQTT {name.replace('_', ' ')}",
                                      value=mqtt[name])
        yield GaugeMetricFamily("mcp_spool_writable", "1 while the on-disk event queue can be "
                                "written (0: degraded, events not durable)",
                                value=0.0 if mqtt["spool_error"] else 1.0)
        yield GaugeMetricFamily("mcp_mqtt_spooled", "Events waiting in the on-disk queue",
                                value=mqtt["spooled"])
        yield GaugeMetricFamily("mcp_uptime_seconds", "Gateway uptime", value=stats["uptime_s"])


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of ``host:port`` or ``[v6]:port``; an empty host means loopback."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    return host or "127.0.0.1", int(port)


def serve_metrics(address: str, collector: StatsCollector) -> Callable[[], None]:
    """Serve ``/metrics`` on ``host:port``; returns the function that stops it.

    ``MetricsUnavailable`` says why it cannot listen there (in use, not an address of this
    host, a name that does not resolve), so the caller can name its setting.
    """
    host, port = split_address(address)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except socket.gaierror as exc:
        raise MetricsUnavailable(address, f"the host name does not resolve ({exc.strerror})") \
            from None
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            reason += " (another program, or another gateway, listens there)"
        elif isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
            reason += " (not an address of this host)"
        raise MetricsUnavailable(address, reason) from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
