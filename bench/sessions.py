"""Sessions under load: N simulated devices flooding STATUS over real ptys into one gateway.

The devices run in a child process (the other core), the gateway in this one. For each N,
frame profile (mcp, ms720) and noise level (share of frames with one byte changed, both
ways) it prints frames/s delivered to the sessions, CPU % and RSS of the gateway process,
frames lost, and request round-trip latency (ping: gateway -> device -> gateway) at idle
and under load; for ms720 also the link's retransmissions.

    .venv/bin/python bench/sessions.py [--devices 1 8 32] [--frames mcp ms720]
                                       [--noise 0 0.05] [--seconds 5] [--pings 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim import Faults, Fleet, FleetSpec
from gateway.app import Gateway
from gateway.config import parse_config
from gateway.frames.framing import FRAMINGS
from gateway.session import DeviceState, TelemetryEvent


def _fleet_process(count: int, link_dir: str, frames: str, noise: float, conn) -> None:
    """Child: run the devices; flood on "go", stop on "stop", report what was sent."""

    async def main() -> None:
        faults = Faults(corrupt_rate=noise, rx_corrupt_rate=noise)
        spec = FleetSpec(count=count, interval_ms=3_600_000, link_dir=Path(link_dir), seed=1,
                         frames=frames, faults=faults)
        async with Fleet(spec) as fleet:
            conn.send("ready")
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, conn.recv) == "go"
            stop = asyncio.Event()
            floods = [asyncio.create_task(d.flood(stop)) for d in fleet.devices]
            assert await loop.run_in_executor(None, conn.recv) == "stop"
            stop.set()
            sent = await asyncio.gather(*floods)
            links = [d.line.framing.counters() for d in fleet.devices if d.line is not None]
            conn.send({
                "sent": {d.name: n for d, n in zip(fleet.devices, sent, strict=True)},
                "retransmits": sum(c.get("link_retransmits", 0) for c in links),
                "fast_retransmits": sum(c.get("link_fast_retransmits", 0) for c in links),
                "given_up": sum(c.get("link_lost", 0) for c in links),
            })
            assert await loop.run_in_executor(None, conn.recv) == "exit"

    asyncio.run(main())


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 3),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "max_ms": round(1000 * ordered[-1], 3),
    }


async def _pings(gateway: Gateway, count: int, seconds: float = 60.0) -> list[float]:
    """Up to ``count`` pings, one at a time, for at most ``seconds``."""
    session = gateway.device("sim-0")
    latencies = []
    deadline = time.perf_counter() + seconds
    for _ in range(count):
        if time.perf_counter() > deadline:
            break
        outcome = await session.request("ping", priority="high", timeout=1.0)
        if outcome.ok:
            latencies.append(outcome.latency_s)
    return latencies


async def run_one(count: int, seconds: float, pings: int, frames: str = "mcp",
                  noise: float = 0.0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        links = Path(tmp) / "links"
        parent, child = multiprocessing.Pipe()
        proc = multiprocessing.Process(target=_fleet_process,
                                       args=(count, str(links), frames, noise, child))
        proc.start()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, parent.recv) == "ready"
        config = parse_config({
            "gateway_id": "bench",
            "state_dir": str(Path(tmp) / "state"),
            "ports": [{"name": f"sim-{i}", "path": str(links / f"sim-{i}"), "heartbeat_s": 5,
                       "frames": frames} for i in range(count)],
        })
        gateway = Gateway(config)
        subscription = gateway.subscribe()
        received: dict[str, int] = {}
        counting = False

        async def consume() -> None:
            async for event in subscription:
                if counting and isinstance(event, TelemetryEvent):
                    received[event.device_id] = received.get(event.device_id, 0) + 1

        consumer = asyncio.create_task(consume())
        async with gateway:
            deadline = loop.time() + 20
            while not all(s.state is DeviceState.ONLINE for s in gateway.devices.values()):
                if loop.time() > deadline:
                    raise RuntimeError("devices did not come online")
                await asyncio.sleep(0.05)
            idle = _percentiles(await _pings(gateway, pings))
            # Let the queue of idle STATUS drain, then count only the flood.
            while subscription.waiting:
                await asyncio.sleep(0.01)
            counting = True
            cpu0, wall0 = os.times(), time.perf_counter()
            parent.send("go")
            loaded_samples = await _pings(gateway, pings, seconds)
            rest = seconds - (time.perf_counter() - wall0)
            if rest > 0:
                await asyncio.sleep(rest)
            cpu1, wall1 = os.times(), time.perf_counter()
            total_at_stop = sum(received.values())
            parent.send("stop")
            report = await loop.run_in_executor(None, parent.recv)
            sent = report["sent"]
            # Wait until everything the devices sent has come through, or nothing more came
            # for 3 s (longer than ms720 holds frames behind a gap: 1 s by default).
            last, still = -1, 0
            while sum(received.values()) < sum(sent.values()) and still < 150:
                now_total = sum(received.values())
                still = still + 1 if now_total == last else 0
                last = now_total
                await asyncio.sleep(0.02)
            counters = [s.counters() for s in gateway.devices.values()]
            rss = _rss_mib()
        consumer.cancel()
        parent.send("exit")
        proc.join(10)
        elapsed = wall1 - wall0
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        return {
            "devices": count,
            "frames": frames,
            "noise": noise,
            "device_retransmits": report["retransmits"],
            "device_fast_retransmits": report["fast_retransmits"],
            "device_frames_given_up": report["given_up"],
            "seconds": round(elapsed, 2),
            "frames_per_s": round(total_at_stop / elapsed),
            "gateway_cpu_percent": round(100 * cpu / elapsed, 1),
            "gateway_rss_mib": round(rss, 1),
            "frames_sent": sum(sent.values()),
            "frames_received": sum(received.values()),
            "frames_lost": sum(sent.values()) - sum(received.values()),
            "checksum_errors": sum(c["checksum_errors"] for c in counters),
            "gateway_link": {k: sum(c.get(k, 0) for c in counters) for k in (
                "link_retransmits", "link_lost", "link_duplicates", "link_gaps_skipped",
                "link_restarts")},
            "ping_idle": idle,
            "ping_loaded": _percentiles(loaded_samples) if loaded_samples else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--frames", nargs="+", choices=list(FRAMINGS), default=list(FRAMINGS))
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05],
                        help="share of frames with one byte changed, both ways")
    parser.add_argument("--smoke", action="store_true",
                        help="a short run that proves the bench works; its numbers mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.devices, args.seconds, args.pings, args.noise = [2], 0.5, 10, [0.0]
    rows = [asyncio.run(run_one(n, args.seconds, args.pings, frames, noise))
            for frames in args.frames for noise in args.noise for n in args.devices]
    print(f"{'frames':>6} {'noise':>5} {'devices':>7} {'frames/s':>10} {'cpu%':>6} "
          f"{'rss MiB':>8} {'lost':>6} {'resent':>7} {'idle p50/p99 ms':>16} "
          f"{'loaded p50/p99 ms':>18}")
    for r in rows:
        loaded = r["ping_loaded"] or {"p50_ms": float("nan"), "p99_ms": float("nan")}
        print(f"{r['frames']:>6} {r['noise']:>5} {r['devices']:>7} {r['frames_per_s']:>10,} "
              f"{r['gateway_cpu_percent']:>6} {r['gateway_rss_mib']:>8} {r['frames_lost']:>6} "
              f"{r['device_retransmits']:>7} "
              f"{r['ping_idle']['p50_ms']:>7.2f}/{r['ping_idle']['p99_ms']:<8.2f} "
              f"{loaded['p50_ms']:>8.2f}/{loaded['p99_ms']:<8.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
