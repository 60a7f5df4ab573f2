"""The stats on a Prometheus endpoint (off unless configured; loopback by default).

Scrapes read the snapshot the bridge takes every stats interval, never live state from
another thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

_DEVICE_COUNTERS = ("rx_frames", "tx_frames", "rx_bytes", "checksum_errors", "discarded_bytes",
                    "timeouts", "retries")
#: ms720 devices only
_LINK_COUNTERS = ("link_retransmits", "link_lost", "link_duplicates", "link_gaps_skipped")


class StatsCollector(Collector):
    """Turns the ``{p}/{gw}/stats`` body into metric families."""

    def __init__(self, snapshot: Callable[[], dict[str, Any] | None], gateway_id: str) -> None:
        self._snapshot = snapshot
        self._gateway = gateway_id

    def collect(self) -> Iterator[Any]:
        stats = self._snapshot()
        if not stats:
            return
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
        online = GaugeMetricFamily("mcp_device_online", "1 when the device is online",
                                   labels=["gateway", "device", "state"])
        for device, values in stats["devices"].items():
            online.add_metric([gw, device, values["state"]], 1.0 if values["state"] == "online"
                              else 0.0)
        yield online
        mqtt = stats["mqtt"]
        yield GaugeMetricFamily("mcp_mqtt_connected", "1 when connected to the broker",
                                value=1.0 if mqtt["connected"] else 0.0)
        for name in ("published", "dropped", "rejected", "reconnects", "requests",
                     "invalid_requests"):
            yield CounterMetricFamily(f"mcp_mqtt_{name}", f"MQTT {name.replace('_', ' ')}",
                                      value=mqtt[name])
        yield GaugeMetricFamily("mcp_mqtt_spooled", "Events waiting in the on-disk queue",
                                value=mqtt["spooled"])
        yield GaugeMetricFamily("mcp_uptime_seconds", "Gateway uptime", value=stats["uptime_s"])


def serve_metrics(address: str, collector: StatsCollector) -> Callable[[], None]:
    """Serve ``/metrics`` on ``host:port``; returns the function that stops it."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
