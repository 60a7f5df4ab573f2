"""The service path: ``mcp-gateway run`` as a real subprocess (systemd notify, SIGHUP reload,
SIGTERM), ``check-config`` and ``request``, against a real Mosquitto and simulated devices."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

from firmware_sim import Fleet, FleetSpec
from gateway.config import load_config, parse_config
from gateway.frames import ProfileRegistry
from tests.harness import wait_for
from tests.mqtt_helpers import Client, Mosquitto

BIN = Path(sys.executable).parent
GW = "svc"
P = f"mcp/v1/{GW}"


def write_config(path: Path, tmp_path: Path, broker: Mosquitto, ports: list[str],
                 links: Path, extra: str = "") -> None:
    text = (f'gateway_id = "{GW}"\nstate_dir = "{tmp_path / "state"}"\n{extra}\n'
            f'[broker]\nurl = "{broker.url}"\n')
    for name in ports:
        text += f'\n[[ports]]\nname = "{name}"\npath = "{links / name}"\nheartbeat_s = 1\n'
    path.write_text(text)


class NotifySocket:
    """A fake systemd: a datagram socket collecting what the service says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def poll(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1)
                                      for line in data.decode().splitlines()))

    def said(self, key: str) -> list[dict[str, str]]:
        return [m for m in self.poll() if key in m]


async def start_gateway(config: Path, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / "mcp-gateway"), "run", "--config", str(config),
        env={**os.environ, **env}, stderr=asyncio.subprocess.PIPE)


async def stop_gateway(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    return err.decode()


async def test_systemd_notify_ready_watchdog_stopping(tmp_path, broker):
    links = tmp_path / "links"
    notify = NotifySocket(tmp_path / "notify.sock")
    watcher = Client(broker.port, client_id="watcher")
    watcher.subscribe(f"{P}/#")
    async with Fleet(FleetSpec(count=2, interval_ms=200, link_dir=links)):
        config = tmp_path / "gw.toml"
        write_config(config, tmp_path, broker, ["sim-0", "sim-1"], links)
        proc = await start_gateway(config, NOTIFY_SOCKET=str(notify.path),
                                   WATCHDOG_USEC="200000")
        try:
            await wait_for(lambda: notify.said("READY"), timeout=15, what="READY=1")
            # READY came after the broker connection and the ports: both are visible now.
            online = [json.loads(m.payload) for m in watcher.on(f"{P}/status")]
            assert online
            assert online[-1]["state"] == "online"
            for name in ("sim-0", "sim-1"):
                states = [json.loads(m.payload)["state"]
                          for m in watcher.on(f"{P}/devices/{name}/status")]
                assert states
                assert states[-1] in ("unregistered", "online")
            assert "devices online" in notify.said("READY")[0]["STATUS"]
            seen = len(notify.said("WATCHDOG"))
            await wait_for(lambda: len(notify.said("WATCHDOG")) >= seen + 3, timeout=5,
                           what="watchdog pings (every 0.1 s)")
        finally:
            log = await stop_gateway(proc)
        assert proc.returncode == 0, log
        assert notify.said("STOPPING")
        for name in ("sim-0", "sim-1"):
            last = json.loads(watcher.on(f"{P}/devices/{name}/status")[-1].payload)
            assert (last["state"], last["reason"]) == ("offline", "gateway_stopped")
    watcher.close()


def _decoded(payloads: list[bytes]) -> list[dict]:
    status = ProfileRegistry().get("env-sensor").events[0x20].layout
    return [status.decode(p) for p in payloads]


async def test_sighup_reload_adds_removes_and_leaves_the_rest_alone(tmp_path, broker):
    links = tmp_path / "links"
    events = Client(broker.port, client_id="events")
    events.subscribe(f"{P}/devices/#")
    async with Fleet(FleetSpec(count=4, interval_ms=20, link_dir=links)) as fleet:
        config = tmp_path / "gw.toml"
        write_config(config, tmp_path, broker, ["sim-0", "sim-1", "sim-2"], links)
        proc = await start_gateway(config)
        try:
            def statuses(name: str) -> list[dict]:
                return [json.loads(m.payload) for m in events.on(f"{P}/devices/{name}/status")
                        if m.payload]

            for name in ("sim-0", "sim-1", "sim-2"):
                await wait_for(lambda n=name: any(s["state"] == "online" for s in statuses(n)),
                               timeout=10, what=f"{name} online")
            # sim-2 removed, sim-3 added, sim-0 and sim-1 unchanged.
            write_config(config, tmp_path, broker, ["sim-0", "sim-1", "sim-3"], links)
            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: any(s["state"] == "online" for s in statuses("sim-3")),
                           timeout=10, what="the added port's device online")
            await wait_for(lambda: any(s.get("reason") == "removed" for s in statuses("sim-2")),
                           what="the removed port's device offline")
            # A broken file is rejected; the running configuration stays.
            config.write_text('gateway_id = "svc"\n[[ports]]\nname = "x"\nbaudrate = 7\n')
            proc.send_signal(signal.SIGHUP)
            before = len(events.on(f"{P}/devices/sim-3/events/"))
            await wait_for(lambda: len(events.on(f"{P}/devices/sim-3/events/")) > before + 20,
                           what="events still flowing after a rejected reload")
            # The unchanged port lost no frame: its events are exactly what the device sent,
            # in order, from the first one the gateway saw to the last.
            sim0 = fleet.devices[0]
            sim0.muted = True
            sent = _decoded(list(sim0.sent_status))
            await wait_for(lambda: [json.loads(m.payload)["payload"] for m in events.on(
                f"{P}/devices/sim-0/events/status")][-1:] == sent[-1:],
                what="sim-0's last event")
            got = [json.loads(m.payload)["payload"]
                   for m in events.on(f"{P}/devices/sim-0/events/status")]
            start = len(sent) - len(got)
            assert start >= 0
            assert got == sent[start:], "sim-0 lost or reordered frames across the reloads"
            for name in ("sim-0", "sim-1"):  # never restarted: never offline
                assert all(s["state"] != "offline" for s in statuses(name)), statuses(name)
        finally:
            log = await stop_gateway(proc)
        assert "reload rejected, the running configuration stays" in log
        assert "ports[0].baudrate: 7 is not a standard baud rate" in log
        assert proc.returncode == 0
    events.close()


def test_check_config_prints_an_effective_config_that_loads_back(tmp_path):
    (tmp_path / "pass").write_text("s3cret\n")
    config = tmp_path / "gw.toml"
    config.write_text(f"""
gateway_id = "edge-1"
state_dir = "{tmp_path}"
log_level = "debug"
[broker]
url = "mqtts://broker.example:8883"
username = "gw"
password_file = "{tmp_path / 'pass'}"
[metrics]
address = 9108
[[ports]]
name = "a"
path = "/dev/ttyUSB0"
allow = ["read", "write:interval_ms"]
[[ports]]
name = "bus"
path = "/dev/mcp/*"
baudrate = 921600
""")
    result = subprocess.run([BIN / "mcp-gateway", "check-config", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    printed = tomllib.loads(result.stdout)
    assert printed["ports"][1]["rate_limit"] == 20.0  # defaults filled in
    assert parse_config(printed) == load_config(config)


def test_check_config_exits_2_with_every_error(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text('log_level = "loud"\n[queue]\nmax_bytes = 1\n[[ports]]\nname = "a"\n')
    result = subprocess.run([BIN / "mcp-gateway", "check-config", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    for message in ("log_level: 'loud' is not a log level",
                    "queue.max_bytes: 1 is not valid",
                    "ports[0].path: missing; expected a device path"):
        assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_the_request_command(tmp_path, broker):
    links = tmp_path / "links"
    async with Fleet(FleetSpec(count=1, interval_ms=500, link_dir=links)):
        config = tmp_path / "gw.toml"
        write_config(config, tmp_path, broker, ["sim-0"], links)
        proc = await start_gateway(config)
        try:
            async def request(*args: str) -> tuple[int, str]:
                run = await asyncio.create_subprocess_exec(
                    str(BIN / "mcp-gateway"), "request", "--broker", broker.url, *args,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(run.communicate(), 30)
                return run.returncode, out.decode() + err.decode()

            watcher = Client(broker.port, client_id="w")
            watcher.subscribe(f"{P}/devices/sim-0/status")
            await wait_for(lambda: any(json.loads(m.payload)["state"] == "online"
                                       for m in watcher.on(P)), timeout=10, what="online")
            watcher.close()
            code, out = await request(GW, "sim-0", "read", '{"key": "interval_ms"}')
            assert code == 0, out
            assert json.loads(out)["payload"] == {"key": "interval_ms", "value": 500,
                                                  "unit": "ms"}
            code, out = await request("--protocol", "3", GW, "-", "list_devices")
            assert code == 0, out
            assert "sim-0" in json.loads(out)["payload"]["devices"]
            code, out = await request(GW, "sim-0", "write",
                                      '{"key": "interval_ms", "value": 900}')
            assert code == 1
            assert json.loads(out)["status"] == "forbidden"
            code, out = await request(GW, "sim-0", "read", "[1")
            assert code == 2
            assert "not valid JSON" in out
        finally:
            await stop_gateway(proc)


def test_logs_for_journald_and_as_json(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(f'gateway_id = "t"\nstate_dir = "{tmp_path}"\n'
                      f'[[ports]]\nname = "a"\npath = "{tmp_path / "missing"}"\n')

    def first_lines(*args: str, **env: str) -> list[str]:
        proc = subprocess.Popen([BIN / "mcp-gateway", *args, "run", "--config", str(config)],
                                env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
        lines = [proc.stderr.readline() for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        return lines

    journal = first_lines(JOURNAL_STREAM="8:1234")
    assert journal[0].startswith("<6>mcp-gateway: gateway t running 1 port(s)")  # no time
    assert any(line.startswith("<4>gateway.ports: a: ") for line in journal)  # a warning
    plain = first_lines()
    assert plain[0][:4].isdigit()  # a timestamp first, outside journald
    entries = [json.loads(line) for line in first_lines("--log-format", "json")]
    assert entries[0]["level"] == "info"
    assert entries[0]["message"].startswith("gateway t running")
    assert {"time", "logger"} <= set(entries[0])


async def test_request_and_dashboard_reach_a_broker_that_wants_a_password(tmp_path):
    secret = "s3cret-Pa55"
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "gw", secret],  # noqa: ASYNC221
                   check=True)
    locked = Mosquitto(tmp_path, extra=f"allow_anonymous false\npassword_file {passwords}\n")
    locked.start()
    links = tmp_path / "links"
    (tmp_path / "pw").write_text(secret + "\n")
    try:
        async with Fleet(FleetSpec(count=1, interval_ms=500, link_dir=links)):
            config = tmp_path / "gw.toml"
            config.write_text(
                f'gateway_id = "{GW}"\nstate_dir = "{tmp_path / "state"}"\n'
                'topic_prefix = "site/a"\n'
                f'[broker]\nurl = "{locked.url}"\nusername = "gw"\n'
                f'password_file = "{tmp_path / "pw"}"\n'
                f'[[ports]]\nname = "sim-0"\npath = "{links / "sim-0"}"\n')
            proc = await start_gateway(config)
            try:
                async def request(*args: str, **env: str) -> tuple[int, str]:
                    run = await asyncio.create_subprocess_exec(
                        str(BIN / "mcp-gateway"), "request", *args, "--wait", "5",
                        env={**os.environ, **env},
                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                    out, err = await asyncio.wait_for(run.communicate(), 30)
                    return run.returncode, out.decode() + err.decode()

                # Everything from the gateway's own file: URL, credentials, prefix.
                async def listed() -> bool:
                    code, out = await request("--config", str(config), GW, "-", "list_devices")
                    return code == 0 and "sim-0" in out
                deadline = asyncio.get_running_loop().time() + 20
                while not await listed():
                    assert asyncio.get_running_loop().time() < deadline, "never listed"
                # The same with flags; the password from a file or the environment.
                flags = ["--broker", locked.url, "--prefix", "site/a", "--username", "gw"]
                code, out = await request(*flags, "--password-file", str(tmp_path / "pw"),
                                          GW, "sim-0", "read", '{"key": "interval_ms"}')
                assert code == 0, out
                assert json.loads(out)["payload"]["value"] == 500
                code, out = await request(*flags, "--password-env", "PW", GW, "-",
                                          "list_devices", PW=secret)
                assert code == 0, out
                # A wrong password is an answer that says so, not a hang.
                code, out = await request(*flags, "--password-env", "PW", GW, "-",
                                          "list_devices", PW="wrong")
                assert code == 1
                assert "refused" in out
                assert secret not in out
                # Bad options are usage errors that say which.
                for args, message in (
                        (["--config", str(config), "--broker", locked.url],
                         "--config gives the broker and prefix; leave out --broker"),
                        ([*flags, "--password-env", "MCP_SURELY_UNSET"],
                         "--password-env MCP_SURELY_UNSET: the variable is not set"),
                        ([*flags, "--password-file", str(tmp_path / "nope")],
                         f"--password-file {tmp_path / 'nope'}: No such file"),
                        (["--broker", "http://x"], "expected mqtt://host[:port]")):
                    code, out = await request(*args, GW, "-", "list_devices")
                    assert (code, message in out) == (2, True), out

                # The dashboard's connection, with the same settings.
                from gateway.bridge.mqtt import BrokerSettings  # noqa: PLC0415
                from tui.fabric import Fabric  # noqa: PLC0415
                from tui.state import FabricState  # noqa: PLC0415
                state = FabricState("site/a")
                fabric = Fabric(BrokerSettings(url=locked.url, username="gw", password=secret),
                                state)
                fabric.start()
                try:
                    await wait_for(lambda: state.devices, timeout=10, what="devices on screen")
                    answer = await fabric.request(GW, "sim-0", "read", {"key": "interval_ms"})
                    assert answer["status"] == "ok"
                finally:
                    await fabric.stop()
            finally:
                await stop_gateway(proc)
    finally:
        locked.stop()
