"""``mcp-gateway demo``: the service (``service.Service``, exactly as ``run`` runs it) on a
generated configuration, with an embedded broker and simulated devices started around it.

Only this is the demo's own: the configuration (in a temporary directory, pointing at the
simulated ports), the broker and the simulator fleet, and what is shown: the dashboard,
or (headless) every message on the fabric as a JSON line and a stats line per device at
the end. The simulator is the project's test tool, not the product's: it is imported here,
when a demo starts, and nowhere else in the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from gateway.bridge.embedded import EmbeddedBroker
from gateway.bridge.mqtt import BrokerSettings, Message, MqttConnection
from gateway.bridge.topics import Topics
from gateway.config import load_config
from gateway.errors import GatewayError
from gateway.service import Service

if TYPE_CHECKING:
    from firmware_sim.fleet import Fleet

GATEWAY_ID = "demo"
#: the first device's line noise: a little garbage between frames, a few bad checksums
NOISE = {"garbage_rate": 0.05, "garbage_max": 8, "corrupt_rate": 0.02}
#: how long the headless watcher may take to show the gateway's last "offline"
LAST_WORDS_S = 2.0
#: how long the headless watcher may take to subscribe before the gateway connects
SUBSCRIBE_S = 5.0


class SimulatorMissing(GatewayError):
    """The demo needs the simulator (``firmware_sim``), and it is not installed."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``mcp-gateway demo`` was asked for."""

    headless: bool
    count: int = 3
    interval_ms: int = 1000
    duration: float | None = None
    #: the embedded broker's port (None: a free one)
    port: int | None = None


def free_port() -> int:
    """A TCP port on loopback nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_config(directory: Path, url: str, count: int) -> dict[str, Any]:
    """The demo gateway's configuration file, as data: ``count`` simulated ports under
    ``directory/dev``, its state in ``directory/state``, the broker at ``url``: the
    embedded one (MQTT 3.1.1 only), started by the demo around the service rather than by
    the service (``embedded = true``), so that the headless watcher subscribes before the
    gateway connects."""
    links = directory / "dev"
    return {
        "gateway_id": GATEWAY_ID,
        "state_dir": str(directory / "state"),
        "stats_interval_s": 2.0,
        "broker": {"url": url, "protocol": 3},
        "ports": [{"name": f"sim-{i}", "path": str(links / f"sim-{i}"), "heartbeat_s": 2,
                   "allow": ["read", "ping", "write"]} for i in range(count)],
    }


class FabricPrinter:
    """The headless view: every message on the fabric printed as a JSON line, from a
    client subscribed before the gateway connects."""

    def __init__(self, url: str, prefix: str) -> None:
        self.status_topic = Topics(prefix, GATEWAY_ID).status
        self._subscribed = asyncio.Event()
        #: the gateway's last status printed says offline (its clean stop's last word)
        self._offline = asyncio.Event()
        self._conn = MqttConnection(
            BrokerSettings(url=url, protocol=3, client_id="mcp-demo-watch"),
            on_message=self._show, on_subscribed=self._subscribed.set)
        self._conn.on_connect = lambda: self._conn.subscribe([f"{prefix}/#"])
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FabricPrinter:
        self._task = asyncio.get_running_loop().create_task(self._conn.run(),
                                                            name="demo-watch")
        # Subscribed before the gateway connects: amqtt hands a client that subscribes while
        # a retained message is being stored both the stored and the live copy (the
        # gateway's status would be printed twice).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUBSCRIBE_S):
                await self._subscribed.wait()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def last_words(self) -> None:
        """Wait (a moment at most) until the gateway's clean stop, devices then gateway
        offline, has been printed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LAST_WORDS_S):
                await self._offline.wait()

    def _show(self, message: Message) -> None:
        try:
            body: Any = json.loads(message.payload)
        except ValueError:
            body = message.payload.decode("utf-8", "replace")
        print(json.dumps({"topic": message.topic, "payload": body}, ensure_ascii=False),
              flush=True)
        if message.topic == self.status_topic and isinstance(body, dict):
            if body.get("state") == "offline":
                self._offline.set()
            else:
                self._offline.clear()


async def run_demo(options: DemoOptions) -> int:
    """The demo until Ctrl-C / SIGTERM, ``options.duration``, or the dashboard quits: the
    service's exit code (1 when a task of its bridge failed)."""
    try:
        from firmware_sim.device import Faults  # noqa: PLC0415 - the test tool, only here
        from firmware_sim.fleet import Fleet, FleetSpec  # noqa: PLC0415
    except ImportError:
        raise SimulatorMissing("the demo needs the simulator (firmware_sim), which is not "
                               "installed") from None
    url = f"mqtt://127.0.0.1:{options.port or free_port()}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcp-demo-") as tmp:
        directory = Path(tmp)
        path = directory / "gateway.toml"  # a real file: SIGHUP reloads it, as in ``run``
        path.write_text(tomli_w.dumps(demo_config(directory, url, options.count)),
                        encoding="utf-8")
        config = load_config(path, check_state_dir=True)
        if options.headless:
            print(json.dumps({"demo": {"broker": url,
                                       "topics": f"{config.topic_prefix}/{GATEWAY_ID}/#"}}),
                  flush=True)
        spec = FleetSpec(count=options.count, first_device_faults=Faults(**NOISE),
                         interval_ms=options.interval_ms, link_dir=directory / "dev")
        async with EmbeddedBroker(url), Fleet(spec) as fleet:
            service = Service(path, config)
            if options.headless:
                async with FabricPrinter(url, config.topic_prefix) as printer:
                    code = await _headless(service, options.duration)
                    await printer.last_words()
            else:
                code = await _with_dashboard(service, url, options.duration)
            _print_stats(fleet, service, time.monotonic() - started)
    return code


async def _headless(service: Service, duration: float | None) -> int:
    if duration:
        asyncio.get_running_loop().call_later(duration, service.stop)
    return await service.run()  # its SIGINT/SIGTERM handlers stop it cleanly


async def _with_dashboard(service: Service, url: str, duration: float | None) -> int:
    from tui.app import DashboardApp  # noqa: PLC0415 - Textual loads only when shown

    app = DashboardApp(url, gateway=GATEWAY_ID, protocol=3)
    if duration:
        asyncio.get_running_loop().call_later(duration, app.exit)
    running = asyncio.create_task(service.run(), name="service")
    showing = asyncio.create_task(app.run_async(), name="dashboard")
    try:
        await asyncio.wait((running, showing), return_when=asyncio.FIRST_COMPLETED)
        if not showing.done():  # SIGTERM, or the service failed: the dashboard goes too
            app.exit()
        await showing
    finally:
        service.stop()  # the dashboard quit: the gateway stops cleanly
        code = await running
    return code


def _print_stats(fleet: Fleet, service: Service, seconds: float) -> None:
    for device in fleet.devices:
        stats = {
            "device": device.name,
            "seconds": round(seconds, 1),
            "frames_sent_by_device": device.counters.frames_sent,
            "garbage_bytes_sent": device.counters.garbage_bytes_sent,
            "corrupted_frames_sent": device.counters.corrupted_frames,
            **service.gateway.device(device.name).counters(),
        }
        print(json.dumps({"stats": stats}), flush=True)


def headless_wanted(asked: bool) -> bool:
    """Headless when asked, or when there is no terminal for the dashboard (CI, a pipe):
    said on stderr in that case."""
    if asked:
        return True
    if sys.stdout.isatty() and sys.stdin.isatty():
        return False
    print("mcp-gateway demo: no terminal for the dashboard; printing the fabric "
          "(--headless)", file=sys.stderr)
    return True
