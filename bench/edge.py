"""Edge rates (issue 19): what the gateway costs at the rates real deployments run, not under
a flood. Simulated devices on ptys (in a child process, each paced at its share of the rate)
-> the gateway (in this process: sessions, the on-disk queue with the default settings,
the bridge, MQTT 5 QoS 1) -> Mosquitto -> ``mosquitto_sub``.

For each rate, spread over ``--devices`` devices: the gateway's CPU per event (user +
system of this process over the window, /proc/self/stat), its wake-ups per second (the
context switches of its threads: every return from epoll is one), serial -> subscriber
latency p50/p99, bytes it wrote to disk per event (/proc/self/io ``write_bytes``, what
reaches the block layer) and its RSS. Then idle: ``--idle-devices`` registered devices that
send only heartbeats: CPU as % of a core and wake-ups per second.

    .venv/bin/python bench/edge.py [--rates 100,1000,10000] [--devices 8] [--seconds 10]
    .venv/bin/python bench/edge.py --profile 1000   # cProfile's top lines at that rate
    .venv/bin/python bench/edge.py --before 02bf9dc  # that revision's gateway, alternating
    .venv/bin/python bench/edge.py --before 02bf9dc --repeat 3  # the median of three runs

Each part (a rate, idle) runs in a fresh process of its own, so its RSS and CPU are its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import Subscriber, _config, _cpu_s, _device_process, _in_child, _recv, _serial_latencies
from sessions import _percentiles, _rss_mib

from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.session import DeviceState
from tests.mqtt_helpers import Mosquitto


def _switches() -> int:
    """Context switches of every thread of this process so far (voluntary: it slept, in
    epoll or a lock; involuntary: the scheduler took the CPU)."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:  # a thread that just ended
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def _written() -> int:
    """Bytes this process caused to be written to storage so far (/proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


async def _until(predicate, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.02)


async def at_rate(tmp: Path, broker: Mosquitto, rate: float, devices: int, seconds: float, *,
                  profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """One rate: ``devices`` devices at ``rate / devices`` frames/s each."""
    name = f"rate-{int(rate)}"
    links = tmp / name
    child, conn = await _in_child(_device_process, devices, 3_600_000, rate / devices,
                                  str(links))
    assert await _recv(conn) == "ready"
    subscriber = Subscriber(broker.port, tmp / f"{name}-events.txt")
    config = _config(tmp / name, broker, [f"sim-{i}" for i in range(devices)], links)
    gateway = Gateway(config)
    result: dict[str, Any] = {"rate": rate, "devices": devices}
    async with Bridge(gateway, config) as bridge, gateway:
        await _until(lambda: bridge.mqtt.connected and all(
            s.state is DeviceState.ONLINE for s in gateway.devices.values()))
        # A device's STATUS of its registration may still be on its way: the bases (the
        # event seq before each stream) are read once it is in (else a device's latencies
        # pair each event with the frame after it: negative p50s).
        await asyncio.sleep(1.0)
        bases = {device: bridge.spool.last_seq(device) for device in gateway.devices}
        conn.send("go")
        await asyncio.sleep(min(1.0, seconds))  # the streams settle; not measured
        subscriber.reset()
        t0, published = time.perf_counter(), bridge.published
        cpu0, switches0, written0 = _cpu_s(os.getpid()), _switches(), _written()
        if profile is not None:
            profile.enable()
        await asyncio.sleep(seconds)  # the measured window
        if profile is not None:
            profile.disable()
        elapsed = time.perf_counter() - t0
        cpu, switches, written = (_cpu_s(os.getpid()) - cpu0, _switches() - switches0,
                                  _written() - written0)
        events = bridge.published - published
        result.update({
            "events_per_s": round(events / elapsed),
            "cpu_us_per_event": round(1e6 * cpu / max(1, events), 1),
            "cpu_percent": round(100 * cpu / elapsed, 1),
            "wakeups_per_s": round(switches / elapsed),
            "disk_bytes_per_event": round(written / max(1, events), 1),
            "rss_mib": round(_rss_mib(), 1),
        })
        received = subscriber.stop()
        conn.send("stop")
        writes = await _recv(conn)
    conn.send("exit")
    child.join(10)
    result["latency"] = _percentiles(_serial_latencies(received["arrivals"], bases, writes)
                                     or [0.0])
    return result


async def idle(tmp: Path, broker: Mosquitto, devices: int, seconds: float) -> dict[str, Any]:
    """``devices`` registered devices sending only heartbeats (no STATUS stream)."""
    links = tmp / "idle"
    child, conn = await _in_child(_device_process, devices, 3_600_000, 0.0, str(links))
    assert await _recv(conn) == "ready"
    config = _config(tmp / "idle", broker, [f"sim-{i}" for i in range(devices)], links)
    gateway = Gateway(config)
    async with Bridge(gateway, config) as bridge, gateway:
        await _until(lambda: bridge.mqtt.connected and all(
            s.state is DeviceState.ONLINE for s in gateway.devices.values()), 60)
        # registration's aftermath settles: statuses, stats, the deletes (within 1 s) and
        # the checkpoint after them (1 s)
        await asyncio.sleep(2.5)
        t0 = time.perf_counter()
        cpu0, switches0, written0 = _cpu_s(os.getpid()), _switches(), _written()
        await asyncio.sleep(seconds)  # the measured window
        elapsed = time.perf_counter() - t0
        result = {
            "devices": devices,
            "cpu_percent": round(100 * (_cpu_s(os.getpid()) - cpu0) / elapsed, 2),
            "wakeups_per_s": round((_switches() - switches0) / elapsed, 1),
            "disk_bytes_per_s": round((_written() - written0) / elapsed),
            "heartbeat_s": config.ports[0].session.heartbeat_s,
            "rss_mib": round(_rss_mib(), 1),
        }
        conn.send("go")
        conn.send("stop")
        await _recv(conn)
    conn.send("exit")
    child.join(10)
    return result


def _profile_lines(profile: cProfile.Profile, rows: int = 18) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(rows)
    return out.getvalue()


@contextlib.contextmanager
def _own_broker() -> Iterator[tuple[Path, Mosquitto]]:
    """A temporary directory and a Mosquitto of its own in it, stopped at the end."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(tmp)
        broker.start()
        try:
            yield tmp, broker
        finally:
            broker.stop()


def _part(args: argparse.Namespace) -> dict[str, Any]:
    """One part in this (fresh) process, with its own Mosquitto: ``rate:R`` or ``idle``."""
    with _own_broker() as (tmp, broker):
        if args.part == "idle":
            work = idle(tmp, broker, args.idle_devices, args.seconds)
        else:
            work = at_rate(tmp, broker, float(args.part.split(":", 1)[1]), args.devices,
                           args.seconds)
        if args.linger_ms:
            # not in a checkout from before linger_ms: imported only where asked for
            wakeups = importlib.import_module("gateway.wakeups")
            factory = wakeups.loop_factory(args.linger_ms / 1000)
            with asyncio.Runner(loop_factory=factory) as runner:
                return runner.run(work)
        return asyncio.run(work)


def _worktree(rev: str, parent: Path) -> Path:
    """A checkout of ``rev`` (the "before" of a comparison) holding this checkout's bench
    scripts in ``bench-now/``: run from there, they import that checkout's gateway."""
    path = parent / f"before-{rev}"
    here = Path(__file__).resolve().parent
    subprocess.run(["git", "-C", str(here.parent), "worktree", "add", "--detach", "--force",
                    str(path), rev], check=True, capture_output=True)
    (path / "bench-now").mkdir()
    for script in here.glob("*.py"):
        shutil.copy(script, path / "bench-now" / script.name)
    return path


def _run_part(part: str, args: argparse.Namespace, tree: Path | None,
              linger_ms: float) -> dict[str, Any]:
    """``part`` in a child process of its own (RSS and CPU of that part alone), importing
    the gateway from ``tree`` (None: this checkout)."""
    script = Path(__file__) if tree is None else tree / "bench-now" / "edge.py"
    command = [sys.executable, str(script), "--part", part, "--devices", str(args.devices),
               "--idle-devices", str(args.idle_devices), "--seconds", str(args.seconds),
               "--linger-ms", str(linger_ms)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{part} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Of several runs of a part, the one whose CPU is the median (its other figures with
    it, so a row is one real run)."""
    key = "cpu_us_per_event" if "cpu_us_per_event" in rows[0] else "cpu_percent"
    return sorted(rows, key=lambda row: row[key])[len(rows) // 2]


def _table(label: str, rates: list[dict[str, Any]], idle_row: dict[str, Any]) -> None:
    print(f"{label}:")
    print(f"{'events/s':>9} {'got':>7} {'CPU us/ev':>10} {'CPU %':>6} {'wakeups/s':>10} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'disk B/ev':>10} {'RSS MiB':>8}")
    for row in rates:
        print(f"{row['rate']:>9,.0f} {row['events_per_s']:>7,} {row['cpu_us_per_event']:>10} "
              f"{row['cpu_percent']:>6} {row['wakeups_per_s']:>10,} "
              f"{row['latency']['p50_ms']:>7} {row['latency']['p99_ms']:>7} "
              f"{row['disk_bytes_per_event']:>10} {row['rss_mib']:>8}")
    i = idle_row
    print(f"idle, {i['devices']} devices (heartbeat every {i['heartbeat_s']} s): "
          f"{i['cpu_percent']} % of a core, {i['wakeups_per_s']} wake-ups/s, "
          f"{i['disk_bytes_per_s']} disk bytes/s, RSS {i['rss_mib']} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,1000,10000",
                        help="events/s in all, comma-separated")
    parser.add_argument("--devices", type=int, default=8, help="devices sharing each rate")
    parser.add_argument("--idle-devices", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured window")
    parser.add_argument("--linger-ms", type=float, default=0.0,
                        help="the gateway's linger_ms (this checkout only)")
    parser.add_argument("--before", metavar="REV",
                        help="also measure the gateway of this git revision, part by part "
                             "alternating with this checkout's")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each part (the table shows the run of median CPU)")
    parser.add_argument("--profile", type=float, metavar="RATE",
                        help="only this rate, under cProfile; print its top lines")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # one part, in a child
    parser.add_argument("--smoke", action="store_true",
                        help="a short run that proves the bench works; its numbers mean nothing")
    args = parser.parse_args()
    if args.part:
        print(json.dumps(_part(args)))
        return
    rates = [float(r) for r in args.rates.split(",")]
    if args.smoke:  # the comparison's machinery too (against this very revision)
        rates, args.devices, args.idle_devices, args.seconds = [200.0], 2, 4, 1.0
        args.before = args.before or "HEAD"
    if args.profile:
        with _own_broker() as (tmp, broker):
            profile = cProfile.Profile()
            row = asyncio.run(at_rate(tmp, broker, args.profile, args.devices, args.seconds,
                                      profile=profile))
        print(json.dumps({"profiled": row}))
        print(_profile_lines(profile))
        return
    parts = [f"rate:{rate:g}" for rate in rates] + ["idle"]
    runs: dict[str, dict[str, dict[str, Any]]] = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        before = _worktree(args.before, Path(tmp_name)) if args.before else None
        try:
            for part in parts:
                tries: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
                for _ in range(args.repeat):  # alternating, so drift hits both alike
                    if before is not None:
                        tries["before"].append(row := _run_part(part, args, before, 0.0))
                        print(json.dumps({"before": row}))
                    tries["after"].append(row := _run_part(part, args, None, args.linger_ms))
                    print(json.dumps({"after": row}))
                for label, rows in tries.items():
                    if rows:
                        runs[label][part] = _median_row(rows)
        finally:
            if before is not None:
                subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent),
                                "worktree", "remove", "--force", str(before)],
                               check=False, capture_output=True)
    for label, run in runs.items():
        if run:
            title = f"{label} ({args.before})" if label == "before" else \
                "this checkout" + (f", linger_ms = {args.linger_ms:g}" if args.linger_ms else "")
            _table(title, [run[p] for p in parts[:-1]], run["idle"])


if __name__ == "__main__":
    main()
