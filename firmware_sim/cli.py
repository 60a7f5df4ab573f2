"""``mcp-sim``: run simulated devices until SIGINT/SIGTERM, printing ``NAME PATH`` per device."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
from pathlib import Path

from firmware_sim.breaks import BREAKS
from firmware_sim.device import Faults
from firmware_sim.fleet import Fleet, FleetSpec
from gateway.errors import GatewayError
from gateway.frames.framing import DEFAULT_FRAMES, FRAMINGS

log = logging.getLogger("mcp-sim")


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options (shared by ``mcp-sim`` and ``mcp-gateway sim``)."""
    link = parser.add_mutually_exclusive_group()
    link.add_argument("--pty", action="store_true", help="devices on pseudo-terminals (default)")
    link.add_argument(
        "--tcp", type=int, metavar="PORT", default=None,
        help="devices on TCP listeners (socket://HOST:PORT+i); 0 picks free ports",
    )
    parser.add_argument("--host", default="127.0.0.1", help="TCP listen address")
    parser.add_argument("--count", type=int, default=1, help="how many devices (default 1)")
    parser.add_argument("--profile", default="env-sensor", help="device profile name")
    parser.add_argument("--profiles-dir", type=Path, action="append", default=[],
                        help="extra directory of profile TOML files (repeatable)")
    parser.add_argument("--frames", choices=list(FRAMINGS), default=DEFAULT_FRAMES,
                        help="frame profile (default %(default)s); ms720: CRC-16, seq, ACKs "
                        "and retransmission")
    parser.add_argument("--link-retries", type=int, default=3,
                        help="retransmissions before a frame is given up, on a framing "
                        "with a link layer (ms720; default 3)")
    parser.add_argument("--name-prefix", default="sim", help="devices are PREFIX-0, PREFIX-1, ...")
    parser.add_argument("--link-dir", type=Path,
                        help="keep a stable symlink DIR/NAME to each device's current pty")
    parser.add_argument("--interval-ms", type=int, help="STATUS period (default: the profile's)")
    parser.add_argument("--no-hello", action="store_true", help="devices never send HELLO")
    parser.add_argument("--seed", type=int, help="random seed, for repeatable faults and values")
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--garbage-rate", type=_rate, default=0.0,
                        help="chance per frame of random garbage bytes before it")
    faults.add_argument("--garbage-max", type=int, default=16, help="most garbage bytes at once")
    faults.add_argument("--corrupt-rate", type=_rate, default=0.0,
                        help="chance per frame of a wrong checksum")
    faults.add_argument("--drop-rate", type=_rate, default=0.0,
                        help="chance per request that no answer is sent")
    faults.add_argument("--delay-ms", type=float, default=0.0, help="delay before each answer")
    faults.add_argument("--jitter-ms", type=float, default=0.0,
                        help="a random 0..N ms more per answer (answers overtake each other)")
    faults.add_argument("--rx-corrupt-rate", type=_rate, default=0.0,
                        help="chance a received chunk has a byte changed (noise to the device)")
    faults.add_argument("--frame-drop-rate", type=_rate, default=0.0,
                        help="chance a frame on the wire is lost whole (ms720 resends it)")
    faults.add_argument("--duplicate-rate", type=_rate, default=0.0,
                        help="chance a frame on the wire is sent twice (ms720 drops the copy)")
    faults.add_argument("--break", dest="breaks", action="append", default=[],
                        metavar="NAME", help="break one rule of the spec on purpose, for "
                        f"the conformance kit (repeatable): {', '.join(BREAKS)}")
    faults.add_argument("--unplug-every", type=_positive, metavar="S",
                        help="unplug each device about every S seconds")
    faults.add_argument("--unplug-for", type=_positive, metavar="S", default=2.0,
                        help="how long an unplug lasts (default %(default)s s)")


def spec_from_args(args: argparse.Namespace) -> FleetSpec:
    """The ``FleetSpec`` the options describe."""
    return FleetSpec(
        count=args.count,
        profile=args.profile,
        link="tcp" if args.tcp is not None else "pty",
        tcp_host=args.host,
        tcp_port=args.tcp or 0,
        name_prefix=args.name_prefix,
        link_dir=args.link_dir,
        send_hello=not args.no_hello,
        interval_ms=args.interval_ms,
        faults=Faults(
            garbage_rate=args.garbage_rate,
            garbage_max=args.garbage_max,
            corrupt_rate=args.corrupt_rate,
            drop_rate=args.drop_rate,
            response_delay_s=args.delay_ms / 1000.0,
            response_jitter_s=args.jitter_ms / 1000.0,
            rx_corrupt_rate=args.rx_corrupt_rate,
            frame_drop_rate=args.frame_drop_rate,
            duplicate_rate=args.duplicate_rate,
            breaks=frozenset(args.breaks),
        ),
        frames=args.frames,
        link_retries=args.link_retries,
        seed=args.seed,
        profile_dirs=tuple(args.profiles_dir),
    )


async def _unplug_forever(fleet: Fleet, every: float, duration: float, rng: random.Random) -> None:
    async def cycle(device) -> None:  # noqa: ANN001
        while True:
            await asyncio.sleep(every * rng.uniform(0.5, 1.5))
            await device.unplug(duration)
            print(f"# {device.name} replugged at {device.link.path}", file=sys.stderr, flush=True)

    async with asyncio.TaskGroup() as tasks:
        for device in fleet.devices:
            tasks.create_task(cycle(device), name=f"unplug-{device.name}")


async def run(args: argparse.Namespace) -> int:
    """Run the fleet until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    spec = spec_from_args(args)
    async with Fleet(spec) as fleet:
        for device in fleet.devices:
            print(device.name, device.link.path, flush=True)
        unplugger = None
        if args.unplug_every:
            rng = random.Random(args.seed)
            unplugger = asyncio.create_task(
                _unplug_forever(fleet, args.unplug_every, args.unplug_for, rng)
            )
        await stop.wait()
        if unplugger is not None:
            unplugger.cancel()
            await asyncio.gather(unplugger, return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mcp-sim``."""
    parser = argparse.ArgumentParser(
        prog="mcp-sim",
        description="Simulated MCP devices over pseudo-terminals or TCP, with fault injection. "
        "Prints NAME PATH per device, then runs until SIGINT/SIGTERM.",
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(run(args))
    except (GatewayError, ValueError, OSError) as exc:
        print(f"mcp-sim: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
