"""The dashboard under load: 200 devices' statuses, stats and 2,000 events/s published
straight to Mosquitto by a child process; the dashboard (headless, Textual's test driver)
in this one. Prints the dashboard's CPU and RSS, and the delay from an event's publish to
the redraw that shows it.

    .venv/bin/python bench/dashboard.py [--devices 200] [--rate 2000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sessions import _percentiles, _rss_mib

from tests.mqtt_helpers import Mosquitto, _no_delay
from tui.app import DashboardApp

GW = "load"
P = f"mcp/v1/{GW}"


def _publisher(port: int, devices: int, rate: float, seconds: float, conn) -> None:
    """Child: statuses once (retained), then events at ``rate``/s and stats every second."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="load-pub",
                         protocol=paho.MQTTv5)
    client.on_socket_open = _no_delay
    client.connect("127.0.0.1", port)
    client.loop_start()
    names = [f"dev-{i:03d}" for i in range(devices)]
    client.publish(f"{P}/status", json.dumps({"state": "online", "version": "bench"}),
                   qos=1, retain=True)
    for name in names:
        client.publish(f"{P}/devices/{name}/status", json.dumps({
            "state": "online", "reason": "registered", "since": time.time(),
            "profile": "env-sensor", "model": "env-sensor", "fw": "1.2.3"}), qos=1, retain=True)
    conn.send("ready")
    assert conn.recv() == "go"
    start = time.monotonic()
    sent = 0
    next_stats = start
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - sent
        for _ in range(due):
            name = names[sent % devices]
            client.publish(f"{P}/devices/{name}/events/status", json.dumps({
                "timestamp": time.time(), "seq": sent, "payload": {
                    "temperature_c": 20 + sent % 50 / 10, "humidity_pct": 40.0,
                    "battery_mv": 3300, "uptime_s": int(elapsed)}}), qos=1)
            sent += 1
        if time.monotonic() >= next_stats:
            client.publish(f"{P}/stats", json.dumps({
                "uptime_s": elapsed, "mqtt": {"spooled": 0, "dropped": 0},
                "devices": {n: {"state": "online", "rx_fps": rate / devices, "retries": 0,
                                "checksum_errors": 0, "queue_depth": 0,
                                "last_seen": time.time()} for n in names}}), qos=0)
            next_stats += 1.0
        time.sleep(0.002)
    client.loop_stop()
    client.disconnect()
    conn.send(sent)


async def run(devices: int, rate: float, seconds: float, port: int) -> dict:
    parent, child = multiprocessing.Pipe()
    publisher = multiprocessing.Process(target=_publisher,
                                        args=(port, devices, rate, seconds, child), daemon=True)
    publisher.start()
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, parent.recv) == "ready"
    app = DashboardApp(f"mqtt://127.0.0.1:{port}", gateway=GW)
    delays: list[float] = []
    redraws = 0
    original = app.redraw

    def measured(now: float | None = None) -> None:
        nonlocal redraws
        now = time.time()
        changed = set(app.state._changed)
        original(now)
        redraws += 1
        for key in changed:
            device = app.state.devices.get(key)
            if device is not None and device.last_event:
                delays.append(now - device.last_event)

    app.redraw = measured  # type: ignore[method-assign]
    async with app.run_test(size=(160, 50)):
        deadline = loop.time() + 10
        while len(app.state.devices) < devices and loop.time() < deadline:
            await asyncio.sleep(0.05)
        delays.clear()
        cpu0, wall0, messages0 = os.times(), time.perf_counter(), app.state.messages
        parent.send("go")
        sent = await loop.run_in_executor(None, parent.recv)
        await asyncio.sleep(0.5)
        cpu1, wall1 = os.times(), time.perf_counter()
        received = app.state.messages - messages0
        shown = app.overview.query_one("DeviceTable").row_count
    publisher.join(10)
    elapsed = wall1 - wall0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"devices": devices, "rows_shown": shown, "events_sent": sent,
            "messages_received": received, "messages_per_s": round(received / elapsed),
            "redraws_per_s": round(redraws / elapsed, 1),
            "cpu_percent": round(100 * cpu / elapsed, 1), "rss_mib": round(_rss_mib(), 1),
            "publish_to_screen": _percentiles(delays)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--smoke", action="store_true",
                        help="a short run that proves the bench works; its numbers mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.devices, args.rate, args.seconds = 20, 200.0, 1.0
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            result = asyncio.run(run(args.devices, args.rate, args.seconds, broker.port))
        finally:
            broker.stop()
    delay = result["publish_to_screen"]
    print(f"dashboard with {result['devices']} devices ({result['rows_shown']} rows) at "
          f"{result['messages_per_s']:,} messages/s: CPU {result['cpu_percent']}%, RSS "
          f"{result['rss_mib']} MiB, {result['redraws_per_s']} redraws/s; publish to screen "
          f"p50 {delay['p50_ms']} ms, p99 {delay['p99_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
