"""``mcp-gateway run`` processes and ``mcp-sim`` devices for the fleet and claim tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mqtt_helpers import Client
from tests.test_cli_run import Lines

BIN = os.path.dirname(sys.executable)


def _broker_key(url: str | list[str]) -> str:
    """``url = "..."``, or ``urls = [...]`` for a list of nodes."""
    return f"urls = {json.dumps(url)}" if isinstance(url, list) else f'url = "{url}"'


class GatewayProcess:
    """One ``mcp-gateway run`` with its own configuration and state directory; its stderr
    read by a thread (``lines``)."""

    def __init__(self, directory: Path, gateway_id: str, broker_url: str | list[str],
                 ports: dict[str, str] | None = None, *, name: str | None = None,
                 extra: str = "", broker_extra: str = "") -> None:
        self.gateway_id = gateway_id
        self.name = name or gateway_id
        self.config = directory / f"{self.name}.toml"
        ports = ports if ports is not None else {"x": str(directory / f"{self.name}-none")}
        text = (f'gateway_id = "{gateway_id}"\nstate_dir = "{directory / self.name}"\n'
                f"{extra}\n[broker]\n{_broker_key(broker_url)}\n{broker_extra}\n")
        for port, path in ports.items():
            text += f'[[ports]]\nname = "{port}"\npath = "{path}"\n'
        self.config.write_text(text)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: Lines | None = None

    def start(self) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "mcp-gateway"), "run", "--config", str(self.config)],
            stderr=subprocess.PIPE, text=True)
        self.lines = Lines(self.proc.stderr)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def until(self, needle: str, timeout: float = 15.0) -> list[str]:
        assert self.lines is not None
        return self.lines.until(needle, timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def rest(self, timeout: float = 15.0) -> str:
        assert self.lines is not None
        return self.lines.rest(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process dies of SIGKILL too
            self.proc.kill()
            self.proc.wait(10)


class Simulator:
    """One ``mcp-sim --pty`` process with ``count`` devices; ``paths`` in order."""

    def __init__(self, count: int, interval_ms: int = 200, name_prefix: str = "sim") -> None:
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "mcp-sim"), "--pty", "--count", str(count),
             "--interval-ms", str(interval_ms), "--name-prefix", name_prefix],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.paths = [self.proc.stdout.readline().split()[1] for _ in range(count)]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def retained(port: int, topic: str) -> dict | None:
    """The retained message on ``topic`` now, as JSON (None if there is none or it is
    cleared), read by a fresh client: once its own QoS 1 publish after the SUBACK is
    acknowledged, the broker has sent what it held (it handles a connection's packets in
    order)."""
    client = Client(port)
    try:
        client.subscribe(topic)
        client.publish(f"test-marker/{id(client)}", b"")
        found = client.on(topic)
        return json.loads(found[-1].payload) if found and found[-1].payload else None
    finally:
        client.close()


def wait_until(predicate, timeout: float = 15.0, what: str = "it"):
    """Poll ``predicate`` (a blocking one) until truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.02)
