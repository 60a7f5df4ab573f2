"""Host CPU per frame: device-sdk's C deframers beside the gateway's Python ones.

Informative only (the SDK targets microcontrollers; this is the host build,
``device-sdk/build/host/libmcp.so``, gcc -O2, through ctypes). Both sides are fed the same
stream of env-sensor STATUS frames (``mcp``: 15 bytes a frame; ``ms720``: 24), clean and
with 1% of the frames preceded by 1-16 garbage bytes, in the same big chunks (up to 64 KiB,
and never more than the 4096 frames the shim records per call), so one ctypes call
(~1 us) is spread over thousands of frames and the C figure is the deframer's: its scan,
its checksum or CRC and the shim's copy of each frame into its record (the frames are
counted, not turned into Python objects). The Python figure is ``Deframer.feed`` /
``Ms720Deframer.feed`` returning its list of frames. Each figure is the best of --repeat
runs, on one core.

    .venv/bin/python bench/sdk_deframer.py [--frames 100000] [--repeat 5] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.frames import Deframer, Frame
from gateway.frames.ms720 import LinkFrame, Ms720Deframer
from tests import sdk_lib

MAX_CHUNK = 64 * 1024


def status_payload(rng: random.Random, uptime: int) -> bytes:
    """The env-sensor STATUS payload: i16 centi-degC, u16 centi-%, u16 mV, u32 uptime s."""
    return (rng.randint(1500, 3000).to_bytes(2, "little", signed=True)
            + rng.randint(2000, 8000).to_bytes(2, "little")
            + rng.randint(3000, 3400).to_bytes(2, "little") + uptime.to_bytes(4, "little"))


def stream_of(wires: list[bytes], garbage_share: float, rng: random.Random) -> bytes:
    parts = []
    for wire in wires:
        if rng.random() < garbage_share:
            parts.append(rng.randbytes(rng.randint(1, 16)))
        parts.append(wire)
    return b"".join(parts)


def chunks_of(stream: bytes, frame_size: int) -> list[bytes]:
    """Feeds of up to 64 KiB that cannot hold more than the shim's 4096 records."""
    size = min(MAX_CHUNK, sdk_lib.SHIM_FRAMES * frame_size)
    return [stream[i:i + size] for i in range(0, len(stream), size)]


def best_seconds(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    """Least time of ``repeat`` runs of ``fn`` (which returns the frames it found)."""
    best, found = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        found = fn()
        best = min(best, time.perf_counter() - start)
    return best, found


def measure(ms720: bool, chunks: list[bytes], repeat: int) -> dict[str, float | int]:
    # Built once, outside the timing (the shim is a 1 MiB struct): after each pass over the
    # stream a deframer holds at most a frame's start, as after any read.
    c_deframer = sdk_lib.CDeframer(ms720)
    py_deframer = (Ms720Deframer(max_payload=sdk_lib.MS720_MAX_PAYLOAD) if ms720
                   else Deframer())

    def run_c() -> int:
        feed = c_deframer.feed_count  # raises if a call made more records than the shim keeps
        before = c_deframer.stats["frames"]
        for chunk in chunks:
            feed(chunk, 0)
        return c_deframer.stats["frames"] - before

    def run_python() -> int:
        feed = py_deframer.feed
        return sum(len(feed(chunk)) for chunk in chunks)

    c_s, c_frames = best_seconds(run_c, repeat)
    py_s, py_frames = best_seconds(run_python, repeat)
    # The same stream gives the same frames on both sides (tests/test_sdk_differential.py):
    # the counts are printed as a check that both really did the work.
    return {"c_ns_per_frame": c_s / c_frames * 1e9, "python_ns_per_frame": py_s / py_frames * 1e9,
            "c_frames": c_frames, "python_frames": py_frames,
            "python_over_c": py_s / c_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true",
                        help="a short run that proves the bench works; its numbers mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.frames, args.repeat = 5000, 1
    try:
        sdk_lib.load()
    except sdk_lib.BuildUnavailable as e:
        print(f"skipped: {e}")
        print(json.dumps({"skipped": str(e)}))
        return
    rng = random.Random(42)
    payloads = [status_payload(rng, uptime) for uptime in range(args.frames)]
    profiles = {
        "mcp": (False, [Frame(0x20, p).encode() for p in payloads]),
        "ms720": (True, [LinkFrame(0x02, seq, b"\x20" + p).encode()
                         for seq, p in enumerate(payloads)]),
    }
    rows = []
    for name, (ms720, wires) in profiles.items():
        for garbage in (0.0, 0.01):
            stream = stream_of(wires, garbage, rng)
            chunks = chunks_of(stream, len(wires[0]))
            row = {"profile": name, "frame_bytes": len(wires[0]), "garbage_share": garbage,
                   "chunk_bytes": len(chunks[0]), **measure(ms720, chunks, args.repeat)}
            rows.append(row)
    results = {"python": platform.python_version(), "machine": platform.machine(),
               "frames": args.frames, "repeat": args.repeat, "results": rows}

    print(f"{'profile':>8} {'frame':>6} {'garbage':>8} {'chunk':>7} {'C ns/frame':>11} "
          f"{'Python ns/frame':>16} {'Python/C':>9} {'frames C/Python':>18}")
    for r in rows:
        print(f"{r['profile']:>8} {r['frame_bytes']:>5}B {r['garbage_share']:>8.0%} "
              f"{r['chunk_bytes']:>7} {r['c_ns_per_frame']:>11.1f} "
              f"{r['python_ns_per_frame']:>16.1f} {r['python_over_c']:>8.1f}x "
              f"{r['c_frames']:>8}/{r['python_frames']:<9}")
    print(f"({args.frames:,} env-sensor STATUS frames per stream; host CPU of one core, best of "
          f"{args.repeat}. C: libmcp.so's deframer through one ctypes call per chunk, frames "
          "counted in the shim's records, not made into Python objects; Python: the gateway's "
          "Deframer/Ms720Deframer.feed, frames returned as a list)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
