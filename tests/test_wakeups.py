"""Batched wake-ups (issue 19): the lingering selector (``linger_ms``), serial reads that take
what the port holds, broker reads that take every TLS record waiting. Each replaces a
simpler path, so these prove they lose, reorder and hold back nothing: the selector's rules
on a real socket pair with a clock the test moves, and the whole gateway (real ptys, a real
Mosquitto) on a lingering loop beside the plain one."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import ssl
import struct
import termios
import threading
import time
from dataclasses import replace

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim import Fleet, FleetSpec
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.bridge.mqtt import _Client
from gateway.config import parse_config
from gateway.drivers.serial import _open_transport
from gateway.wakeups import LingeringSelector, loop_factory
from tests.harness import wait_for
from tests.mqtt_helpers import Client, Mosquitto, tls_mosquitto

P = "mcp/v1/test-gw"


class _Clock:
    """Time that passes only when the selector sleeps (and then runs ``during``)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.during = lambda: None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds + 0.001  # as real sleeps do, it oversleeps a little
        self.during()


@pytest.fixture
def pair():
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    yield reader, writer
    reader.close()
    writer.close()


def _selector(linger_s: float, reader: socket.socket) -> tuple[LingeringSelector, _Clock]:
    clock = _Clock()
    selector = LingeringSelector(linger_s, clock=clock, sleep=clock.sleep)
    selector.register(reader, 1)  # EVENT_READ
    return selector, clock


def _drain(reader: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = reader.recv(4096)
        except BlockingIOError:
            return data
        data += chunk


def _two_inputs(selector: LingeringSelector, reader: socket.socket, writer: socket.socket,
                clock: _Clock | None = None) -> None:
    """Input twice, close together: from now on input is dense."""
    for _ in range(2):
        writer.send(b"x")
        selector.select(None)
        _drain(reader)
        if clock is not None:
            clock.now += 0.01


def test_sparse_input_is_taken_at_once(pair):
    reader, writer = pair
    selector, clock = _selector(0.05, reader)
    for i in range(5):
        writer.send(bytes([i]))
        assert selector.select(None), "input waiting, not taken"
        assert _drain(reader) == bytes([i])
        clock.now += 0.2  # the next input comes long after the window
    assert selector.lingered == 0
    assert clock.slept == []


def test_dense_input_lingers_then_takes_all_of_it_in_one_wake_up(pair):
    reader, writer = pair
    selector, clock = _selector(0.05, reader)
    writer.send(b"a")
    assert selector.select(None)
    got = _drain(reader)
    clock.now += 0.01
    writer.send(b"b")  # within the window of the first: input is dense now
    assert selector.select(None)
    got += _drain(reader)
    clock.now += 0.01
    # The next wait lingers: what arrives meanwhile is taken in one wake-up, in order.
    clock.during = lambda: writer.sendall(b"cdef")
    assert selector.select(None)
    got += _drain(reader)
    assert got == b"abcdef"
    assert selector.lingered == 1
    assert clock.slept == [pytest.approx(0.04)]  # the rest of the window after "b"


def test_a_timer_due_within_the_window_ends_the_linger(pair):
    reader, writer = pair
    selector, clock = _selector(0.05, reader)
    _two_inputs(selector, reader, writer)
    # The loop's next timer is due in 10 ms: the wait ends then, with nothing to take.
    assert selector.select(0.01) == []
    assert clock.slept == [pytest.approx(0.01)]


def test_a_quiet_window_goes_back_to_waiting_on_the_descriptors(pair):
    reader, writer = pair
    selector, _ = _selector(0.05, reader)
    _two_inputs(selector, reader, writer)
    # Nothing comes while it lingers: the rest of the wait is on the descriptors (real
    # epoll), so input that comes later is taken when it comes.
    late = threading.Timer(0.05, writer.send, (b"late",))
    late.start()
    try:
        assert selector.select(None)
    finally:
        late.join()
    assert _drain(reader) == b"late"
    assert selector.lingered == 1


def test_no_linger_is_the_plain_selector(pair):
    reader, writer = pair
    selector, clock = _selector(0.0, reader)
    for _ in range(10):
        writer.send(b"x")
        assert selector.select(None)
        _drain(reader)
    assert selector.lingered == 0
    assert clock.slept == []


async def _stream_and_request(tmp_path, broker, linger_ms: float) -> dict:
    links = tmp_path / "links"
    spec = replace(FleetSpec(count=2, interval_ms=5), link_dir=links)
    watcher = Client(broker.port, client_id=f"watch-{int(linger_ms)}")
    watcher.subscribe(f"{P}/devices/+/events/#")
    watcher.subscribe("replies/#")
    try:
        async with Fleet(spec) as fleet:
            config = parse_config({
                "gateway_id": "test-gw", "state_dir": str(tmp_path / "state"),
                "linger_ms": linger_ms, "broker": {"url": broker.url},
                "ports": [{"name": d.name, "path": str(links / d.name), "allow": ["ping", "write"]}
                          for d in fleet.devices]})
            gateway = Gateway(config)
            async with Bridge(gateway, config) as bridge, gateway:
                await wait_for(lambda: bridge.mqtt.subscribed, timeout=10, what="subscribed")
                await wait_for(lambda: all(len(watcher.on(f"{P}/devices/{d.name}/events/"))
                                           >= 200 for d in fleet.devices), timeout=30,
                               what="200 events of each device")
                # Requests while events stream (on a lingering loop) are answered:
                # a ping, then writes that end each device's stream.
                bodies = [{"action": "ping"}] + [{"action": "write", "payload": {
                    "key": "interval_ms", "value": 3_600_000}}] * 2
                for i, (name, body) in enumerate(zip(["sim-0", "sim-0", "sim-1"], bodies,
                                                     strict=True)):
                    watcher.publish(f"{P}/devices/{name}/requests", json.dumps(body),
                                    response_topic="replies/a", correlation=b"c%d" % i)
                    await wait_for(lambda n=i: len(watcher.on("replies/")) > n, timeout=10,
                                   what=f"the answer to {body['action']}")
                # Every event leaves the queue on its PUBACK, the last ones too (no input
                # after them: the loop stops lingering and takes them).
                await wait_for(lambda: bridge.spool.count == 0, timeout=10,
                               what="the queue emptied by the PUBACKs")
                sent = bridge.published
            selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
        seqs = {d.name: [e["seq"] for e in watcher.json_on(f"{P}/devices/{d.name}/events/")]
                for d in fleet.devices}
        return {"seqs": seqs, "sent": sent,
                "answers": [json.loads(m.payload)["status"] for m in watcher.on("replies/")],
                "lingered": getattr(selector, "lingered", 0)}
    finally:
        watcher.close()


@pytest.mark.parametrize("linger_ms", [0, 20])
def test_the_gateway_on_a_lingering_loop_delivers_what_the_plain_one_does(tmp_path, broker,
                                                                           linger_ms):
    with asyncio.Runner(loop_factory=loop_factory(linger_ms / 1000)) as runner:
        result = runner.run(_stream_and_request(tmp_path, broker, linger_ms))
    for name, seqs in result["seqs"].items():
        assert seqs == list(range(1, len(seqs) + 1)), f"{name}: events missing or reordered"
    assert sum(len(s) for s in result["seqs"].values()) == result["sent"]
    assert result["answers"] == ["ok", "ok", "ok"]
    if linger_ms:
        assert result["lingered"] > 0, "200 events 5 ms apart and it never lingered"


def test_input_that_keeps_coming_is_taken_once_per_window(pair):
    reader, writer = pair
    selector, clock = _selector(0.05, reader)
    _two_inputs(selector, reader, writer, clock)
    got = b""
    for chunk in (b"ab", b"cd", b"ef"):
        # Each window's input arrives while it lingers; the next window lingers again
        # (input came within the last one), so every window costs one wake-up.
        clock.during = lambda c=chunk: writer.sendall(c)
        assert selector.select(1.0), "it did not linger: the input came after the wait"
        got += _drain(reader)
    assert got == b"abcdef"
    assert selector.lingered == 3
    assert clock.slept == [pytest.approx(0.04), pytest.approx(0.05), pytest.approx(0.05)]


def _queued_bytes(sock: socket.socket) -> int:
    """Bytes waiting in the kernel for ``sock`` (for TLS: records not yet decrypted)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_one_read_of_the_broker_takes_every_puback_waiting(tmp_path, tls):
    # TLS hands over one record per recv, and Mosquitto sends each PUBACK in a record of its
    # own: one read must still take all of them (else each costs a loop turn of its own).
    if tls:
        broker, certs = tls_mosquitto(tmp_path)
    else:
        broker, certs = Mosquitto(tmp_path), None
    broker.start()
    acked: list[int] = []
    client = _Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="acks",
                     protocol=paho.MQTTv5)
    client.on_lean_ack = lambda mid, reason: acked.append(mid)
    connected = []
    client.on_connect = lambda *args: connected.append(args)
    if certs is not None:
        client.tls_set_context(ssl.create_default_context(cafile=str(certs["ca"])))
    try:
        client.connect("localhost" if tls else "127.0.0.1", broker.port)
        client.flush()
        _until(lambda: client.loop_read() is not None and connected, "the CONNACK")
        sock = client.socket()
        # One PUBACK first: how many bytes one takes on this connection.
        client.publish_lean(b"t/acks", b"x")
        client.flush()
        _until(lambda: _queued_bytes(sock) > 0, "the first PUBACK")
        one = _queued_bytes(sock)
        client.loop_read()
        assert len(acked) == 1
        for _ in range(10):
            client.publish_lean(b"t/acks", b"x")
        client.flush()
        _until(lambda: _queued_bytes(sock) >= 10 * one, "ten PUBACKs waiting")
        client.loop_read()
        while client.buffered:  # what one recv brought, handed to paho a packet at a time
            client.loop_read()
        assert len(acked) == 11, "one read took only some of the PUBACKs waiting"
    finally:
        client.disconnect()
        broker.stop()


def _until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.001)


class _Received(asyncio.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)


async def test_a_wake_up_reads_everything_the_port_holds():
    # However long the loop lingered, one readiness takes what the port holds, not one
    # read's worth (here 1 KiB reads, 3 KiB waiting: pyserial-asyncio would take three
    # wake-ups).
    controller, device = os.openpty()
    protocol = _Received()
    transport = await _open_transport(os.ttyname(device), protocol)
    try:
        transport._max_read_size = 1024  # the knob SerialLink sets from read_size
        await asyncio.sleep(0)  # the transport registers its reader in its first turn
        transport.pause_reading()
        os.write(controller, bytes(range(256)) * 12)
        await wait_for(lambda: transport.serial.in_waiting >= 3072, what="3 KiB at the port")
        transport.resume_reading()
        await wait_for(lambda: sum(map(len, protocol.chunks)) >= 3072, what="3 KiB read")
        assert b"".join(protocol.chunks) == bytes(range(256)) * 12
        assert len(protocol.chunks) == 1
    finally:
        transport.close()
        os.close(controller)
        os.close(device)
