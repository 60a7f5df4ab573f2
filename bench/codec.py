"""Codec throughput: frame encode/decode and the deframer on a long noisy stream.

Prints a table and one JSON object. Each figure is the best of --repeat runs (the least
disturbed by other work on the machine); one Python thread, so one core.

    .venv/bin/python bench/codec.py [--frames 100000] [--repeat 5] [--chunk 4096]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import time
from collections import Counter
from collections.abc import Callable

from gateway.frames import MCP_FRAME, Deframer, Frame, decode_frame, encode_frame
from gateway.frames.ms720 import MS720_FRAME, LinkFrame, Ms720Deframer, decode_link, encode_link


def best_rate(fn: Callable[[], int], repeat: int) -> float:
    """Items per second of ``fn`` (which returns how many it did), best of ``repeat``."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        count = fn()
        best = max(best, count / (time.perf_counter() - start))
    return best


def noisy_stream(
    frames: list[Frame], garbage_share: float, rng: random.Random, *, with_header: bool
) -> bytes:
    parts = []
    for frame in frames:
        if rng.random() < garbage_share:
            junk = rng.randbytes(rng.randint(1, 16))
            parts.append(junk if with_header else junk.replace(b"\x5a", b"\x00"))
        parts.append(frame.encode())
    return b"".join(parts)


def deframe(stream: bytes, chunk: int) -> tuple[list[Frame], Deframer]:
    deframer = Deframer()
    out: list[Frame] = []
    for i in range(0, len(stream), chunk):
        out += deframer.feed(stream[i : i + chunk])
    return out, deframer


def deframe_count(stream: bytes, chunk: int) -> int:
    """Frames found, not kept: a gateway hands frames on and drops them, so should a bench."""
    deframer = Deframer()
    feed = deframer.feed
    return sum(len(feed(stream[i : i + chunk])) for i in range(0, len(stream), chunk))


def recovered_share(sent: list[Frame], got: list[Frame]) -> float:
    i = 0
    for frame in got:
        if i < len(sent) and frame == sent[i]:
            i += 1
    return i / len(sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=4096, help="bytes per feed (a serial read)")
    parser.add_argument("--smoke", action="store_true",
                        help="a short run that proves the bench works; its numbers mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.frames, args.repeat = 2000, 1
    rng = random.Random(42)
    results: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "frames": args.frames,
        "chunk": args.chunk,
    }
    rows = []
    for size in (16, 200):
        sample = [Frame(0x20, rng.randbytes(size)) for _ in range(1000)]
        wires = [f.encode() for f in sample]
        n = len(sample)

        def encode_all(sample=sample, n=n) -> int:
            for f in sample:
                encode_frame(f.cmd_id, f.payload)
            return n

        def decode_all(wires=wires, n=n) -> int:
            for w in wires:
                decode_frame(w)
            return n

        def construct_all(wires=wires, n=n) -> int:
            for w in wires:
                MCP_FRAME.parse(w)
            return n

        frames = [sample[i % n] for i in range(args.frames)]
        clean = noisy_stream(frames, 0.01, rng, with_header=False)
        dirty = noisy_stream(frames, 0.01, rng, with_header=True)
        clean_out, _ = deframe(clean, args.chunk)
        dirty_out, dirty_deframer = deframe(dirty, args.chunk)
        row = {
            "payload_bytes": size,
            "encode_fps": best_rate(encode_all, args.repeat),
            "decode_fps": best_rate(decode_all, args.repeat),
            "construct_parse_fps": best_rate(construct_all, max(1, args.repeat // 2)),
            "deframer_fps": best_rate(lambda c=clean: deframe_count(c, args.chunk), args.repeat),
            "deframer_fps_garbage_with_0x5a": best_rate(
                lambda d=dirty: deframe_count(d, args.chunk), args.repeat
            ),
            "recovered_garbage_without_0x5a": recovered_share(frames, clean_out),
            "recovered_garbage_with_0x5a": recovered_share(frames, dirty_out),
            "false_accepts_with_0x5a": len(dirty_out)
            - round(recovered_share(frames, dirty_out) * len(frames)),
            "checksum_errors_with_0x5a": dirty_deframer.stats.checksum_errors,
        }
        rows.append(row)
    # Mixed traffic (HELLO-sized, PING, LOG, READ_RESP and STATUS frames interleaved): no
    # runs of same-size frames, so every frame takes the one-by-one path.
    kinds = [Frame(0x20, rng.randbytes(10)), Frame(0x02, b""), Frame(0x21, b"\x01boot ok"),
             Frame(0x90, rng.randbytes(6)), Frame(0x01, rng.randbytes(40))]
    mixed = b"".join(rng.choice(kinds).encode() for _ in range(args.frames))
    results["mixed_traffic_deframer_fps"] = best_rate(
        lambda: deframe_count(mixed, args.chunk), args.repeat
    )
    results["results"] = rows
    results["ms720"] = ms720_rows = [ms720(size, args, rng) for size in (16, 200)]
    results["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    print(
        f"{'payload':>8} {'encode/s':>11} {'decode/s':>11} {'construct/s':>12} "
        f"{'deframe/s':>11} {'deframe/s*':>11} {'recovered':>10} {'recovered*':>10}"
    )
    for r in rows:
        print(
            f"{r['payload_bytes']:>7}B {r['encode_fps']:>11,.0f} {r['decode_fps']:>11,.0f} "
            f"{r['construct_parse_fps']:>12,.0f} {r['deframer_fps']:>11,.0f} "
            f"{r['deframer_fps_garbage_with_0x5a']:>11,.0f} "
            f"{r['recovered_garbage_without_0x5a']:>10.4%} "
            f"{r['recovered_garbage_with_0x5a']:>10.4%}"
        )
    print(f"mixed-size traffic (no same-size runs): deframe/s "
          f"{results['mixed_traffic_deframer_fps']:,.0f}")
    print(
        "(* garbage may contain 0x5A; deframer on 1% garbage, fed in "
        f"{args.chunk}-byte reads; best of {args.repeat})"
    )
    print(f"\n{'ms720':>8} {'encode/s':>11} {'decode/s':>11} {'construct/s':>12} "
          f"{'deframe/s':>11} {'5% corrupt: deframe/s':>22} {'intact kept':>12} "
          f"{'mcp kept':>9} {'false ms720/mcp':>16}")
    for r in ms720_rows:
        print(f"{r['payload_bytes']:>7}B {r['encode_fps']:>11,.0f} {r['decode_fps']:>11,.0f} "
              f"{r['construct_parse_fps']:>12,.0f} {r['deframer_fps']:>11,.0f} "
              f"{r['deframer_fps_5pct_corrupt']:>22,.0f} {r['intact_recovered']:>12.4%} "
              f"{r['mcp_intact_recovered']:>9.4%} "
              f"{r['false_frames']:>7}/{r['mcp_false_frames']:<8}")
    print("(5% of frames have one byte changed; 'kept' = share of the intact frames "
          "delivered, with no false frame; retransmission is the link layer's job)")
    print(json.dumps(results))


def ms720(size: int, args: argparse.Namespace, rng: random.Random) -> dict[str, object]:
    """The same measures for the ms720 profile, and 5% corrupted frames beside mcp."""
    sample = [LinkFrame(2, i, b"\x20" + rng.randbytes(size)) for i in range(1000)]
    wires = [f.encode() for f in sample]
    n = len(sample)

    def encode_all() -> int:
        for f in sample:
            encode_link(f.msg_type, f.seq, f.payload)
        return n

    def decode_all() -> int:
        for w in wires:
            decode_link(w)
        return n

    def construct_all() -> int:
        for w in wires:
            MS720_FRAME.parse(w)
        return n

    def count(stream: bytes) -> int:
        deframer, total = Ms720Deframer(), 0
        for i in range(0, len(stream), args.chunk):
            total += len(deframer.feed(stream[i:i + args.chunk]))
        return total

    frames = [LinkFrame(2, i, sample[i % n].payload) for i in range(args.frames)]
    clean = b"".join((rng.randbytes(rng.randint(1, 16)) if rng.random() < 0.01 else b"")
                     + f.encode() for f in frames)
    corrupt_ms, intact_ms, corrupt_mcp, intact_mcp = [], [], [], []
    for f in frames:
        hit = rng.random() < 0.05
        wire, mcp_wire = f.encode(), Frame(f.payload[0], f.payload[1:]).encode()
        if hit:
            i = rng.randrange(len(wire))
            wire = wire[:i] + bytes([wire[i] ^ rng.randint(1, 255)]) + wire[i + 1:]
            j = rng.randrange(len(mcp_wire))
            mcp_wire = mcp_wire[:j] + bytes([mcp_wire[j] ^ rng.randint(1, 255)]) + \
                mcp_wire[j + 1:]
        else:
            intact_ms.append(f)
            intact_mcp.append(Frame(f.payload[0], f.payload[1:]))
        corrupt_ms.append(wire)
        corrupt_mcp.append(mcp_wire)
    noisy = b"".join(corrupt_ms)
    got = Ms720Deframer().feed(noisy)
    got_mcp, _ = deframe(b"".join(corrupt_mcp), args.chunk)

    def kept(got: list, intact: list) -> float:
        return sum((Counter(got) & Counter(intact)).values()) / len(intact)

    def false(got: list, sent: list) -> int:  # frames that were never sent
        return sum((Counter(got) - Counter(sent)).values())

    sent_mcp = [Frame(f.payload[0], f.payload[1:]) for f in frames]
    return {
        "payload_bytes": size,
        "encode_fps": best_rate(encode_all, args.repeat),
        "decode_fps": best_rate(decode_all, args.repeat),
        "construct_parse_fps": best_rate(construct_all, max(1, args.repeat // 2)),
        "deframer_fps": best_rate(lambda: count(clean), args.repeat),
        "deframer_fps_5pct_corrupt": best_rate(lambda: count(noisy), args.repeat),
        "intact_recovered": kept(got, intact_ms),
        "false_frames": false(got, frames),
        "mcp_intact_recovered": kept(got_mcp, intact_mcp),
        "mcp_false_frames": false(got_mcp, sent_mcp),
    }


if __name__ == "__main__":
    main()
