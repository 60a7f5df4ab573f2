"""Many gateways on one fabric (issue 18, "Measure"): ``--gateways`` ``mcp-gateway run``
processes with ``--devices`` simulated devices each (one ``mcp-sim`` over ptys) on one
Mosquitto. Prints the total events/s a subscriber receives, each gateway's CPU (from
/proc/PID/stat) and RSS, the events lost (per-device seq gaps at the subscriber, and
acknowledged by the gateways but never received), and what the gateway_id probe adds to a
start (claim.py).

    .venv/bin/python bench/fleet.py [--gateways 10] [--devices 4] [--interval-ms 50] [--seconds 20]

Parts (``--only``): ``fleet``, the above; ``failover``: one gateway with ``--devices``
devices on a RabbitMQ cluster (``[broker] urls``, MQTT 3.1.1), the node it is on killed
``--failovers`` times (and started again); failover time p50/p99 (the kill -> the first event
read at the gateway after it, received on a surviving node) and events lost across them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.bridge.claim import probe
from gateway.bridge.mqtt import BrokerSettings
from gateway.bridge.topics import Topics
from gateway.errors import GatewayIdInUse
from tests.broker_cluster import RabbitCluster, rabbitmq_server
from tests.mqtt_helpers import Mosquitto

BIN = Path(sys.executable).parent
PREFIX = "mcp/v1"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _wait(predicate, limit_s: float, what: str) -> Any:
    deadline = time.monotonic() + limit_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


class EventLog:
    """``mosquitto_sub`` (a C client: the gateways get the CPU) writing every event with its
    arrival time to a file, read incrementally."""

    def __init__(self, port: int, path: Path) -> None:
        self._out = path.open("wb")
        self.path = path
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1",
             "-i", "fleet-bench-sub", "-t", f"{PREFIX}/+/devices/+/events/#",
             "-F", "%U %t %p"], stdout=self._out)
        self._read = 0
        self._rest = b""
        #: (gateway, device) -> seqs seen; arrival times of every event
        self.seqs: dict[tuple[str, str], set[int]] = {}
        self.arrivals: list[float] = []

    def poll(self) -> None:
        with self.path.open("rb") as data:
            data.seek(self._read)
            chunk = data.read()
        self._read += len(chunk)
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            arrived, topic, payload = line.split(b" ", 2)
            parts = topic.split(b"/")
            key = (parts[2].decode(), parts[4].decode())
            self.seqs.setdefault(key, set()).add(json.loads(payload)["seq"])
            self.arrivals.append(float(arrived))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its SIGTERM handler can deadlock (bench/e2e.py)
            self.proc.wait(5)
        self._out.close()
        self.poll()


class RetainedStats:
    """Every gateway's retained stats, as they come (paho in its own thread)."""

    def __init__(self, port: int) -> None:
        self.stats: dict[str, dict] = {}
        #: when each gateway's latest stats came (time.monotonic)
        self.came: dict[str, float] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fleet-bench-stats")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(f"{PREFIX}/+/stats", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        if message.payload:
            gateway = message.topic.split("/")[2]
            self.stats[gateway] = json.loads(message.payload)
            self.came[gateway] = time.monotonic()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _config(tmp: Path, gateway_id: str, paths: list[str], url: str) -> Path:
    text = (f'gateway_id = "{gateway_id}"\nstate_dir = "{tmp / gateway_id}"\n'
            f'stats_interval_s = 1\nlog_level = "WARNING"\n[broker]\nurl = "{url}"\n')
    for j, path in enumerate(paths):
        text += f'[[ports]]\nname = "sensor-{j}"\npath = "{path}"\n'
    config = tmp / f"{gateway_id}.toml"
    config.write_text(text)
    return config


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
            "n": len(ordered)}


async def _probe_times(url: str, held: str, count: int) -> dict[str, Any]:
    """What the probe adds to a start: for a free id (no status: the normal first start),
    for an id whose status says offline (a restart), and for an id a live gateway holds
    (until the refusal)."""
    settings = BrokerSettings(url=url, client_id="mcp-gateway-bench-probe")
    result: dict[str, Any] = {}
    for name, gateway_id in (("free", "never-seen"), ("offline", "stopped-one")):
        times = []
        for _ in range(count):
            found = await probe(settings, Topics(PREFIX, gateway_id))
            times.append(found.took_s)
        result[name] = _percentiles(times)
    times = []
    for _ in range(max(3, count // 4)):
        began = time.monotonic()
        with contextlib.suppress(GatewayIdInUse):
            await probe(settings, Topics(PREFIX, held))
            raise RuntimeError(f"the probe did not find {held} in use")
        times.append(time.monotonic() - began)
    result["held_refused"] = _percentiles(times)
    return result


def fleet(args: argparse.Namespace, tmp: Path, broker: Mosquitto) -> dict[str, Any]:
    """The fleet part: every gateway streaming, measured over ``--seconds``."""
    count = args.gateways * args.devices
    sim = subprocess.Popen(
        [str(BIN / "mcp-sim"), "--pty", "--count", str(count), "--interval-ms",
         str(args.interval_ms)], stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    paths = [sim.stdout.readline().split()[1] for _ in range(count)]
    events = EventLog(broker.port, tmp / "events.txt")
    stats = RetainedStats(broker.port)
    # A retained offline status, as a gateway stopped cleanly leaves it (the probe's
    # restart case).
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="fleet-bench-status")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    publisher.publish(f"{PREFIX}/stopped-one/status", b'{"state":"offline"}', qos=1,
                      retain=True).wait_for_publish(5)
    publisher.loop_stop()
    publisher.disconnect()
    names = [f"edge-{i:02d}" for i in range(args.gateways)]
    gateways: dict[str, subprocess.Popen] = {}
    began = time.monotonic()
    try:
        for i, name in enumerate(names):
            config = _config(tmp, name, paths[i * args.devices:(i + 1) * args.devices],
                             broker.url)
            gateways[name] = subprocess.Popen(
                [str(BIN / "mcp-gateway"), "run", "--config", str(config)],
                stderr=(tmp / f"{name}.log").open("wb"))

        def every_device_streams() -> bool:
            events.poll()
            return len(events.seqs) == count

        _wait(every_device_streams, 60, "events from every device")
        all_streaming_s = time.monotonic() - began
        cpu0 = {name: _cpu_s(proc.pid) for name, proc in gateways.items()}
        others = {"simulator": sim.pid, "mosquitto": broker.proc.pid,
                  "subscriber": events.proc.pid}
        others0 = {name: _cpu_s(pid) for name, pid in others.items()}
        events.poll()
        start, received0 = time.monotonic(), len(events.arrivals)
        time.sleep(args.seconds)
        events.poll()
        window = time.monotonic() - start
        received = len(events.arrivals) - received0
        cpu = {name: round((_cpu_s(proc.pid) - cpu0[name]) / window * 100, 1)
               for name, proc in gateways.items()}
        rss = {name: _rss_mib(proc.pid) for name, proc in gateways.items()}
        others_cpu = {name: round((_cpu_s(pid) - others0[name]) / window * 100, 1)
                      for name, pid in others.items()}
        probe_times = asyncio.run(_probe_times(broker.url, names[0], args.probes))
        # The end: no more frames, then every gateway's queue empty and its count settled.
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
        quiet = time.monotonic() + 0.5  # the last frames in the ptys taken by then

        def drained() -> bool:
            return all(stats.came.get(n, 0) > quiet
                       and stats.stats[n].get("mqtt", {}).get("spooled", 1) == 0
                       for n in names)

        _wait(drained, 30, "every gateway's queue empty")
        for proc in gateways.values():
            proc.send_signal(signal.SIGTERM)
        codes = {name: proc.wait(20) for name, proc in gateways.items()}
        published = {n: stats.stats.get(n, {}).get("mqtt", {}).get("published", 0)
                     for n in names}
    finally:
        for proc in gateways.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if sim.poll() is None:
            sim.kill()
            sim.wait()
        stats.stop()
    # Every event the gateways published is acknowledged by the broker, and reaches the
    # subscriber (QoS 1) before the gateway's clean stop completes.
    _wait(lambda: (events.poll(), sum(len(s) for s in events.seqs.values())
                   >= sum(published.values()))[1], 10, "the subscriber to catch up")
    events.stop()
    gaps = sum(max(s) - min(s) + 1 - len(s) for s in events.seqs.values())
    per_gateway = {n: sum(len(s) for (g, _), s in events.seqs.items() if g == n)
                   for n in names}
    return {
        "gateways": args.gateways, "devices_per_gateway": args.devices,
        "interval_ms": args.interval_ms, "seconds": round(window, 2),
        "events_per_s": round(received / window),
        "events_per_s_per_gateway": round(received / window / args.gateways, 1),
        "gateway_cpu_percent": cpu, "gateway_rss_mib": rss,
        "gateway_cpu_percent_mean": round(statistics.mean(cpu.values()), 1),
        "gateway_rss_mib_mean": round(statistics.mean(rss.values()), 1),
        "other_cpu_percent": others_cpu,
        "seq_gaps": gaps,
        "events_lost": sum(max(0, published[n] - per_gateway[n]) for n in names),
        "events_received": sum(per_gateway.values()),
        "all_streaming_after_s": round(all_streaming_s, 2),
        "exit_codes": sorted(set(codes.values())),
        "probe": probe_times,
    }


class _NodeConsumer:
    """A paho client on one cluster node: every event's (device, seq) with its arrival
    time, and the gateway's latest stats (delivered live; RabbitMQ keeps retained messages
    per node)."""

    def __init__(self, port: int, prefix: str) -> None:
        #: (arrival, device, seq, the event's timestamp: its frame's arrival at the gateway)
        self.events: list[tuple[float, str, int, float]] = []
        #: the gateway's latest stats and when they came
        self.stats: tuple[float, dict[str, Any]] | None = None
        self._prefix = prefix
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311,
                                  client_id=f"bench-consumer-{port}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{prefix}/#", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        if "/events/" in message.topic:
            device = message.topic.split("/")[4]
            body = json.loads(message.payload)
            self.events.append((time.monotonic(), device, body["seq"], body["timestamp"]))
        elif message.topic == f"{self._prefix}/stats" and message.payload:
            self.stats = (time.monotonic(), json.loads(message.payload))

    def stop(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


def failover(args: argparse.Namespace, tmp: Path, broker: Mosquitto) -> dict[str, Any]:
    """One gateway (``--devices`` devices) on a RabbitMQ cluster; the node it is on is
    killed ``--failovers`` times (and started again), a consumer on every node. Failover
    time: the kill -> the first event read at the gateway after it, received on a surviving
    node (so: connected, subscribed, and publishing there)."""
    if rabbitmq_server() is None:
        raise SystemExit("bench/fleet.py --only failover needs RabbitMQ "
                         "(apt install rabbitmq-server; ./dev system-deps does)")
    nodes = 2 if args.failovers == 1 else 3  # three ride through one down, and restart
    gateway_id = "bench-fo"
    prefix = f"{PREFIX}/{gateway_id}"
    with RabbitCluster(tmp / "rabbitmq", nodes=nodes) as cluster:
        consumers = [_NodeConsumer(port, prefix) for port in cluster.mqtt_ports]
        links = tmp / "fo-links"
        sim = subprocess.Popen(
            [str(BIN / "mcp-sim"), "--pty", "--count", str(args.devices), "--link-dir",
             str(links), "--interval-ms", str(args.interval_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        links_made = [sim.stdout.readline().split()[0] for _ in range(args.devices)]
        path = _config(tmp, gateway_id, [str(links / name) for name in links_made],
                       cluster.urls[0])
        path.write_text(path.read_text()
                        .replace("stats_interval_s = 1\n", "stats_interval_s = 0.2\n")
                        .replace(f'url = "{cluster.urls[0]}"',
                                 f"urls = {json.dumps(cluster.urls)}\nprotocol = 3"))
        names = [f"sensor-{j}" for j in range(args.devices)]
        gw = subprocess.Popen([str(BIN / "mcp-gateway"), "run", "--config", str(path)],
                              stderr=subprocess.DEVNULL)
        times: list[float] = []
        retired: list[_NodeConsumer] = []
        try:
            def on_node() -> int | None:
                latest = max((c.stats for c in consumers if c.stats is not None),
                             default=None, key=lambda stats: stats[0])
                node = latest[1]["mqtt"]["node"] if latest else None
                return cluster.urls.index(node) if node in cluster.urls else None

            _wait(lambda: all(any(e[1] == n for e in consumers[-1].events) for n in names),
                  60, "every device's events")
            for _ in range(args.failovers):
                _wait(lambda: on_node() is not None, 30, "the gateway's node in its stats")
                node = on_node()
                survivors = [c for i, c in enumerate(consumers) if i != node]
                killed_at, killed_wall = time.monotonic(), time.time()
                cluster.kill(node)

                def first_new(survivors=survivors, killed_wall=killed_wall) -> float | None:
                    # read at the gateway after the kill: it went through another node
                    arrivals = [t for c in survivors for t, _, _, stamp in c.events
                                if stamp > killed_wall]
                    return min(arrivals) if arrivals else None

                times.append(_wait(first_new, 120, "an event after the failover") - killed_at)
                _wait(lambda n=node: on_node() not in (None, n), 30, "stats from the new node")
                if args.failovers > 1:
                    cluster.start(node)
                    _wait(cluster.routes_everywhere, 180, "the node back in the cluster")
                    consumers[node].stop()
                    retired.append(consumers[node])  # what it got counts
                    consumers[node] = _NodeConsumer(cluster.mqtt_ports[node], prefix)
        finally:
            gw.send_signal(signal.SIGTERM)
            gw.wait(30)
            sim.send_signal(signal.SIGTERM)
            sim.wait(30)
            for consumer in consumers:
                consumer.stop()
        seqs: dict[str, set[int]] = {}
        consumers += retired
        for consumer in consumers:
            for _, device, seq, _ in consumer.events:
                seqs.setdefault(device, set()).add(seq)
        lost = sum(max(s) - min(s) + 1 - len(s) for s in seqs.values())
        arrivals = sorted(t for consumer in consumers for t, *_ in consumer.events)
        span = arrivals[-1] - arrivals[0] if arrivals else 0.0
        return {"broker": f"RabbitMQ {nodes}-node cluster, MQTT 3.1.1", "failovers": len(times),
                "failover": _percentiles(times),
                "failover_ms_each": [round(t * 1000) for t in times],
                "events_received": sum(len(s) for s in seqs.values()), "events_lost": lost,
                "streamed_s": round(span, 1),
                "per_device": {device: len(s) for device, s in sorted(seqs.items())}}


#: the parts, in the order a full run takes them
PARTS = {"fleet": fleet, "failover": failover}


def _table(result: dict[str, Any]) -> None:
    print(f"{result['gateways']} gateways x {result['devices_per_gateway']} devices "
          f"(STATUS every {result['interval_ms']} ms), {result['seconds']} s: "
          f"{result['events_per_s']:,} events/s received in all "
          f"({result['events_per_s_per_gateway']} per gateway); seq gaps "
          f"{result['seq_gaps']}, lost {result['events_lost']} of "
          f"{result['events_received']:,}; every device streaming "
          f"{result['all_streaming_after_s']} s after the first start")
    print(f"{'gateway':<10} {'CPU %':>6} {'RSS MiB':>8}")
    for name, cpu in result["gateway_cpu_percent"].items():
        print(f"{name:<10} {cpu:>6} {result['gateway_rss_mib'][name]:>8}")
    print(f"{'mean':<10} {result['gateway_cpu_percent_mean']:>6} "
          f"{result['gateway_rss_mib_mean']:>8}")
    print("others (CPU %): " + ", ".join(f"{k} {v}" for k, v in
                                         result["other_cpu_percent"].items()))
    probe_times = result["probe"]
    print("gateway_id probe before connecting: " + "; ".join(
        f"{what} p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms (n={row['n']})"
        for what, row in probe_times.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=10)
    parser.add_argument("--devices", type=int, default=4, help="devices per gateway")
    parser.add_argument("--interval-ms", type=int, default=50,
                        help="each device's STATUS period")
    parser.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    parser.add_argument("--probes", type=int, default=40,
                        help="probe runs per case (startup delay)")
    parser.add_argument("--failovers", type=int, default=10, help="failovers to time")
    parser.add_argument("--only", choices=tuple(PARTS), help="run one part")
    parser.add_argument("--smoke", action="store_true",
                        help="a short run that proves the bench works; its numbers mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.gateways, args.devices, args.seconds, args.probes = 2, 2, 1.0, 4
        args.failovers = 1
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(tmp)
        broker.start()
        try:
            for name, part in PARTS.items():
                if args.only in (None, name):
                    results[name] = part(args, tmp, broker)
                    print(json.dumps({name: results[name]}))
        finally:
            broker.stop()
    if "fleet" in results:
        _table(results["fleet"])
    if "failover" in results:
        result = results["failover"]
        print(f"failover on a {result['broker']}: {result['failovers']} failovers, p50 "
              f"{result['failover']['p50_ms']} ms, p99 {result['failover']['p99_ms']} ms "
              f"(each: {result['failover_ms_each']} ms); lost {result['events_lost']} of "
              f"{result['events_received']:,} events")


if __name__ == "__main__":
    main()
