"""The gateway's stats: the ``{p}/{gw}/stats`` body, published (retained, QoS 0) every
``stats_interval_s``, and what Prometheus scrapes (the last stats, each device's state and
its latest STATUS fields), served from snapshots so a scrape never reads a changing dict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.app import Gateway
from gateway.bridge.envelope import encode_json
from gateway.bridge.metrics import DeviceView, StatsCollector, serve_metrics, status_units
from gateway.bridge.mqtt import MqttConnection
from gateway.bridge.publisher import EventPublisher
from gateway.bridge.requests import RequestServer
from gateway.bridge.statuses import RetainedStatuses
from gateway.bridge.topics import Topics
from gateway.config import GatewayConfig

log = logging.getLogger(__name__)

#: the per-device counters of the stats body (besides ``rx_fps`` and the ``link_*`` ones)
_DEVICE_COUNTERS = ("state", "rx_frames", "tx_frames", "rx_bytes", "checksum_errors",
                    "discarded_bytes", "timeouts", "retries", "queue_depth", "last_seen")


class StatsReporter:
    """``stats()`` is the body; ``run`` the loop that publishes it (a bridge task)."""

    def __init__(self, gateway: Gateway, config: GatewayConfig, *, mqtt: MqttConnection,
                 topics: Topics, publisher: EventPublisher, statuses: RetainedStatuses,
                 request_server: RequestServer,
                 integrations: dict[str, Callable[[], dict[str, Any]]] | None = None) -> None:
        self.gateway = gateway
        self.config = config
        self.mqtt = mqtt
        self.topics = topics
        self.publisher = publisher
        self.statuses = statuses
        self.request_server = request_server
        #: the enabled integrations' counters, by name (``homeassistant``, ``sparkplug``)
        self.integrations = integrations or {}
        self._loop = asyncio.get_running_loop()
        self._last_rx: dict[str, tuple[float, int]] = {}
        #: the stats of the last interval (what Prometheus scrapes)
        self.last_stats: dict[str, Any] | None = None
        #: each device's state for Prometheus: replaced (never changed) on every change
        self.device_views: dict[str, DeviceView] = {}
        self._stop_metrics: Callable[[], None] | None = None

    def apply(self, config: GatewayConfig) -> None:
        """A reloaded configuration: the next interval is the new one."""
        self.config = config

    def serve_metrics(self) -> None:
        """Listen for Prometheus scrapes if the configuration names an address
        (``MetricsUnavailable`` if it cannot be listened on)."""
        if not self.config.metrics_address:
            return
        publisher = self.publisher
        collector = StatsCollector(lambda: self.last_stats, self.config.gateway_id,
                                   devices=lambda: self.device_views,
                                   telemetry=lambda: publisher.latest_status)
        self._stop_metrics = serve_metrics(self.config.metrics_address, collector)
        log.info("metrics on http://%s/metrics", self.config.metrics_address)

    def close(self) -> None:
        """Stop serving scrapes."""
        if self._stop_metrics is not None:
            self._stop_metrics()
            self._stop_metrics = None

    def refresh_device_views(self) -> None:
        """A new snapshot of every device's state for scrapes (a state changed)."""
        self.device_views = {name: DeviceView(str(session.state), status_units(session.profile))
                             for name, session in self.gateway.devices.items()}

    def stats(self) -> dict[str, Any]:
        """The ``{p}/{gw}/stats`` body."""
        now = self._loop.time()
        devices = {}
        for name, session in self.gateway.devices.items():
            counters = session.counters()
            last = self._last_rx.get(name)
            rx = counters["rx_frames"]
            rate = (rx - last[1]) / (now - last[0]) if last and now > last[0] else 0.0
            self._last_rx[name] = (now, rx)
            devices[name] = {key: counters[key] for key in _DEVICE_COUNTERS}
            devices[name]["rx_fps"] = round(rate, 1)
            devices[name].update((k, v) for k, v in counters.items() if k.startswith("link_"))
        publisher = self.publisher
        integrations = {name: counters() for name, counters in self.integrations.items()}
        return {
            **integrations,
            "uptime_s": round(time.time() - self.statuses.started_at, 1),
            "devices": devices,
            "mqtt": {
                "connected": self.mqtt.connected,
                "published": publisher.published,
                "spooled": publisher.spool.count,
                "dropped": publisher.spool.dropped,
                "not_durable": publisher.not_durable,
                "spool_error": self.statuses.spool_error,
                "rejected": publisher.rejected,
                "reconnects": self.mqtt.reconnects,
                "node": self.mqtt.url,
                "failovers": self.mqtt.failovers,
                **self.request_server.counters(),
            },
        }

    async def run(self) -> None:
        """Publish the stats every interval until cancelled."""
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            self.last_stats = stats = self.stats()
            self.refresh_device_views()  # also devices that have not changed state yet
            self.mqtt.publish(self.topics.stats, encode_json(stats), qos=0, retain=True)
