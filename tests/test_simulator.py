"""The device simulator through real pseudo-terminals, TCP sockets and subprocesses."""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import serial

from firmware_sim import Faults, FleetSpec, FleetThread
from gateway.frames import Command, NackCode, ProfileRegistry, decode_payload, encode_payload
from tests.serial_peer import SerialPeer

ENV = ProfileRegistry().get("env-sensor")
STATUS = ENV.events[Command.STATUS].layout


def wait_until(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def one_device(tmp_path):
    spec = FleetSpec(count=1, link_dir=tmp_path / "links", interval_ms=200, seed=1)
    with FleetThread(spec) as sim:
        yield sim


def test_registration_status_and_requests_over_a_real_pty(one_device):
    device = one_device.devices[0]
    with SerialPeer(device.link.path) as peer:
        hello = peer.register(node_id=7, heartbeat_s=5)
        assert hello["proto"] == 1
        assert hello["uid"] == device.uid.hex()
        assert hello["model"] == "env-sensor"
        assert hello["fw"] == "1.2.3"
        wait_until(lambda: device.registered, what="registration")
        assert device.node_id == 7

        # STATUS at the configured interval (200 ms), decodable with plausible values
        statuses = [(t, f) for t, f in peer.collect(1.5) if f.cmd_id == Command.STATUS]
        assert len(statuses) >= 4
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(statuses)]
        assert 0.1 < statistics.median(gaps) < 0.4
        values = STATUS.decode(statuses[-1][1].payload)
        assert 15.0 <= values["temperature_c"] <= 30.0
        assert 2900 <= values["battery_mv"] <= 3300

        # no more HELLOs once acknowledged
        assert not any(f.cmd_id == Command.HELLO for _, f in peer.collect(1.2))

        # READ a key
        peer.send(Command.READ, encode_payload(Command.READ, {"key": 1}))
        resp = decode_payload(Command.READ_RESP, peer.wait_cmd(Command.READ_RESP).payload)
        assert resp["key"] == 1
        assert ENV.key(1).decode(resp["value"]) == 200

        # WRITE a key, read it back
        peer.send(Command.WRITE, b"\x02\x00" + ENV.key("name").encode("lab-3"))
        ack = decode_payload(Command.WRITE_ACK, peer.wait_cmd(Command.WRITE_ACK).payload)
        assert ack == {"key": 2, "status": 0}
        peer.send(Command.READ, encode_payload(Command.READ, {"key": 2}))
        resp = decode_payload(Command.READ_RESP, peer.wait_cmd(Command.READ_RESP).payload)
        assert ENV.key(2).decode(resp["value"]) == "lab-3"

        # a read-only key answers status 6
        peer.send(Command.WRITE, b"\x03\x00" + ENV.key("fw_build").encode(1))
        ack = decode_payload(Command.WRITE_ACK, peer.wait_cmd(Command.WRITE_ACK).payload)
        assert ack == {"key": 3, "status": NackCode.DENIED}

        # out-of-range value and unknown key answer status 2; a short READ gets NACK 2
        peer.send(Command.WRITE, b"\x01\x00" + (1).to_bytes(4, "little"))
        ack = decode_payload(Command.WRITE_ACK, peer.wait_cmd(Command.WRITE_ACK).payload)
        assert ack == {"key": 1, "status": NackCode.BAD_PAYLOAD}
        peer.send(Command.READ, b"\x01")
        nack = decode_payload(Command.NACK, peer.wait_cmd(Command.NACK).payload)
        assert nack == {"rejected_cmd": Command.READ, "code": NackCode.BAD_PAYLOAD}

        # unknown command: NACK code 1
        peer.send(0x33, b"\x01")
        nack = decode_payload(Command.NACK, peer.wait_cmd(Command.NACK).payload)
        assert nack == {"rejected_cmd": 0x33, "code": NackCode.UNKNOWN_COMMAND}

        # PING -> PONG
        peer.send(Command.PING)
        assert peer.wait_cmd(Command.PONG).payload == b""


def test_writing_the_interval_changes_the_status_period(one_device):
    device = one_device.devices[0]
    with SerialPeer(device.link.path) as peer:
        peer.send(Command.WRITE, b"\x01\x00" + ENV.key("interval_ms").encode(50))
        assert (
            decode_payload(Command.WRITE_ACK, peer.wait_cmd(Command.WRITE_ACK).payload)["status"]
            == 0
        )
        statuses = [t for t, f in peer.collect(1.0) if f.cmd_id == Command.STATUS]
        gaps = [b - a for a, b in itertools.pairwise(statuses)]
        assert statistics.median(gaps) < 0.15


def test_device_sends_heartbeat_pings_after_registration(tmp_path):
    with (
        FleetThread(FleetSpec(count=1, interval_ms=1000)) as sim,
        SerialPeer(sim.devices[0].link.path) as peer,
    ):
        peer.register(heartbeat_s=1)
        ping = peer.wait_cmd(Command.PING, timeout=4)
        assert decode_payload(Command.PING, ping.payload)["uptime_s"] is not None


def test_unplug_closes_the_link_and_the_device_comes_back_elsewhere(one_device):
    device = one_device.devices[0]
    stable = device.link.path
    first_tty = device.link.tty_path
    assert os.path.realpath(stable) == first_tty
    with SerialPeer(stable) as peer:
        peer.register()
        wait_until(lambda: device.registered, what="registration")
        one_device.call(device.unplug())
        assert not os.path.exists(stable)
        with pytest.raises(serial.SerialException):
            peer.collect(0.5)  # EIO: the adapter is gone
    one_device.call(device.replug())
    assert os.path.exists(stable)
    assert device.link.tty_path != first_tty
    assert os.path.realpath(stable) == device.link.tty_path
    with SerialPeer(stable) as peer:
        hello = peer.register()  # it rebooted: HELLO again, same uid
        assert hello["uid"] == device.uid.hex()
    assert device.counters.plugs == 2


def test_tcp_link_works_with_pyserial_socket_urls():
    with FleetThread(FleetSpec(count=2, link="tcp", interval_ms=100)) as sim:
        paths = [d.link.path for d in sim.devices]
        assert all(p.startswith("socket://127.0.0.1:") for p in paths)
        assert len(set(paths)) == 2
        with SerialPeer(paths[1]) as peer:
            peer.register()
            peer.send(Command.READ, encode_payload(Command.READ, {"key": 3}))
            resp = decode_payload(Command.READ_RESP, peer.wait_cmd(Command.READ_RESP).payload)
            assert ENV.key(3).decode(resp["value"]) == 4242
        device = sim.devices[1]
        sim.call(device.unplug())
        with pytest.raises(serial.SerialException):
            SerialPeer(paths[1])
        sim.call(device.replug())
        with SerialPeer(paths[1]) as peer:
            peer.wait_cmd(Command.HELLO)


def test_corrupt_and_garbage_knobs_reach_the_wire():
    faults = Faults(garbage_rate=1.0, garbage_max=8, corrupt_rate=1.0)
    with (
        FleetThread(FleetSpec(count=1, interval_ms=50, faults=faults, seed=3)) as sim,
        SerialPeer(sim.devices[0].link.path) as peer,
    ):
        got = peer.collect(1.0)
        stats = peer.deframer.stats
        corrupted = sim.devices[0].counters.corrupted_frames
        assert corrupted >= 10
        assert stats.checksum_errors >= 10
        assert stats.discarded_bytes > stats.checksum_errors  # garbage too
        # every frame was corrupted: anything that got through is a false accept from garbage
        assert len(got) <= stats.checksum_errors // 20 + 1


def test_garbage_without_header_loses_no_frame():
    faults = Faults(garbage_rate=0.5, garbage_max=16, garbage_without_header=True)
    with FleetThread(FleetSpec(count=1, interval_ms=20, faults=faults, seed=5)) as sim:
        device = sim.devices[0]
        with SerialPeer(device.link.path) as peer:
            first = peer.wait_cmd(Command.STATUS).payload  # from here on, the stream is whole
            got = [first] + [f.payload for _, f in peer.collect(1.0) if f.cmd_id == Command.STATUS]
        sent = list(device.sent_status)
        start = sent.index(first)
        assert len(got) >= 20
        assert got == sent[start : start + len(got)]  # every one, in order, none lost
        assert peer.deframer.stats.discarded_bytes > 0


def test_dropped_and_delayed_responses():
    with (
        FleetThread(FleetSpec(count=1, faults=Faults(drop_rate=1.0))) as sim,
        SerialPeer(sim.devices[0].link.path) as peer,
    ):
        peer.send(Command.PING)
        with pytest.raises(AssertionError):
            peer.wait_cmd(Command.PONG, timeout=0.5)
        assert sim.devices[0].counters.dropped_responses == 1
    with (
        FleetThread(FleetSpec(count=1, faults=Faults(response_delay_s=0.3))) as sim,
        SerialPeer(sim.devices[0].link.path) as peer,
    ):
        sent = time.monotonic()
        peer.send(Command.PING)
        peer.wait_cmd(Command.PONG, timeout=3)
        assert time.monotonic() - sent >= 0.3


def test_device_without_hello_still_streams_status():
    with (
        FleetThread(FleetSpec(count=1, send_hello=False, interval_ms=100)) as sim,
        SerialPeer(sim.devices[0].link.path) as peer,
    ):
        got = peer.collect(0.8)
        assert any(f.cmd_id == Command.STATUS for _, f in got)
        assert not any(f.cmd_id == Command.HELLO for _, f in got)


# ------------------------------------------------------------------ command line


def test_mcp_sim_prints_name_path_lines_and_stops_cleanly_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim.cli", "--pty", "--count", "3", "--interval-ms", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline().split() for _ in range(3)]
        assert [name for name, _ in lines] == ["sim-0", "sim-1", "sim-2"]
        with SerialPeer(lines[2][1]) as peer:
            peer.wait_cmd(Command.STATUS)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr.read() == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "0"], "count must be at least 1"),
        (["--garbage-rate", "2"], "2 is not a rate between 0 and 1"),
        (["--profile", "nope"], "unknown device profile 'nope'"),
        (["--frames", "ms999"], "invalid choice"),
    ],
)
def test_mcp_sim_usage_errors_exit_2(args, message):
    proc = subprocess.run(  # noqa: PLW1510 - the exit code is the assertion
        [sys.executable, "-m", "firmware_sim.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


def test_mcp_sim_unplug_knob_replugs_under_a_new_path(tmp_path):
    links = tmp_path / "links"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "firmware_sim.cli",
            "--pty",
            "--link-dir",
            str(links),
            "--unplug-every",
            "0.5",
            "--unplug-for",
            "0.3",
            "--seed",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        name, path = proc.stdout.readline().split()
        assert path == str(links / name)
        first = os.path.realpath(path)
        line = proc.stderr.readline()  # "# sim-0 replugged at ..."
        assert "sim-0 replugged" in line
        wait_until(
            lambda: os.path.exists(path) and os.path.realpath(path) != first, what="new pty path"
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_demo_runs_broker_devices_and_gateway_and_prints_the_fabric():
    proc = subprocess.run(  # noqa: PLW1510 - the exit code is the assertion
        [sys.executable, "-m", "gateway.cli", "demo", "--headless", "--duration", "4",
         "--interval-ms", "200"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[0]["demo"]["broker"].startswith("mqtt://127.0.0.1:")
    events = [r for r in records if r.get("topic", "").endswith("/events/status")]
    assert len(events) >= 15
    assert {e["topic"].split("/")[4] for e in events} == {"sim-0", "sim-1", "sim-2"}
    assert set(events[0]["payload"]["payload"]) == {"temperature_c", "humidity_pct",
                                                    "battery_mv", "uptime_s"}
    statuses = [r["payload"] for r in records if r.get("topic", "").endswith("/status")
                and "/devices/" in r["topic"] and "/events/" not in r["topic"]]
    assert sorted(s["node_id"] for s in statuses if s["reason"] == "registered") == [1, 2, 3]
    assert sum(s["reason"] == "gateway_stopped" for s in statuses) == 3
    # Issue 12: the gateway's status once each way, and no event called replayed when no
    # outage happened (the first connection is not one).
    gateway = [r["payload"] for r in records if r.get("topic") == "mcp/v1/demo/status"]
    assert [g["state"] for g in gateway] == ["online", "offline"]
    assert not [e for e in events if e["payload"].get("replayed")]
    stats = [r["stats"] for r in records if "stats" in r]
    assert [s["device"] for s in stats] == ["sim-0", "sim-1", "sim-2"]
    assert "Traceback" not in proc.stderr


def _console_script(name):
    path = os.path.join(os.path.dirname(sys.executable), name)
    assert os.access(path, os.X_OK), f"console script {name} is not installed"
    return path


def test_passive_monitor_over_tcp_with_the_installed_console_scripts():
    sim = subprocess.Popen(
        [_console_script("mcp-sim"), "--tcp", "0", "--count", "1", "--interval-ms", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, url = sim.stdout.readline().split()
        proc = subprocess.run(  # noqa: PLW1510 - the exit code is the assertion
            [_console_script("mcp-gateway"), "monitor", url, "--passive", "--duration", "2.5"],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert sum('"cmd": "STATUS"' in line for line in lines) >= 10
        # passive: nobody acknowledges HELLO, so the device keeps saying it every second
        assert sum('"cmd": "HELLO"' in line for line in lines) >= 2
    finally:
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=10) == 0


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_monitor_on_ms720(passive):
    sim = subprocess.Popen(
        [_console_script("mcp-sim"), "--tcp", "0", "--count", "1", "--interval-ms", "100",
         "--frames", "ms720"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, url = sim.stdout.readline().split()
        args = ["--passive"] if passive else []
        proc = subprocess.run(  # noqa: PLW1510 - the exit code is the assertion
            [_console_script("mcp-gateway"), "monitor", url, "--frames", "ms720", *args,
             "--duration", "2.5"],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        status = [r for r in records if r.get("cmd") == "STATUS"]
        assert len(status) >= 10
        assert all("temperature_c" in r["fields"] for r in status)
        if passive:
            # Nobody acknowledges: every frame comes again (same seq) until given up.
            seqs = [r["seq"] for r in status]
            assert len(set(seqs)) < len(seqs)
            assert not any(r.get("link") for r in records)  # the device got nothing to ACK
            assert sum(r.get("cmd") == "HELLO" for r in records) >= 3
        else:
            # Acknowledged: each STATUS once; HELLO answered, so not said again (one more
            # may have been on its way when the monitor connected).
            seqs = [r["request_seq"] for r in status]
            assert len(set(seqs)) == len(seqs)
            assert sum(r.get("cmd") == "HELLO" for r in records) <= 2
    finally:
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=10) == 0
