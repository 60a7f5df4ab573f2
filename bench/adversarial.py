"""Adversarial figures (issue 13): a real ``mcp-gateway run`` under broker flapping, SIGKILL,
unplug storms, a soak, serial garbage and fuzzed requests. Prints numbers, asserts nothing.

Every scenario gets its own temp dir: a Mosquitto with persistence (so the subscriber's
session and its queued events survive broker restarts), ``mosquitto_sub`` recording every
event (line-buffered, read as it arrives), simulated devices (``firmware_sim.Fleet``) in a
child process, and the gateway as a subprocess with its config and ``state_dir`` there.

    .venv/bin/python bench/adversarial.py [--smoke] [--only SCENARIO] [--seed 13]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as paho
import tomli_w
from e2e import _cpu_s
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sessions import _percentiles

from firmware_sim import Faults, Fleet, FleetSpec
from gateway.frames import Command
from tests.mqtt_helpers import Mosquitto, _no_delay, free_port

GATEWAY_ID = "bench"
PREFIX = f"mcp/v1/{GATEWAY_ID}"

#: Full-length parameters, close to the issue's figures; ``--smoke`` uses SMOKE instead.
FULL: dict[str, dict[str, Any]] = {
    "flapping": {"devices": 4, "rate": 400, "restarts": 8, "seconds": 60, "down_s": 1.0},
    "sigkill": {"devices": 4, "rate": 1000, "kills_under_load": 5, "kills_in_outage": 3,
                "gap_s": 3.0, "down_s": 2.0},
    "unplug": {"devices": 16, "interval_ms": 100, "every_s": 2.5, "for_s": 0.2, "seconds": 120},
    "soak": {"devices": 5, "rate": 1500, "seconds": 600},
    "garbage": {"devices": 4, "rate": 400, "seconds": 30, "garbage_max": 600},
    "fuzz": {"requests": 3000},
}
SMOKE: dict[str, dict[str, Any]] = {
    "flapping": {"devices": 2, "rate": 200, "restarts": 2, "seconds": 2, "down_s": 0.3},
    "sigkill": {"devices": 2, "rate": 200, "kills_under_load": 1, "kills_in_outage": 1,
                "gap_s": 0.5, "down_s": 0.5},
    "unplug": {"devices": 3, "interval_ms": 100, "every_s": 0.5, "for_s": 0.1, "seconds": 1.5},
    "soak": {"devices": 2, "rate": 200, "seconds": 1.5},
    "garbage": {"devices": 2, "rate": 200, "seconds": 1.5, "garbage_max": 600},
    "fuzz": {"requests": 150},
}


def wait_until(predicate: Callable[[], Any], timeout: float, poll_s: float = 0.05) -> bool:
    """Poll ``predicate`` until truthy or ``timeout``; the bench reports, it never asserts."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def wait_quiet(measure: Callable[[], Any], quiet_s: float, timeout: float) -> None:
    """Until ``measure()`` has not changed for ``quiet_s`` (answers stopped coming), or
    ``timeout``."""
    deadline, last, since = time.monotonic() + timeout, measure(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.05)
        now = measure()
        if now != last:
            last, since = now, time.monotonic()


def _proc_status(pid: int, key: str) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


# ---------------------------------------------------------------------- the devices' process

async def _paced(device: Any, stop: asyncio.Event, rate_hz: float) -> int:
    """STATUS frames one ``send`` each (so the device's garbage and corruption knobs apply,
    which ``stream``'s bulk writes skip), at ``rate_hz`` until ``stop``; returns the count."""
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), 0
    while not stop.is_set():
        due = int((loop.time() - start) * rate_hz) - sent
        for _ in range(due):
            device.send(Command.STATUS, device.status_payload())
        sent += max(due, 0)
        await asyncio.sleep(max(0.001, 1.0 / rate_hz))
    return sent


async def _storm(fleet: Fleet, every_s: float, for_s: float, seconds: float,
                 rng: random.Random) -> list[tuple[str, float]]:
    """Each device unplugs about every ``every_s`` for ``for_s`` until ``seconds`` have
    passed; returns (device, wall-clock time it was plugged back) per unplug."""
    replugs: list[tuple[str, float]] = []
    end = asyncio.get_running_loop().time() + seconds

    async def cycle(device: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every_s * rng.uniform(0.5, 1.5))
            if loop.time() > end:
                return
            await device.unplug(for_s)
            replugs.append((device.name, time.time()))

    async with asyncio.TaskGroup() as tasks:
        for device in fleet.devices:
            tasks.create_task(cycle(device), name=f"storm-{device.name}")
    return replugs


def _fleet_child(spec: dict[str, Any], faults: dict[str, Any], conn: Any) -> None:
    """Child: the devices. Commands on ``conn``: ("stream"|"send", rate_hz per device),
    ("stop",) -> what was sent, ("unplug", every_s, for_s, seconds) -> the replugs, ("exit",).
    A parent that dies closes ``conn``: recv raises and the devices stop."""

    async def main() -> None:
        fleet_spec = FleetSpec(**spec, faults=Faults(**faults))
        loop = asyncio.get_running_loop()
        async with Fleet(fleet_spec) as fleet:
            conn.send("ready")
            stop, running = asyncio.Event(), []
            while True:
                command, *args = await loop.run_in_executor(None, conn.recv)
                if command in ("stream", "send"):
                    rate, count = args[0], len(fleet.devices)
                    stop.clear()
                    running = [asyncio.create_task(
                        d.stream(stop, rate, phase_s=i / count / rate) if command == "stream"
                        else _paced(d, stop, rate)) for i, d in enumerate(fleet.devices)]
                elif command == "stop":
                    stop.set()
                    sent = await asyncio.gather(*running)
                    conn.send({"sent": {d.name: n for d, n in zip(fleet.devices, sent,
                                                                  strict=True)},
                               **_sim_counters(fleet)})
                elif command == "unplug":
                    replugs = await _storm(fleet, *args, random.Random(spec.get("seed")))
                    conn.send({"replugs": replugs, **_sim_counters(fleet)})
                else:
                    return

    asyncio.run(main())


def _sim_counters(fleet: Fleet) -> dict[str, int]:
    return {"garbage_bytes_sent": sum(d.counters.garbage_bytes_sent for d in fleet.devices),
            "frames_sent": sum(d.counters.frames_sent for d in fleet.devices),
            "sim_link_dropped_bytes": sum(d.link.dropped_tx_bytes for d in fleet.devices)}


class Devices:
    """The fleet's child process; ``request`` sends a command and waits for its answer."""

    def __init__(self, links: Path, count: int, *, seed: int, interval_ms: int = 3_600_000,
                 **faults: Any) -> None:
        self.names = [f"sim-{i}" for i in range(count)]
        self.links = links
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._conn, child = context.Pipe()
        spec = {"count": count, "interval_ms": interval_ms, "link_dir": links, "seed": seed}
        self.process = context.Process(target=_fleet_child, args=(spec, faults, child),
                                       daemon=True)
        self.process.start()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            raise RuntimeError("the simulated devices did not start")

    def send(self, *command: Any) -> None:
        self._conn.send(command)

    def request(self, *command: Any, timeout: float = 600) -> dict[str, Any]:
        self._conn.send(command)
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the simulated devices did not answer {command[0]!r}")
        return self._conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(("exit",))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# ---------------------------------------------------------------------- the broker side

class EventLog:
    """``mosquitto_sub`` with a persistent session (``-c``: the broker queues events for it
    while it reconnects after a broker restart), line-buffered to a file read as it grows.
    Counts every (device, seq) it sees: duplicates are seqs seen twice."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        self._out = path.open("wb")
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port),
             "-V", "mqttv5", "-q", "1", "-c", "-i", "adversarial-sub", "--nodelay",
             "-t", f"{PREFIX}/devices/+/events/#", "-F", "%t %p"], stdout=self._out,
            stderr=subprocess.DEVNULL)
        self._in = path.open("rb")
        self._rest = b""
        #: per device: count of each seq (index = seq), capped at 255; and the highest seq
        self.counts: dict[str, bytearray] = {}
        self.top: dict[str, int] = {}

    def poll(self) -> None:
        """Take in what arrived since the last call."""
        data = self._rest + self._in.read()
        *lines, self._rest = data.split(b"\n")
        for line in lines:
            topic, _, payload = line.partition(b" ")
            if not payload:  # not an event (an empty message): nothing to count
                continue
            seq = json.loads(payload)["seq"]
            device = topic.split(b"/")[4].decode()
            counts = self.counts.setdefault(device, bytearray(1))
            if seq >= len(counts):
                counts.extend(bytes(max(seq + 1 - len(counts), len(counts))))
            counts[seq] = min(255, counts[seq] + 1)
            self.top[device] = max(seq, self.top.get(device, 0))

    def max_seq(self, device: str) -> int:
        return self.top.get(device, 0)

    def wait_for(self, expected: dict[str, int], timeout: float, idle_s: float = 2.5) -> None:
        """Until every device's highest seq reaches ``expected``, or nothing new came for
        ``idle_s``, or ``timeout``: what never arrives is then reported as lost."""
        deadline, last, last_change = time.monotonic() + timeout, None, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last_change < idle_s:
            self.poll()
            now = {d: self.max_seq(d) for d in expected}
            if all(now[d] >= n for d, n in expected.items()):
                return
            if now != last:
                last, last_change = now, time.monotonic()
            time.sleep(0.1)

    def tally(self, expected: dict[str, int] | None = None) -> dict[str, int]:
        """Events received (distinct), seq gaps (missing below the highest seq seen),
        duplicates, and with ``expected`` (the seq each device should have reached) the
        events never received at the end: lost = gaps + those."""
        self.poll()
        received = gaps = dups = tail = 0
        for device, counts in self.counts.items():
            top = self.max_seq(device)
            seen = top - counts[1:top + 1].count(0)
            received, gaps = received + seen, gaps + top - seen
            dups += sum(counts) - seen
            if expected is not None:
                tail += max(0, expected.get(device, 0) - top)
        if expected is not None:
            tail += sum(n for d, n in expected.items() if d not in self.counts)
        result = {"events_received": received, "seq_gaps": gaps, "duplicates": dups}
        if expected is not None:
            result |= {"never_received": tail, "events_lost": gaps + tail}
        return result

    def close(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc.kill()
        self._out.close()
        self._in.close()


class Watcher:
    """A paho client in its own thread: the gateway's and devices' retained statuses (with
    arrival times) and, for ``topics``, every message. Re-subscribes after reconnects."""

    def __init__(self, port: int, topics: tuple[str, ...] = ()) -> None:
        self.lock = threading.Lock()
        self.gateway_state: str | None = None
        self.device_states: dict[str, str] = {}
        self.history: list[tuple[float, str, str]] = []
        #: response envelopes seen on ``topics``: (topic, body)
        self.responses: list[tuple[str, dict]] = []
        self._topics = [f"{PREFIX}/status", f"{PREFIX}/devices/+/status", *topics]
        self._recorded = topics
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in self._topics])
        self.client.on_message = self._on_message
        self.client.on_socket_open = _no_delay
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now, topic = time.time(), message.topic
        with self.lock:
            # Bodies are anything a fuzzer sent (deep, huge, not JSON): parse only what
            # can be ours to read, and never let a body kill this thread.
            body: Any = None
            with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
                if b'"response"' in message.payload or topic.endswith("/status"):
                    body = json.loads(message.payload) if message.payload else None
            if not isinstance(body, dict):
                return
            if self._recorded and body.get("message_type") == "response":
                self.responses.append((topic, body))
            elif topic == f"{PREFIX}/status":
                self.gateway_state = body.get("state")
            elif topic.startswith(f"{PREFIX}/devices/") and topic.endswith("/status"):
                device = topic.split("/")[4]
                self.device_states[device] = body.get("state")
                self.history.append((now, device, body.get("state")))

    def all_online(self, names: list[str]) -> bool:
        with self.lock:
            return self.gateway_state == "online" and all(
                self.device_states.get(n) == "online" for n in names)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class GatewayProcess:
    """``mcp-gateway run --config`` as a subprocess (its log in the temp dir), with a
    Prometheus endpoint to read its queue from outside, even while the broker is away."""

    def __init__(self, directory: Path, broker: Mosquitto, names: list[str], links: Path,
                 **port: Any) -> None:
        self.metrics_port = free_port()
        self.config = directory / "gateway.toml"
        self.log = directory / "gateway.log"
        self.config.write_text(tomli_w.dumps({
            "gateway_id": GATEWAY_ID, "state_dir": str(directory / "state"),
            "stats_interval_s": 0.2, "metrics": {"address": f"127.0.0.1:{self.metrics_port}"},
            "broker": {"url": broker.url},
            "ports": [{"name": n, "path": str(links / n), "allow": ["read", "ping"],
                       "rate_limit": 100_000, **port} for n in names]}))
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        #: exit codes of runs that ended without the bench killing them
        self.crashes: list[int] = []

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        if self.proc is None:
            return False
        if self.proc.poll() is not None:
            self.crashes.append(self.proc.returncode)
            self.proc = None
            return False
        return True

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> int | None:
        """SIGTERM; the exit code (None if it had to be killed after 20 s)."""
        if not self.alive():
            return self.crashes[-1] if self.crashes else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            code = None
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        return code

    def metrics(self) -> dict[str, float]:
        """The endpoint's samples summed over their labels; {} when it does not answer."""
        totals: dict[str, float] = collections.defaultdict(float)
        with contextlib.suppress(OSError, ValueError):
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=1) as response:
                for line in response.read().decode().splitlines():
                    if line and not line.startswith("#"):
                        name, value = line.rsplit(" ", 1)
                        totals[name.split("{", 1)[0]] += float(value)
        return dict(totals)

    def sample(self) -> dict[str, float]:
        return {"rss_mib": round(_proc_status(self.pid, "VmRSS:"), 1), "fds": _fds(self.pid)}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_summary(self) -> dict[str, int]:
        text = self.log_text()
        lines = text.splitlines()
        return {"log_lines": len(lines),
                "log_warnings_errors": sum(1 for line in lines if line.startswith(
                    ("WARNING", "ERROR", "CRITICAL")) or " WARNING " in line
                    or " ERROR " in line),
                "tracebacks": text.count("Traceback")}


class Probe:
    """A thread sampling the gateway every ``period_s``: the highest queue depth (the
    ``mcp_mqtt_spooled`` gauge), RSS and fds seen, while the scenario does its work."""

    def __init__(self, gateway: GatewayProcess, period_s: float = 0.2) -> None:
        self.gateway, self.period_s = gateway, period_s
        self.max_queue = 0.0
        self.max_rss_mib = 0.0
        self.max_fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            proc = self.gateway.proc
            if proc is None or proc.poll() is not None:
                continue
            self.max_rss_mib = max(self.max_rss_mib, _proc_status(proc.pid, "VmRSS:"))
            self.max_fds = max(self.max_fds, _fds(proc.pid))
            self.max_queue = max(self.max_queue, self.gateway.metrics().get(
                "mcp_mqtt_spooled", 0.0))

    def close(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(5)
        return {"max_queue": int(self.max_queue), "max_rss_mib": round(self.max_rss_mib, 1),
                "max_fds": self.max_fds}


class Rig:
    """One scenario's parts, each stopped in ``close`` whatever happened."""

    def __init__(self, directory: Path, devices: int, *, seed: int,
                 watch: tuple[str, ...] = (), port: dict[str, Any] | None = None,
                 **sim: Any) -> None:
        self.stack = contextlib.ExitStack()
        try:
            # Devices first: their ptys must exist when the gateway opens its ports.
            self.devices = Devices(directory / "links", devices, seed=seed, **sim)
            self.stack.callback(self.devices.close)
            self.broker = Mosquitto(directory, extra=(
                f"persistence true\npersistence_location {directory}/\nautosave_interval 0\n"))
            self.broker.start()
            self.stack.callback(self.broker.stop)
            self.events = EventLog(self.broker.port, directory / "events.txt")
            self.stack.callback(self.events.close)
            self.watcher = Watcher(self.broker.port, watch)
            self.stack.callback(self.watcher.close)
            self.gateway = GatewayProcess(directory, self.broker, self.devices.names,
                                          self.devices.links, **(port or {}))
            self.gateway.start()
            self.stack.callback(self.gateway.kill)
        except BaseException:
            self.stack.close()
            raise
        self.probe: Probe | None = None
        self.sigterm_exit: int | None = None

    def ready(self, timeout: float = 30.0) -> float:
        """Wait until the gateway and every device are online; the seconds it took."""
        start = time.monotonic()
        if not wait_until(lambda: self.watcher.all_online(self.devices.names), timeout):
            raise RuntimeError(f"gateway or devices not online after {timeout} s: "
                               f"{self.watcher.gateway_state} {self.watcher.device_states}; "
                               f"log: {self.gateway.log.read_text()[-2000:]}")
        return time.monotonic() - start

    def base_seqs(self) -> dict[str, int]:
        """Each device's highest seq before the load starts. A device's power-on STATUS
        precedes its HELLO, so once it is online that STATUS was read (or flushed when the
        port opened): what the log holds when it goes quiet is the base."""
        events = self.events
        wait_quiet(lambda: (events.poll(), sum(events.top.values()))[1], quiet_s=0.3,
                   timeout=3.0)
        return {n: events.max_seq(n) for n in self.devices.names}

    def start_probe(self) -> None:
        self.probe = Probe(self.gateway)

    def finish(self) -> dict[str, Any]:
        """Stop the probe and the gateway (SIGTERM): what they say at the end."""
        result: dict[str, Any] = self.probe.close() if self.probe else {}
        alive = self.gateway.alive()
        metrics = self.gateway.metrics() if alive else {}
        result["gateway_reconnects"] = int(metrics.get("mcp_mqtt_reconnects_total", 0))
        result["gateway_dropped"] = int(metrics.get("mcp_mqtt_dropped_total", 0))
        result["gateway_crashes"] = list(self.gateway.crashes)
        result["sigterm_exit_code"] = self.gateway.stop() if alive else None
        return result | self.gateway.log_summary()

    def close(self) -> None:
        self.stack.close()


def _expected(base: dict[str, int], sent: dict[str, int]) -> dict[str, int]:
    return {name: base[name] + sent[name] for name in base}


# ---------------------------------------------------------------------- scenarios

def flapping(rig: Rig, *, devices: int, rate: float, restarts: int, seconds: float,
             down_s: float) -> dict[str, Any]:
    """``restarts`` broker restarts (down ``down_s`` each) in ``seconds`` at ``rate``
    events/s: events lost, duplicated, the deepest the gateway's queue got."""
    rig.ready()
    base = rig.base_seqs()
    rig.start_probe()
    rig.devices.send("stream", rate / devices)
    period = seconds / restarts
    for _ in range(restarts):
        time.sleep(max(0.0, period - down_s))
        rig.broker.stop()
        time.sleep(down_s)
        rig.broker.start()
    sent = rig.devices.request("stop")
    rig.events.wait_for(_expected(base, sent["sent"]), timeout=60)
    return {"restarts": restarts, "seconds": seconds, "events_per_s": rate,
            "events_sent": sum(sent["sent"].values()),
            **rig.events.tally(_expected(base, sent["sent"])), **rig.finish()}


def _kill_and_restart(rig: Rig) -> float:
    """SIGKILL the gateway (a power cut, the OOM killer) and start it again; the seconds
    until the new process has every port open. Frames sent meanwhile are not the gateway's
    to lose: no process has the port, and opening it flushes what the OS held (pyserial's
    open does, and a real tty keeps nothing while closed)."""
    opened = rig.gateway.log_text().count(": opened ")
    start = time.monotonic()
    rig.gateway.kill()
    rig.gateway.start()
    wait_until(lambda: rig.gateway.log_text().count(": opened ") >= opened + len(
        rig.devices.names), timeout=30)
    return time.monotonic() - start


def sigkill(rig: Rig, *, devices: int, rate: float, kills_under_load: int,
            kills_in_outage: int, gap_s: float, down_s: float) -> dict[str, Any]:
    """SIGKILL the gateway under load, and during broker outages (its queue holding unsent
    events), restarting it each time: events lost (seq gaps: events the gateway accepted
    and never delivered), duplicates, and the frames sent while no gateway was running."""
    rig.ready()
    base = rig.base_seqs()
    rig.start_probe()
    rig.devices.send("stream", rate / devices)
    down = 0.0
    for _ in range(kills_under_load):
        time.sleep(gap_s)
        down += _kill_and_restart(rig)
    for _ in range(kills_in_outage):
        time.sleep(gap_s)
        rig.broker.stop()
        time.sleep(down_s / 2)
        down += _kill_and_restart(rig)
        time.sleep(down_s / 2)
        rig.broker.start()
    time.sleep(gap_s)
    sent = rig.devices.request("stop")
    rig.events.wait_for(_expected(base, sent["sent"]), timeout=60)
    tally = rig.events.tally(_expected(base, sent["sent"]))
    return {"kills_under_load": kills_under_load, "kills_in_outage": kills_in_outage,
            "events_per_s": rate, "events_sent": sum(sent["sent"].values()),
            "seconds_without_gateway": round(down, 2),
            "frames_sent_while_down_estimate": round(rate * down),
            "frames_never_published": tally.pop("never_received"),
            "sim_link_dropped_bytes": sent["sim_link_dropped_bytes"],
            **tally, "events_lost": tally["seq_gaps"], **rig.finish()}


def unplug(rig: Rig, *, devices: int, interval_ms: int, every_s: float, for_s: float,
           seconds: float) -> dict[str, Any]:
    """Every device unplugs about every ``every_s`` (for ``for_s``) during ``seconds``:
    the gateway's fds and RSS before and after, and how long each replug took to be
    ``online`` again on the fabric."""
    rig.ready()
    time.sleep(1.0)  # let the first statuses and PINGs settle before the baseline
    before = rig.gateway.sample()
    rig.start_probe()
    storm = rig.devices.request("unplug", every_s, for_s, seconds)
    replugs = storm["replugs"]
    back = rig.ready(timeout=30)
    time.sleep(1.0)
    after = rig.gateway.sample()
    with rig.watcher.lock:
        history = list(rig.watcher.history)
    delays = []
    for device, plugged_at in replugs:
        online = [t for t, d, state in history if d == device and state == "online"
                  and t >= plugged_at]
        if online:
            delays.append(min(online) - plugged_at)
    return {"unplugs": len(replugs), "seconds": seconds,
            "fds_start": before["fds"], "fds_end": after["fds"],
            "rss_mib_start": before["rss_mib"], "rss_mib_end": after["rss_mib"],
            "replugs_seen_online": len(delays),
            "replug_to_online": _percentiles(delays) if delays else None,
            "all_online_after_storm_s": round(back, 3),
            **rig.events.tally(), **rig.finish()}


def soak(rig: Rig, *, devices: int, rate: float, seconds: float) -> dict[str, Any]:
    """``rate`` events/s for ``seconds``: seq gaps, RSS at the start and the end."""
    rig.ready()
    base = rig.base_seqs()
    rig.devices.send("stream", rate / devices)
    time.sleep(min(5.0, seconds / 4))  # warm: the baseline is RSS under this load
    start, cpu0, t0 = rig.gateway.sample(), _cpu_s(rig.gateway.pid), time.monotonic()
    rig.start_probe()
    trend = []  # RSS at each tenth of the run: flat, or growing?
    for _ in range(10):
        time.sleep(seconds / 10)
        trend.append(rig.gateway.sample()["rss_mib"])
    end = rig.gateway.sample()
    cpu = 100 * (_cpu_s(rig.gateway.pid) - cpu0) / (time.monotonic() - t0)
    sent = rig.devices.request("stop")
    rig.events.wait_for(_expected(base, sent["sent"]), timeout=60)
    return {"events_per_s": rate, "seconds": seconds, "events_sent": sum(sent["sent"].values()),
            "rss_mib_start": start["rss_mib"], "rss_mib_end": end["rss_mib"],
            "fds_start": start["fds"], "fds_end": end["fds"],
            "rss_mib_trend": trend, "gateway_cpu_percent": round(cpu, 1),
            **rig.events.tally(_expected(base, sent["sent"])), **rig.finish()}


def garbage(rig: Rig, *, devices: int, rate: float, seconds: float,
            garbage_max: int) -> dict[str, Any]:
    """1..``garbage_max`` random bytes without 0x5A before every frame: garbage sent,
    valid STATUS frames sent against events delivered, what the gateway discarded."""
    rig.ready()
    base = rig.base_seqs()
    rig.devices.send("send", rate / devices)
    time.sleep(seconds)
    sent = rig.devices.request("stop")
    rig.events.wait_for(_expected(base, sent["sent"]), timeout=60)
    metrics = rig.gateway.metrics()
    tally = rig.events.tally(_expected(base, sent["sent"]))
    return {"seconds": seconds, "garbage_bytes_sent": sent["garbage_bytes_sent"],
            "frames_sent": sent["frames_sent"],
            "status_frames_sent": sum(sent["sent"].values()) + sum(base.values()),
            "status_events_delivered": tally["events_received"],
            "gateway_discarded_bytes": int(metrics.get("mcp_device_discarded_bytes_total", 0)),
            "gateway_checksum_errors": int(metrics.get("mcp_device_checksum_errors_total", 0)),
            "sim_link_dropped_bytes": sent["sim_link_dropped_bytes"], **tally, **rig.finish()}


# ---------------------------------------------------------------------- fuzz

BAD_REPLY_TOPICS = ("a/+/b", "#", "", "x" * 2000, "$SYS/fuzz", "a\0b",
                    f"{PREFIX}/status", f"{PREFIX}/stats", f"{PREFIX}/devices/sim-0/status",
                    f"{PREFIX}/devices/sim-0/events/status", f"{PREFIX}/devices/sim-0/requests",
                    f"{PREFIX}/requests", "mcp/v1/other-gw/devices/x/events/status")
#: namespaces the gateway must never answer into (issue 13, item 5)
FORBIDDEN = ("mcp/v1/", "$")


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    return [lambda: rng.randint(-2**70, 2**70), lambda: rng.random() * 1e300,
            lambda: "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(20))),
            lambda: rng.choice([None, True, False]),
            lambda: [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(["action", "payload", "key", "ttl", "x", ""]):
                     _random_json(rng, depth + 1) for _ in range(rng.randrange(4))},
            lambda: {"action": rng.choice(["read", "ping", "write", "raw", "reload"]),
                     "payload": _random_json(rng, depth + 1)}][kind]()


def _fuzz_case(rng: random.Random, i: int) -> tuple[str, str, bytes, str | None]:
    """One request: (category, topic, body, Response Topic property or None). Its reply
    topic is ``fuzz/r/{i}`` (as the property or the body's ``reply_to``) unless the
    category is about bad reply topics."""
    reply = f"fuzz/r/{i}"
    device = f"{PREFIX}/devices/sim-0/requests"
    topic = rng.choice([device, device, f"{PREFIX}/requests", f"{PREFIX}/devices/nope/requests"])
    dumps = json.dumps
    category = rng.choice(["valid", "random_json", "wrong_types", "unknown_action", "huge",
                           "deep", "not_utf8", "bad_reply_topic", "bad_reply_topic",
                           "body_reply_to"])
    if category == "valid":
        return category, device, dumps({"action": rng.choice(["ping", "read"]),
                                        "payload": rng.choice([{}, {"key": "interval_ms"}])
                                        }).encode(), reply
    if category == "random_json":
        return category, topic, dumps(_random_json(rng)).encode(), reply
    if category == "wrong_types":
        field, value = rng.choice([("action", 7), ("action", None), ("action", ["ping"]),
                                   ("payload", "x"), ("payload", [1]), ("priority", "urgent"),
                                   ("ttl", -1), ("ttl", 1e9), ("timeout", "soon"),
                                   ("timeout", 0), ("reply_to", 5), ("correlation_id", {}),
                                   ("message_id", 12)])
        return category, topic, dumps({"action": "ping", "payload": {}, field: value}).encode(), \
            reply
    if category == "unknown_action":
        action = rng.choice(["", "PING", "reboot", "x" * 300, "list_devices ", "__class__"])
        return category, topic, dumps({"action": action}).encode(), reply
    if category == "huge":
        size = rng.choice([65_537, 100_000, 300_000])
        body = dumps({"action": "ping", "reply_to": reply, "payload": {"x": "a" * size}})
        return category, topic, body.encode(), rng.choice([reply, None])
    if category == "deep":
        depth = rng.choice([9, 50, 1000, 100_000])
        body = (f'{{"action": "ping", "reply_to": "{reply}", "payload": '
                + '{"a": ' * depth + "1" + "}" * depth + "}")
        return category, topic, body.encode(), rng.choice([reply, None])
    if category == "not_utf8":
        body = rng.choice([rng.randbytes(rng.randrange(1, 200)), b"",
                           b'{"action": "ping", "reply_to": "%s", "x": "\xff\xfe"}'
                           % reply.encode()])
        return category, topic, body, rng.choice([reply, None])
    if category == "bad_reply_topic":
        bad = rng.choice(BAD_REPLY_TOPICS)
        # Wildcards, "" and NUL are not topic names: Mosquitto would refuse them as a
        # property, so those go in the body only.
        as_property = bad and not any(c in bad for c in "+#\0") and rng.random() < 0.5
        body = {"action": "ping"} if as_property else {"action": "ping", "reply_to": bad}
        return category, device, dumps(body).encode(), bad if as_property else None
    body = {"action": rng.choice(["ping", "nope"]), "reply_to": reply,  # MQTT 3.1.1 style
            "correlation_id": rng.choice(["c", 7, None])}
    return "body_reply_to", topic, dumps(body).encode(), None


def fuzz(rig: Rig, *, requests: int, seed: int) -> dict[str, Any]:
    """``requests`` malformed or odd requests, each with its own reply topic where it names
    a valid one: answers per request (none twice), answers on topics the gateway must not
    publish on, and whether the gateway is alive and answering afterwards."""
    rig.ready()
    rng = random.Random(seed)
    before = rig.gateway.sample()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_socket_open = _no_delay
    client.connect("127.0.0.1", rig.broker.port)
    client.loop_start()
    cases: dict[int, str] = {}
    named: set[int] = set()
    try:
        pending = []
        for i in range(requests):
            category, topic, body, response_topic = _fuzz_case(rng, i)
            cases[i] = category
            # Only a request that names a reply topic (property or body) can be answered.
            if category != "bad_reply_topic" and (
                    response_topic is not None or f"fuzz/r/{i}".encode() in body):
                named.add(i)
            properties = None
            if response_topic is not None:
                properties = Properties(PacketTypes.PUBLISH)
                properties.ResponseTopic = response_topic
                properties.CorrelationData = str(i).encode()
            pending.append(client.publish(topic, body, qos=1, properties=properties))
            if len(pending) >= 50:  # a bounded window: a flood, but not an unbounded one
                for info in pending:
                    info.wait_for_publish(10)
                pending.clear()
        for info in pending:
            info.wait_for_publish(10)

        def responses() -> list[tuple[str, dict]]:
            with rig.watcher.lock:
                return list(rig.watcher.responses)

        # Answers have stopped when none came for a while with the gateway connected (a
        # hostile reply topic can get it disconnected: then its answers wait for it).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            wait_quiet(lambda: len(rig.watcher.responses), quiet_s=3.0,
                       timeout=deadline - time.monotonic())
            if rig.gateway.metrics().get("mcp_mqtt_connected") == 1.0:
                break
        # Afterwards: does it still answer?
        final = f"fuzz/final/{seed}"
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = final
        client.publish(f"{PREFIX}/devices/sim-0/requests", json.dumps({"action": "ping"}), qos=1,
                       properties=properties)
        answered_after = wait_until(lambda: any(t == final and b.get("status") == "ok"
                                                for t, b in responses()), timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()
    per_request: collections.Counter[int] = collections.Counter()
    statuses: collections.Counter[str] = collections.Counter()
    forbidden = stray = 0
    for topic, body in responses():
        if topic.startswith("fuzz/r/"):
            per_request[int(topic.rsplit("/", 1)[1])] += 1
            statuses[str(body.get("status"))] += 1
        elif topic.startswith(FORBIDDEN):
            forbidden += 1
        elif not topic.startswith("fuzz/final/"):
            stray += 1
    by_category: dict[str, dict[str, int]] = {}
    for i, category in cases.items():
        row = by_category.setdefault(category, {"sent": 0, "answered_once": 0,
                                                "unanswered": 0, "answered_twice_or_more": 0,
                                                "no_reply_topic": 0})
        row["sent"] += 1
        n = per_request[i]
        if n == 0 and i not in named:
            row["no_reply_topic"] += 1
            continue
        row["answered_once" if n == 1 else "unanswered" if n == 0
            else "answered_twice_or_more"] += 1
    alive = rig.gateway.alive()
    after = rig.gateway.sample() if alive else {}
    with rig.watcher.lock:
        status_topic_ok = rig.watcher.gateway_state == "online"
    return {"requests": requests,
            "with_valid_reply_topic": len(named),
            "answered_once": sum(1 for i in named if per_request[i] == 1),
            "unanswered": sum(1 for i in named if per_request[i] == 0),
            "answered_twice_or_more": sum(1 for i in cases if per_request[i] > 1),
            "answers_on_forbidden_topics": forbidden, "stray_answers": stray,
            "statuses": dict(statuses), "by_category": by_category,
            "gateway_alive": alive, "answers_after_fuzz": answered_after,
            "gateway_status_still_online": status_topic_ok,
            "rss_mib_start": before["rss_mib"], "rss_mib_end": after.get("rss_mib"),
            **rig.finish()}


# ---------------------------------------------------------------------- running them

SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "flapping": flapping, "sigkill": sigkill, "unplug": unplug, "soak": soak,
    "garbage": garbage, "fuzz": fuzz}


def run_scenario(name: str, params: dict[str, Any], seed: int,
                 keep: bool = False) -> dict[str, Any]:
    """One scenario in its own temp dir (kept with ``keep``: the gateway's and Mosquitto's
    logs, the events), every process stopped at the end."""
    tmp = tempfile.mkdtemp(prefix=f"adversarial-{name}-")
    try:
        sim: dict[str, Any] = {}
        if name == "unplug":
            sim["interval_ms"] = params["interval_ms"]
        if name == "garbage":
            sim |= {"garbage_rate": 1.0, "garbage_max": params["garbage_max"],
                    "garbage_without_header": True}
        devices = params.get("devices", 1)
        watch = ("#",) if name == "fuzz" else ()
        rig = Rig(Path(tmp), devices, seed=seed, watch=watch, **sim)
        try:
            started = time.monotonic()
            extra = {"seed": seed} if name == "fuzz" else {}
            result = SCENARIOS[name](rig, **params, **extra)
            result["wall_s"] = round(time.monotonic() - started, 1)
            if keep:
                result["kept"] = tmp
            return result
        finally:
            rig.close()
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _row(name: str, r: dict[str, Any]) -> tuple[str, str]:
    """(issue 13's figure, this run's) for the summary table."""
    if "error" in r:
        return "", f"ERROR: {r['error']}"
    common = (f"lost {r.get('events_lost', '-')}, dups {r.get('duplicates', '-')}, "
              f"seq gaps {r.get('seq_gaps', '-')}")
    if name == "flapping":
        return ("8 restarts in 60 s at 400 ev/s: 0 lost, 0 dup",
                f"{r['restarts']} restarts in {r['seconds']:g} s at {r['events_per_s']:g} ev/s: "
                f"{common}, max queue {r['max_queue']}")
    if name == "sigkill":
        return ("SIGKILL under load and in outages: 0 lost",
                f"{r['kills_under_load']} kills under load + {r['kills_in_outage']} in outages "
                f"at {r['events_per_s']:g} ev/s: {common}; {r['frames_never_published']} "
                f"frames never published ({r['seconds_without_gateway']:g} s without a "
                "gateway)")
    if name == "unplug":
        delay = r["replug_to_online"] or {}
        return ("682 unplugs in 2 min: fds, RSS flat, back in 1 s",
                f"{r['unplugs']} unplugs in {r['seconds']:g} s: fds {r['fds_start']}->"
                f"{r['fds_end']}, RSS {r['rss_mib_start']}->{r['rss_mib_end']} MiB, back p99 "
                f"{delay.get('p99_ms', '-')} ms, max {delay.get('max_ms', '-')} ms")
    if name == "soak":
        return ("10 min at 1,500 ev/s: 0 gaps, RSS flat",
                f"{r['seconds']:g} s at {r['events_per_s']:g} ev/s: {common}, RSS "
                f"{r['rss_mib_start']}->{r['rss_mib_end']} MiB")
    if name == "garbage":
        return ("~3.5 MB garbage: every valid frame delivered",
                f"{r['garbage_bytes_sent'] / 1e6:.2f} MB garbage: {r['status_events_delivered']}"
                f" of {r['status_frames_sent']} STATUS delivered, {common}")
    return ("thousands fuzzed: no crash, none answered twice",
            f"{r['requests']} fuzzed: alive {r['gateway_alive']}, answered twice "
            f"{r['answered_twice_or_more']}, unanswered {r['unanswered']} of "
            f"{r['with_valid_reply_topic']}, forbidden-topic answers "
            f"{r['answers_on_forbidden_topics']}, gateway reconnects {r['gateway_reconnects']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=tuple(SCENARIOS), action="append",
                        help="run this scenario (repeatable; default all)")
    parser.add_argument("--smoke", action="store_true",
                        help="a second or two per scenario: proves the bench works; its "
                        "numbers mean little")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--keep", action="store_true",
                        help="keep each scenario's temp dir (logs, events) and print its path")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for name in args.only or SCENARIOS:
        params = (SMOKE if args.smoke else FULL)[name]
        try:
            results[name] = run_scenario(name, params, args.seed, args.keep)
        except Exception as exc:  # the others still run; the exit code says it failed
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"scenario": name, "params": params, **results[name]}), flush=True)
    width = max(len(name) for name in results)
    print(f"{'scenario':<{width}}  {'issue 13 (before the hardening)':<50}  this run")
    for name, result in results.items():
        issue, today = _row(name, result)
        print(f"{name:<{width}}  {issue:<50}  {today}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
