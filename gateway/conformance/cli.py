"""``mcp-gateway conformance PORT``: check a device against the serial spec and say, rule
by rule, where it breaks it (exit 0 only if nothing failed)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.conformance import report
from gateway.conformance.probe import PortBusy, PortUnavailable
from gateway.conformance.rules import GROUPS
from gateway.conformance.runner import HELLO_TIMEOUT_S, REBOOT_TIMEOUT_S, Options, run
from gateway.frames import ProfileRegistry
from gateway.frames.framing import DEFAULT_FRAMES, FRAMINGS
from gateway.settings import LinkSettings, default_of

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The kit's options."""
    parser.add_argument("port", metavar="PORT",
                        help="the device's port: a tty path or a pyserial URL "
                        "(socket://host:port)")
    parser.add_argument("--frames", choices=list(FRAMINGS), default=DEFAULT_FRAMES,
                        help="the frame profile the device speaks (default %(default)s); "
                        "ms720 adds the link checks")
    parser.add_argument("--profile", default="env-sensor",
                        help="the device profile: its keys, STATUS layout and commands "
                        "(default %(default)s)")
    parser.add_argument("--profiles-dir", type=Path, action="append", default=[],
                        help="a directory of profile TOML files (repeatable)")
    parser.add_argument("--baudrate", type=int, default=115200)
    parser.add_argument("--only", nargs="+", metavar="GROUP",
                        help=f"check only these groups ({', '.join(GROUPS)}) or rule ids "
                        "(REG-1 ...)")
    parser.add_argument("--link-retries", type=int,
                        default=default_of(LinkSettings, "retries"),
                        help="ms720: the retransmissions the device is configured for "
                        "(default %(default)s)")
    parser.add_argument("--hello-timeout", type=float, default=HELLO_TIMEOUT_S, metavar="S",
                        help="how long to wait for the first HELLO (default %(default)s s)")
    parser.add_argument("--reboot-timeout", type=float, default=REBOOT_TIMEOUT_S, metavar="S",
                        help="on a terminal, how long to wait after asking you to reset the "
                        "device (default %(default)s s)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    parser.add_argument("--no-color", action="store_true", help="no colour, even on a tty")


def _ask(line: str) -> None:
    print(f"conformance: {line}", file=sys.stderr, flush=True)


async def main(args: argparse.Namespace) -> int:
    """Run the kit as the options say; the exit status."""
    try:
        profile = ProfileRegistry(args.profiles_dir).get(args.profile)
        options = Options(url=args.port, profile=profile, frames=args.frames,
                          baudrate=args.baudrate,
                          only=tuple(args.only) if args.only else None,
                          link_retries=args.link_retries, hello_timeout_s=args.hello_timeout,
                          reboot_timeout_s=args.reboot_timeout,
                          ask_operator=_ask if sys.stdin.isatty() else None)
        options.rules()  # a bad --only word is a usage error before the port is touched
    except (ValueError, LookupError) as exc:
        print(f"mcp-gateway conformance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        results = await run(options)
    except (PortBusy, PortUnavailable) as exc:
        print(f"mcp-gateway conformance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    duration = loop.time() - started
    colour = sys.stdout.isatty() and not args.no_color
    report.table(results, sys.stdout, colour=colour)
    if args.json:
        report.write_json(args.json, results, options, duration)
    if args.junit:
        report.write_junit(args.junit, results, options, duration)
    return EXIT_FAILED if any(r.verdict == "fail" for r in results) else EXIT_OK
