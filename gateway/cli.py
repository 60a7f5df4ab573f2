"""``mcp-gateway``: the command line. Each subcommand parses its options and hands over."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from firmware_sim import cli as sim_cli
from firmware_sim.device import Faults
from firmware_sim.fleet import Fleet, FleetSpec
from gateway import __version__
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.bridge.embedded import EmbeddedBroker
from gateway.bridge.mqtt import BrokerSettings, Message, MqttConnection
from gateway.config import load_config, parse_config
from gateway.errors import ConfigError, GatewayError
from gateway.frames import ProfileRegistry
from gateway.monitor import PortMonitor, monitor_ports
from gateway.reload import Reloader
from gateway.session import DeviceEvent, DeviceRenamed, StateChange

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


async def _until_stopped(duration: float | None) -> None:
    """Wait for SIGINT/SIGTERM, or for ``duration`` seconds if given."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)


async def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    log = logging.getLogger("mcp-gateway")
    gateway = Gateway(config)
    subscription = gateway.subscribe()  # before the ports open: no state change is missed

    def log_event(event: DeviceEvent) -> None:
        if isinstance(event, StateChange):
            log.info("%s is %s (%s) %s", event.device_id, event.state, event.reason,
                     json.dumps(event.facts, default=str))
        elif isinstance(event, DeviceRenamed):
            log.info("%s is now known as %s", event.old_id, event.device_id)
        else:
            log.info("%s %s %s", event.device_id, event.name, json.dumps(event.fields, default=str))

    async def log_events() -> None:
        async for event in subscription:
            log_event(event)

    events = asyncio.create_task(log_events(), name="log-events")
    async with contextlib.AsyncExitStack() as stack:
        if config.broker is not None and config.broker.embedded:
            await stack.enter_async_context(EmbeddedBroker(config.broker.url))
        bridge = None
        if config.broker is not None:
            # The bridge outlives the gateway: devices go offline on the fabric first.
            bridge = await stack.enter_async_context(Bridge(gateway, config))
        Reloader(args.config, gateway, bridge)  # the fabric's reload request re-reads the file
        await stack.enter_async_context(gateway)
        log.info("gateway %s running %d port(s); state in %s", config.gateway_id,
                 len(config.ports), config.state_dir)
        await _until_stopped(None)
    events.cancel()
    await asyncio.gather(events, return_exceptions=True)
    while not subscription.queue.empty():  # the devices going offline at shutdown
        log_event(subscription.get_nowait())
    return EXIT_OK


async def _monitor(args: argparse.Namespace) -> int:
    profile = ProfileRegistry().get(args.profile) if args.profile else None
    monitors = [
        PortMonitor(url, url, profile=profile, passive=args.passive, baudrate=args.baudrate)
        for url in args.ports
    ]
    task = asyncio.create_task(monitor_ports(monitors))
    await _until_stopped(args.duration)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return EXIT_OK


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _demo(args: argparse.Namespace) -> int:
    noisy = Faults(garbage_rate=0.05, garbage_max=8, corrupt_rate=0.02)
    url = f"mqtt://127.0.0.1:{args.port or _free_port()}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcp-demo-") as tmp:
        links = Path(tmp) / "dev"
        spec = FleetSpec(count=args.count, first_device_faults=noisy,
                         interval_ms=args.interval_ms, link_dir=links)
        config = parse_config({
            "gateway_id": "demo",
            "state_dir": str(Path(tmp) / "state"),
            "stats_interval_s": 2.0,
            "broker": {"url": url, "embedded": True},
            "ports": [{"name": f"sim-{i}", "path": str(links / f"sim-{i}"), "heartbeat_s": 2,
                       "allow": ["read", "ping", "write"]} for i in range(args.count)],
        })
        print(json.dumps({"demo": {"broker": url, "topics": f"{config.topic_prefix}/demo/#"}}),
              flush=True)

        def show(message: Message) -> None:
            try:
                body: Any = json.loads(message.payload)
            except ValueError:
                body = message.payload.decode("utf-8", "replace")
            print(json.dumps({"topic": message.topic, "payload": body}, ensure_ascii=False),
                  flush=True)

        async with EmbeddedBroker(url), Fleet(spec) as fleet:
            watcher = MqttConnection(BrokerSettings(url=url, protocol=3,
                                                    client_id="mcp-demo-watch"),
                                     on_message=show)
            watcher.on_connect = lambda: watcher.subscribe([f"{config.topic_prefix}/#"])
            watching = asyncio.create_task(watcher.run())
            gateway = Gateway(config)
            async with Bridge(gateway, config), gateway:
                await _until_stopped(args.duration)
            # The bridge has published every device and the gateway offline: let them show.
            await asyncio.sleep(0.3)
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            for device in fleet.devices:
                stats = {
                    "device": device.name,
                    "seconds": round(time.monotonic() - started, 1),
                    "frames_sent_by_device": device.counters.frames_sent,
                    "garbage_bytes_sent": device.counters.garbage_bytes_sent,
                    "corrupted_frames_sent": device.counters.corrupted_frames,
                    **gateway.device(device.name).counters(),
                }
                print(json.dumps({"stats": stats}), flush=True)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="mcp-gateway",
        description="Hardware gateway for serial and embedded MCP devices.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="stderr log level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="the service: open the configured ports and run the device sessions",
        description="Open every configured port, register devices, answer HELLO and PING, "
        "keep them alive and log their state changes and events, until SIGTERM/SIGINT.",
    )
    run.add_argument("--config", type=Path, required=True, metavar="FILE",
                     help="TOML configuration (see ../shared/spec/config.md)")

    demo = sub.add_parser(
        "demo",
        help="embedded broker + simulated devices + gateway; the fabric printed as JSON lines",
        description="Start an embedded MQTT broker, simulated env-sensor devices on "
        "pseudo-terminals (the first with light line noise) and the gateway with its MQTT "
        "bridge; print every message on the fabric as a JSON line, and a stats line per "
        "device at the end. Runs until Ctrl-C.",
    )
    demo.add_argument("--headless", action="store_true",
                      help="print events instead of a dashboard (the only mode so far)")
    demo.add_argument("--count", type=int, default=3, help="simulated devices (default 3)")
    demo.add_argument("--interval-ms", type=int, default=1000, help="STATUS period")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--port", type=int, help="embedded broker port (default: a free one)")

    monitor = sub.add_parser(
        "monitor",
        help="open serial ports and print every decoded frame",
        description="Open serial ports (paths or pyserial URLs such as socket://host:port), "
        "deframe and print each frame as a JSON line. Answers HELLO and PING unless --passive.",
    )
    monitor.add_argument("ports", nargs="+", metavar="PORT")
    monitor.add_argument("--profile", default="env-sensor", help="decode with this device profile")
    monitor.add_argument("--baudrate", type=int, default=115200)
    monitor.add_argument("--passive", action="store_true", help="never write to the ports")
    monitor.add_argument("--duration", type=float, help="stop after this many seconds")

    sim = sub.add_parser("sim", help="simulated devices (same as mcp-sim)",
                         description="Same as mcp-sim.")
    sim_cli.add_arguments(sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mcp-gateway``."""
    args = build_parser().parse_args(argv)
    # Printing to a closed pipe (``| head``) ends the program quietly, as Unix filters do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "run" and args.log_level == "WARNING":
        logging.getLogger().setLevel(logging.INFO)  # a service says what it does
    runners = {"run": _run, "demo": _demo, "monitor": _monitor, "sim": sim_cli.run}
    try:
        return asyncio.run(runners[args.command](args))
    except ConfigError as exc:
        print(f"mcp-gateway: configuration error in {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (GatewayError, ValueError) as exc:
        print(f"mcp-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
