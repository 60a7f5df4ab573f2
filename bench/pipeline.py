"""Pipelined requests on ms720: requests/s and latency to one device, 1 vs N in flight.

One simulated ms720 device on a real pty answers each request after ``--delay-ms`` (a
device that takes time to act, or a slow line), with a random 0..``--jitter-ms`` more so
answers come out of order; the gateway sends ``--requests`` reads, all queued at once, with
``max_in_flight`` 1, 4 and 16. Devices and gateway share this process.

    .venv/bin/python bench/pipeline.py [--requests 2000] [--delay-ms 5] [--jitter-ms 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim import Faults, Fleet, FleetSpec
from gateway.app import Gateway
from gateway.config import parse_config


async def run_one(in_flight: int, requests: int, delay_ms: float, jitter_ms: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        links = Path(tmp) / "links"
        faults = Faults(response_delay_s=delay_ms / 1000, response_jitter_s=jitter_ms / 1000)
        spec = FleetSpec(count=1, interval_ms=3_600_000, frames="ms720", faults=faults,
                         link_dir=links, seed=1)
        async with Fleet(spec):
            config = parse_config({
                "gateway_id": "bench",
                "state_dir": str(Path(tmp) / "state"),
                "ports": [{"name": "sim-0", "path": str(links / "sim-0"), "frames": "ms720",
                           "max_in_flight": in_flight, "max_queue": requests}],
            })
            async with Gateway(config) as gateway:
                session = gateway.device("sim-0")
                deadline = time.monotonic() + 20
                while session.node_id is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the device did not register")
                    await asyncio.sleep(0.05)
                start = time.perf_counter()
                outcomes = await asyncio.gather(*(
                    session.request("read", {"key": "fw_build"}, timeout=5)
                    for _ in range(requests)))
                elapsed = time.perf_counter() - start
                peak = session.transactions.peak_in_flight
    latencies = sorted(o.latency_s for o in outcomes if o.ok)
    return {
        "max_in_flight": in_flight,
        "peak_in_flight": peak,
        "requests": requests,
        "ok": len(latencies),
        "requests_per_s": round(requests / elapsed),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--jitter-ms", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--smoke", action="store_true",
                        help="a short run that proves the bench works; its numbers mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.in_flight = 50, [1, 4]
    rows = [asyncio.run(run_one(n, args.requests, args.delay_ms, args.jitter_ms))
            for n in args.in_flight]
    print(f"device answers after {args.delay_ms} ms + 0..{args.jitter_ms} ms; "
          f"{args.requests} reads queued at once; latency includes queueing")
    print(f"{'in flight':>9} {'peak':>5} {'ok':>6} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['max_in_flight']:>9} {r['peak_in_flight']:>5} {r['ok']:>6} "
              f"{r['requests_per_s']:>11,} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
