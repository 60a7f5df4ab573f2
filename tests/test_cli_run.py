"""``mcp-gateway run`` as a real subprocess against ``mcp-sim`` devices."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

BIN = os.path.dirname(sys.executable)


class Lines:
    """A process's output lines, read by a thread so waiting for one has a deadline."""

    def __init__(self, stream) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def until(self, needle: str, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if needle in line:
                return seen
        raise AssertionError(f"{needle!r} not seen; got:\n{''.join(seen)}")

    def rest(self, timeout: float = 15.0) -> str:
        lines = []
        while (line := self.queue.get(timeout=timeout)) is not None:
            lines.append(line)
        return "".join(lines)


def test_run_registers_devices_and_stops_cleanly(tmp_path):
    links = tmp_path / "links"
    sim = subprocess.Popen(
        [os.path.join(BIN, "mcp-sim"), "--pty", "--count", "2", "--link-dir", str(links),
         "--interval-ms", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        names = [sim.stdout.readline().split()[0] for _ in range(2)]
        config = tmp_path / "gw.toml"
        config.write_text(
            f'gateway_id = "t"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[[ports]]\nname = "all"\npath = "{links}/sim-*"\n'
        )
        gw = subprocess.Popen(
            [os.path.join(BIN, "mcp-gateway"), "run", "--config", str(config)],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            lines = Lines(gw.stderr)
            seen = lines.until("is online (registered)") + lines.until("is online (registered)")
            for name in names:  # a glob's devices take their uid ids at HELLO
                assert any(f"all-{name} is now uid-" in line for line in seen)
            assert all("uid-" in line for line in seen if "is online" in line)
            assert any("ready: " in line for line in seen)  # after the ports were tried
            gw.send_signal(signal.SIGTERM)
            rest = lines.rest()
            assert gw.wait(timeout=10) == 0
            assert "offline (gateway_stopped)" in rest
            assert (tmp_path / "state" / "node_ids.json").exists()
        finally:
            gw.kill()
            gw.wait()
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)


def test_run_with_a_broken_config_exits_2_with_every_error(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text('[[ports]]\nname = "a"\npath = "/dev/x"\nbaudrate = 115201\nparty = "x"\n')
    proc = subprocess.run(  # noqa: PLW1510 - the exit code is the assertion
        [os.path.join(BIN, "mcp-gateway"), "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "ports[0].baudrate: 115201 is not a standard baud rate" in proc.stderr
    assert "ports[0].party: 'x' is an unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


#: ``mcp-gateway ARGS`` in a Python where the simulator cannot be imported at all
WITHOUT_SIMULATOR = ("import sys; sys.modules['firmware_sim'] = None\n"
                     "from gateway import cli\n"
                     "sys.exit(cli.main(sys.argv[1:]))")


def test_the_product_command_line_does_not_need_its_simulator():
    """Issue 14 item 5: the product does not depend on its test tool. With firmware_sim
    unimportable, ``gateway.cli`` imports and its help works; ``sim`` and ``demo``, which
    do need it, say so (exit 2) instead of a traceback."""
    for args in (["--help"], ["run", "--help"], ["request", "--help"], ["demo", "--help"]):
        proc = subprocess.run(  # noqa: PLW1510 - the exit code is the assertion
            [sys.executable, "-c", WITHOUT_SIMULATOR, *args],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage: mcp-gateway"), proc.stdout
    for args, needs in ((["sim", "--count", "1"], "the simulator (firmware_sim) is not installed"),
                        (["demo", "--headless", "--duration", "1"],
                         "the demo needs the simulator (firmware_sim), which is not installed")):
        proc = subprocess.run(  # noqa: PLW1510 - the exit code is the assertion
            [sys.executable, "-c", WITHOUT_SIMULATOR, *args],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert needs in proc.stderr
        assert "Traceback" not in proc.stderr


def test_sim_takes_the_simulators_own_options():
    """``mcp-gateway sim`` is ``mcp-sim``: its options (parsed by the simulator when the
    command runs) are in its help, and a wrong one is a usage error naming it."""
    proc = subprocess.run([os.path.join(BIN, "mcp-gateway"), "sim", "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.startswith("usage: mcp-gateway sim")
    for option in ("--count", "--garbage-rate", "--unplug-every", "--frames"):
        assert option in proc.stdout
    proc = subprocess.run(  # noqa: PLW1510 - the exit code is the assertion
        [os.path.join(BIN, "mcp-gateway"), "sim", "--count", "x"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--count: invalid int value: 'x'" in proc.stderr
    proc = subprocess.run(  # noqa: PLW1510 - the exit code is the assertion
        [os.path.join(BIN, "mcp-gateway"), "request", "gw", "-", "ping", "--bogus"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unrecognized arguments: --bogus" in proc.stderr
