"""``mcp-gateway run`` as a real subprocess against ``mcp-sim`` devices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

BIN = os.path.dirname(sys.executable)


def _read_until(stream, needle, timeout=15.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not seen; got:\n{''.join(seen)}")


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
            for name in names:
                _read_until(gw.stderr, f"all-{name} is online (registered)")
            _read_until(gw.stderr, "status {")
            gw.send_signal(signal.SIGTERM)
            rest = gw.stderr.read()
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
