"""``mcp-gateway``: the command line. Each subcommand parses its options and hands over."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
from pathlib import Path

import tomli_w

from gateway import __version__, udev_rule, wakeups
from gateway.bridge.client import RequestClient, RequestFailed
from gateway.bridge.mqtt import BrokerSettings
from gateway.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    effective,
    load_config,
    read_password_file,
    readable_file,
)
from gateway.conformance import cli as conformance_cli
from gateway.demo import DemoOptions, headless_wanted, run_demo
from gateway.errors import ConfigError, GatewayError
from gateway.frames import ProfileRegistry
from gateway.frames.framing import DEFAULT_FRAMES, FRAMINGS
from gateway.logs import setup_logging
from gateway.monitor import PortHeld, PortMonitor, monitor_ports
from gateway.service import Service

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_BROKER = BrokerSettings().url  # the declared default (gateway.settings)
DEFAULT_PREFIX = "mcp/v1"


class UsageError(GatewayError):
    """Bad arguments (exit 2)."""


def _add_broker_options(parser: argparse.ArgumentParser) -> None:
    """How a client command (request, dashboard) reaches the broker: flags, or --config."""
    group = parser.add_argument_group(
        "broker", "where the fabric is: flags, or --config to take everything from the "
        "gateway's configuration file (its [broker] table and topic_prefix)")
    group.add_argument("--config", type=Path, metavar="FILE",
                       help="the gateway's config file: URL, protocol, credentials, TLS, prefix")
    group.add_argument("--broker", metavar="URL[,URL...]",
                       help=f"the broker (default {DEFAULT_BROKER}; mqtts:// for TLS), or a "
                       "cluster's nodes separated by commas, tried in turn")
    group.add_argument("--protocol", type=int, choices=(3, 5),
                       help="MQTT version (default 5; 3 for brokers without MQTT 5)")
    group.add_argument("--prefix", help=f"topic prefix (default {DEFAULT_PREFIX})")
    group.add_argument("--username")
    secret = group.add_mutually_exclusive_group()
    secret.add_argument("--password-env", metavar="VAR",
                        help="environment variable holding the password")
    secret.add_argument("--password-file", metavar="FILE", help="file holding the password")
    group.add_argument("--ca-file", metavar="FILE", help="CA bundle for mqtts://")
    group.add_argument("--cert-file", metavar="FILE", help="client certificate (mutual TLS)")
    group.add_argument("--key-file", metavar="FILE", help="the client certificate's key")


_BROKER_FLAGS = ("broker", "protocol", "prefix", "username", "password_env", "password_file",
                 "ca_file", "cert_file", "key_file")


def _broker_client(args: argparse.Namespace) -> tuple[BrokerSettings, str]:
    """The broker settings and topic prefix the options say; ``UsageError`` saying what is
    wrong (a flag beside --config, a password variable not set, a file not readable)."""
    if args.config is not None:
        given = [f"--{name.replace('_', '-')}" for name in _BROKER_FLAGS
                 if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--config gives the broker and prefix; leave out {', '.join(given)}")
        config = load_config(args.config)
        if config.broker is None:
            raise UsageError(f"{args.config} has no [broker] table: give --broker instead")
        return config.broker, config.topic_prefix
    password = None
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if password is None:
            raise UsageError(f"--password-env {args.password_env}: the variable is not set")
    if args.password_file is not None:
        try:
            password = read_password_file(args.password_file)
        except OSError as exc:
            raise UsageError(f"--password-file {args.password_file}: {exc.strerror}") from None
    for flag in ("ca_file", "cert_file", "key_file"):
        path = getattr(args, flag)
        if path is not None and not readable_file(path):
            raise UsageError(f"--{flag.replace('_', '-')} {path}: not a readable file")
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together")
    defaults = BrokerSettings()
    urls = tuple(url.strip() for url in (args.broker or defaults.url).split(","))
    for url in urls:
        BrokerSettings(url=url).endpoint()  # malformed: a usage error now, not a retry loop
    if len({url.split("://", 1)[0].lower() for url in urls}) > 1:
        raise UsageError("--broker: the nodes mix mqtt:// and mqtts://; give one scheme "
                         "(the TLS options apply to every node)")
    settings = BrokerSettings(url=urls[0], urls=urls if len(urls) > 1 else (),
                              protocol=args.protocol or defaults.protocol,
                              username=args.username, password=password, ca_file=args.ca_file,
                              cert_file=args.cert_file, key_file=args.key_file)
    return settings, args.prefix or DEFAULT_PREFIX


async def _until_stopped(duration: float | None) -> None:
    """Wait for SIGINT/SIGTERM, or for ``duration`` seconds if given."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config, check_state_dir=True)
    # The loop lingers as the file says (``linger_ms``); a reload keeps it until a restart.
    with asyncio.Runner(loop_factory=wakeups.loop_factory(config.linger_s)) as runner:
        return runner.run(Service(args.config, config).run())


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file, check_state_dir=True)
    for warning in config.warnings:  # it runs, but probably not as meant
        print(f"mcp-gateway: warning: {args.file}: {warning}", file=sys.stderr)
    sys.stdout.write(f"# {args.file}: valid. The effective configuration, every default "
                     "filled in:\n")
    sys.stdout.write(tomli_w.dumps(effective(config)))
    return EXIT_OK


async def _request(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.json) if args.json is not None else {}
    except ValueError as exc:
        raise UsageError(f"JSON argument is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise UsageError("JSON argument must be an object, e.g. '{\"key\": \"interval_ms\"}'")
    broker, prefix = _broker_client(args)
    # One-shot: it says at once when no answer can come (refused, lost, no such gateway).
    async with RequestClient(broker, prefix, name="mcp-request", gateway=args.gateway,
                             fail_fast=True) as client:
        try:
            response = await client.request(
                args.gateway, None if args.device == "-" else args.device, args.action,
                payload, device_timeout_s=args.timeout_s, wait_s=args.wait_s)
        except RequestFailed as exc:
            print(f"mcp-gateway: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    print(json.dumps(response, indent=2, ensure_ascii=False))
    return EXIT_OK if response.get("status") == "ok" else EXIT_FAILURE


def _dashboard(args: argparse.Namespace) -> int:
    from tui.app import DashboardApp  # noqa: PLC0415 - Textual loads only when asked for

    broker, prefix = _broker_client(args)
    DashboardApp(broker, gateway=args.gateway, prefix=prefix).run()
    return EXIT_OK


async def _monitor(args: argparse.Namespace) -> int:
    profile = ProfileRegistry().get(args.profile) if args.profile else None
    monitors = [
        PortMonitor(url, url, profile=profile, passive=args.passive, baudrate=args.baudrate,
                    frames=args.frames)
        for url in args.ports
    ]
    watching = asyncio.create_task(monitor_ports(monitors))
    stopping = asyncio.create_task(_until_stopped(args.duration))
    await asyncio.wait((watching, stopping), return_when=asyncio.FIRST_COMPLETED)
    for task in (watching, stopping):
        task.cancel()
    await asyncio.gather(watching, stopping, return_exceptions=True)
    failure = None if watching.cancelled() else watching.exception()
    if isinstance(failure, PortHeld):
        print(f"mcp-gateway monitor: {failure}", file=sys.stderr)
        return EXIT_FAILURE
    if failure is not None:
        raise failure
    return EXIT_OK


def _udev_rule(args: argparse.Namespace) -> int:
    try:
        adapter = udev_rule.find_adapter(args.device, args.sysfs, args.udev_data)
        if not (args.by_path or adapter.serial):
            raise udev_rule.UdevRuleError(udev_rule.no_serial_message(adapter, args.name))
        if args.name is not None:
            name = udev_rule.check_name(args.name)
        elif args.by_path:
            raise udev_rule.UdevRuleError("--by-path needs --name: there is no serial number "
                                          "to name the device after")
        else:
            name = adapter.default_name()
        text = udev_rule.render(adapter, name, by_path=args.by_path)
    except udev_rule.UdevRuleError as exc:
        print(f"mcp-gateway udev-rule: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(text)
    command = " ".join(["mcp-gateway", "udev-rule", shlex.quote(args.device),
                        *(["--by-path"] if args.by_path else []), "--name", shlex.quote(name)])
    sys.stderr.write(udev_rule.instructions(command, name))
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    options = DemoOptions(headless=headless_wanted(args.headless), count=args.count,
                          interval_ms=args.interval_ms, duration=args.duration, port=args.port)
    return await run_demo(options)


def _sim(args: argparse.Namespace) -> int:
    """``mcp-gateway sim ARGS``: ``mcp-sim ARGS``. The simulator is the project's test tool:
    imported here, never when the gateway runs."""
    try:
        from firmware_sim import cli as sim_cli  # noqa: PLC0415
    except ImportError:
        raise UsageError("sim: the simulator (firmware_sim) is not installed") from None
    parser = argparse.ArgumentParser(prog="mcp-gateway sim", description="Same as mcp-sim.")
    sim_cli.add_arguments(parser)
    return asyncio.run(sim_cli.run(parser.parse_args(args.sim_args)))


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="mcp-gateway",
        description="Hardware gateway for serial and embedded MCP devices.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                        help="stderr log level (default: the config's log_level for run, "
                        "WARNING otherwise)")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        help="text (journald-friendly: no timestamps under systemd) or json "
                        "(one object per line); default: the config's log_format, else text")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="the service: open the configured ports, bridge to the broker",
        description="Open every configured port, register devices, keep them alive, bridge "
        "them to the MQTT broker, until SIGTERM/SIGINT (devices, then the gateway, go "
        "offline on the fabric). SIGHUP re-reads the configuration file and applies it; a "
        "file with errors is rejected (logged) and the running configuration stays. Under "
        "systemd (Type=notify) it sends READY=1 once the ports are tried and the broker "
        "answered, STATUS= lines, WATCHDOG=1 pings and STOPPING=1.",
    )
    run.add_argument("--config", type=Path, required=True, metavar="FILE",
                     help="TOML configuration (see ../shared/spec/config.md)")

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file and print the effective configuration",
        description="Validate FILE; print the effective configuration (every default filled "
        "in, as TOML that loads back to the same configuration) and exit 0, or print every "
        "error with its key path and exit 2. The broker password is never printed.",
    )
    check.add_argument("file", type=Path, metavar="FILE")

    request = sub.add_parser(
        "request",
        help="send one request over MQTT and print the response envelope",
        description="Send one request to a gateway over the broker and print the response "
        "envelope as JSON. Exit 0 only if its status is ok (1 otherwise or without an "
        "answer, 2 on bad arguments). DEVICE '-' addresses the gateway itself (list_devices, "
        "reload, trace).",
        epilog="examples: mcp-gateway request --broker mqtt://127.0.0.1:1883 edge-1 sensor-a "
        "read '{\"key\": \"interval_ms\"}';  mcp-gateway request --config "
        "/etc/mcp-gateway/config.toml edge-1 - list_devices",
    )
    request.add_argument("gateway", metavar="GATEWAY", help="the gateway id")
    request.add_argument("device", metavar="DEVICE", help="the device id, or - for the gateway")
    request.add_argument("action", metavar="ACTION",
                         help="read, write, raw, ping, a profile command, or a gateway action")
    request.add_argument("json", nargs="?", metavar="JSON", help="the payload object")
    request.add_argument("--timeout", dest="timeout_s", type=float,
                         help="the device's per-try timeout, seconds (the request's timeout)")
    request.add_argument("--wait", dest="wait_s", type=float, default=10.0,
                         help="how long to wait for the response (default 10 s)")
    _add_broker_options(request)

    dashboard = sub.add_parser(
        "dashboard", help="the terminal dashboard: watch and command the fabric",
        description="The Textual dashboard, an MQTT client of the fabric: every gateway and "
        "device on the broker, live; a device's telemetry, facts and log (enter); a command "
        "form (c). Press ? in it for the keys.")
    dashboard.add_argument("--gateway", metavar="ID", help="show only this gateway")
    _add_broker_options(dashboard)

    demo = sub.add_parser(
        "demo",
        help="embedded broker + simulated devices + gateway; the fabric printed as JSON lines",
        description="Start an embedded MQTT broker, simulated env-sensor devices on "
        "pseudo-terminals (the first with light line noise) and the gateway with its MQTT "
        "bridge; print every message on the fabric as a JSON line, and a stats line per "
        "device at the end. Runs until Ctrl-C.",
    )
    demo.add_argument("--headless", action="store_true",
                      help="print the fabric as JSON lines instead of the dashboard (the "
                      "default without a terminal)")
    demo.add_argument("--count", type=int, default=3, help="simulated devices (default 3)")
    demo.add_argument("--interval-ms", type=int, default=1000, help="STATUS period")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--port", type=int, help="embedded broker port (default: a free one)")

    monitor = sub.add_parser(
        "monitor",
        help="open serial ports and print every decoded frame",
        description="Open serial ports (paths or pyserial URLs such as socket://host:port), "
        "deframe and print each frame as a JSON line. Answers HELLO and PING unless --passive. "
        "Ports are opened exclusively, as the gateway opens them: a port the gateway holds "
        "is refused (exit 1; its trace request shows a live port's frames).",
    )
    monitor.add_argument("ports", nargs="+", metavar="PORT")
    monitor.add_argument("--profile", default="env-sensor", help="decode with this device profile")
    monitor.add_argument("--baudrate", type=int, default=115200)
    monitor.add_argument("--frames", choices=list(FRAMINGS), default=DEFAULT_FRAMES,
                         help="frame profile (default %(default)s); ms720 lines carry the seq")
    monitor.add_argument("--passive", action="store_true", help="never write to the ports")
    monitor.add_argument("--duration", type=float, help="stop after this many seconds")

    udev = sub.add_parser(
        "udev-rule",
        help="print a udev rule naming one USB-serial adapter /dev/mcp/NAME",
        description="Print a udev rule that gives one plugged-in USB-serial adapter (matched "
        "by its USB vendor id, product id and serial number, read from sysfs) the stable "
        "name /dev/mcp/NAME, in group dialout, and nothing else: other serial devices on the "
        f"box stay untouched. Append it to {udev_rule.RULES_FILE}, then run "
        f"{udev_rule.RELOAD_COMMAND}.",
        epilog="example: mcp-gateway udev-rule ttyUSB0 --name boiler | sudo tee -a "
        f"{udev_rule.RULES_FILE}")
    udev.add_argument("device", metavar="DEVICE",
                      help="the adapter's tty: ttyUSB0, /dev/ttyACM0, /dev/serial/by-id/...")
    udev.add_argument("--name", help="the name under /dev/mcp (default: the serial number)")
    udev.add_argument("--by-path", action="store_true",
                      help="match the USB port it is plugged into (ENV{ID_PATH}), for "
                      "adapters without a serial number")
    # Where sysfs and udev's database are: tests point these at a fake tree.
    udev.add_argument("--sysfs", type=Path, default=Path("/sys"), help=argparse.SUPPRESS)
    udev.add_argument("--udev-data", type=Path, default=Path("/run/udev/data"),
                      help=argparse.SUPPRESS)

    conformance = sub.add_parser(
        "conformance",
        help="check a device against the serial spec, rule by rule",
        description="Play the gateway's side on PORT (opened exclusively) and check every "
        "device-facing rule of the serial spec: each rule's id, verdict (pass, fail, skip), "
        "and for a failure the frames both ways in hex with their decoding. Exit 0 only if "
        "nothing failed (1 if something did, 2 for bad options or a port that cannot be "
        "had). See docs/device-guide.md.")
    conformance_cli.add_arguments(conformance)

    # Its options are the simulator's, parsed when it runs (``_sim``): the product's
    # command line does not import its test tool.
    sub.add_parser("sim", help="simulated devices (same as mcp-sim; sim --help for its "
                   "options)", description="Same as mcp-sim.", add_help=False)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level, fmt = args.log_level, args.log_format
    if args.command == "run":
        # A service says what it does: the config's level (INFO by default) unless overridden.
        with contextlib.suppress(GatewayError):
            config = load_config(args.config)
            level, fmt = level or config.log_level, fmt or config.log_format
    setup_logging(level or ("INFO" if args.command == "run" else "WARNING"), fmt or "text")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mcp-gateway``."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "sim":
        args.sim_args = rest  # the simulator's own options
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # Printing to a closed pipe (``| head``) ends the program quietly, as Unix filters do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _setup_logging(args)
    runners = {"demo": _demo, "monitor": _monitor, "request": _request,
               "conformance": conformance_cli.main}
    plain = {"run": _run, "check-config": _check_config, "dashboard": _dashboard,
             "udev-rule": _udev_rule, "sim": _sim}
    try:
        if args.command in plain:
            return plain[args.command](args)
        return asyncio.run(runners[args.command](args))
    except ConfigError as exc:
        print(f"mcp-gateway: configuration error in {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (GatewayError, ValueError) as exc:
        print(f"mcp-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
