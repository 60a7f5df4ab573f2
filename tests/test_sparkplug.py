"""The Sparkplug B edge node against a real Mosquitto and simulated devices on ptys.

Every message the gateway sends is decoded with ``tests/sparkplug_wire.py`` (the protobuf wire
format read by hand), never with the protobuf runtime the gateway encodes with: the issue asks
for a second implementation. Each test names the rule of Sparkplug 3.0 it holds the node to.

Until the bridge wires the node in, ``Feeder`` plays the publisher's part of the contract:
every state change in order to ``device_changed``, every event to ``take`` while the node is
ready, and what waited meanwhile, as historical, right after a (re)birth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import signal
import struct
import sys
import textwrap
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim import Fleet, FleetSpec
from gateway.app import Gateway
from gateway.bridge.bridge import Bridge
from gateway.bridge.envelope import event_body
from gateway.bridge.sparkplug import STATE_FILE, BdSeqFile, SparkplugNode
from gateway.bridge.sparkplug_payload import DataType, MetricSpec, encode_payload
from gateway.bridge.spool import SpooledEvent
from gateway.config import load_config, parse_config
from gateway.errors import InvalidRequest
from gateway.reload import Reloader
from gateway.session import TelemetryEvent
from tests import sparkplug_wire as wire
from tests.harness import wait_for
from tests.mqtt_helpers import Client, free_port

P = "mcp/v1/test-gw"
#: what an edge node sends (NCMD/DCMD are the host's)
SENT = {"NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"}
SP = "spBv1.0/mcp"
NODE = "test-gw"
STATS = {"uptime_s": 1.5, "devices": {"sim-0": {"rx_frames": 3, "rx_fps": 9.5}},
         "mqtt": {"connected": True, "spool_error": None}}
STATUS_FIELDS = {"status/temperature_c": wire.DOUBLE, "status/humidity_pct": wire.DOUBLE,
                 "status/battery_mv": wire.UINT16, "status/uptime_s": wire.UINT32}
KEYS = {"keys/interval_ms": wire.UINT32, "keys/name": wire.STRING, "keys/fw_build": wire.UINT32}


# ---------------------------------------------------------------------------------------
# The test decoder itself, against bytes computed by hand


def test_wire_decoder_reads_hand_computed_bytes():
    """Varints, a nested length-delimited Metric, a boolean, a negative Int16 (two's
    complement in the uint32 int_value), a PropertySet, a Double as fixed64."""
    data = bytes([
        0x08, 0xE8, 0x07,              # 1 timestamp varint 1000
        0x12, 0x0D,                    # 2 metrics, 13 bytes
        0x0A, 0x01, 0x61,              #   1 name "a"
        0x10, 0x05,                    #   2 alias 5
        0x20, 0x02,                    #   4 datatype Int16
        0x50, 0xFE, 0xFF, 0xFF, 0xFF, 0x0F,  # 10 int_value 0xFFFFFFFE
        0x12, 0x17,                    # 2 metrics, 23 bytes
        0x20, 0x0A,                    #   4 datatype Double
        0x4A, 0x0A,                    #   9 properties, 10 bytes
        0x0A, 0x01, 0x75,              #     1 keys "u"
        0x12, 0x05, 0x08, 0x0C, 0x42, 0x01, 0x43,  # 2 values {type String, "C"}
        0x69, *struct.pack("<d", 21.5),  # 13 double_value (fixed64)
        0x18, 0xFF, 0x01,              # 3 seq 255
    ])
    payload = wire.decode(data)
    assert payload.timestamp == 1000
    assert payload.seq == 255
    first, second = payload.metrics
    assert (first.name, first.alias, first.datatype) == ("a", 5, wire.INT16)
    assert first.value() == -2
    assert second.value() == 21.5
    assert second.properties["u"].type == wire.STRING
    assert second.properties["u"].value == "C"


def test_wire_decoder_skips_unknown_fields_and_refuses_truncation():
    # field 6 (an extension) as a varint and field 8 (metadata) length-delimited: skipped
    data = bytes([0x30, 0x07, 0x18, 0x01, 0x12, 0x04, 0x42, 0x00, 0x38, 0x01])
    payload = wire.decode(data)
    assert payload.seq == 1
    assert payload.metrics[0].is_null
    with pytest.raises(wire.WireError):
        wire.decode(bytes([0x12, 0x05, 0x0A]))
    with pytest.raises(wire.WireError):
        wire.decode(bytes([0x08, 0x80]))


def test_gateway_encoder_matches_hand_computed_bytes():
    """The protobuf runtime with the in-code schema writes what Tahu's field numbers say."""
    body = encode_payload([MetricSpec(True, DataType.BOOLEAN, name="a", alias=1)],
                          timestamp_ms=1, seq=0)
    assert body == bytes([0x08, 0x01, 0x12, 0x09, 0x0A, 0x01, 0x61, 0x10, 0x01, 0x20, 0x0B,
                          0x70, 0x01, 0x18, 0x00])


_RANGES = {wire.INT8: (-(2**7), 2**7 - 1), wire.INT16: (-(2**15), 2**15 - 1),
           wire.INT32: (-(2**31), 2**31 - 1), wire.INT64: (-(2**63), 2**63 - 1),
           wire.UINT8: (0, 2**8 - 1), wire.UINT16: (0, 2**16 - 1),
           wire.UINT32: (0, 2**32 - 1), wire.UINT64: (0, 2**64 - 1)}


@st.composite
def metrics(draw):
    kind = draw(st.sampled_from([*_RANGES, wire.FLOAT, wire.DOUBLE, wire.BOOLEAN, wire.STRING,
                                 wire.BYTES]))
    if draw(st.booleans()) and kind != wire.BOOLEAN:
        value = None
    elif kind in _RANGES:
        value = draw(st.integers(*_RANGES[kind]))
    elif kind == wire.FLOAT:
        value = draw(st.floats(width=32, allow_nan=False))
    elif kind == wire.DOUBLE:
        value = draw(st.floats(allow_nan=False))
    elif kind == wire.BOOLEAN:
        value = draw(st.booleans())
    elif kind == wire.STRING:
        value = draw(st.text())
    else:
        value = draw(st.binary())
    return MetricSpec(value, DataType(kind), name=draw(st.none() | st.text(min_size=1)),
                      alias=draw(st.none() | st.integers(0, 2**64 - 1)),
                      timestamp_ms=draw(st.none() | st.integers(0, 2**64 - 1)),
                      historical=draw(st.booleans()),
                      properties=draw(st.sampled_from([(), (("engUnit", DataType.STRING, "°C"),)])))


@settings(max_examples=300, deadline=None)
@given(st.lists(metrics(), max_size=6), st.integers(0, 2**64 - 1), st.none() | st.integers(0, 255))
def test_round_trip_gateway_encode_wire_decode(specs, timestamp, seq):
    """Whatever the gateway encodes, the independent decoder reads back the same."""
    payload = wire.decode(encode_payload(specs, timestamp_ms=timestamp, seq=seq))
    assert payload.timestamp == timestamp
    assert payload.seq == seq
    assert len(payload.metrics) == len(specs)
    for spec, metric in zip(specs, payload.metrics, strict=True):
        assert metric.name == spec.name
        assert metric.alias == spec.alias
        assert metric.timestamp == spec.timestamp_ms
        assert metric.datatype == spec.datatype
        assert metric.is_historical == spec.historical
        assert metric.is_null == (spec.value is None)
        assert {k: (p.type, p.value) for k, p in metric.properties.items()} == \
            {k: (int(t), v) for k, t, v in spec.properties}
        if spec.value is not None:
            assert metric.value() == spec.value or (
                isinstance(spec.value, float) and math.isclose(metric.value(), spec.value))


# ---------------------------------------------------------------------------------------
# bdSeq on disk


def test_bdseq_starts_at_zero_increments_per_connect_and_wraps(tmp_path):
    """tck-id-topics-nbirth-bdseq-increment: start at zero, +1 on every CONNECT, 255 -> 0;
    kept across restarts."""
    path = tmp_path / STATE_FILE
    assert [BdSeqFile(path).next() for _ in range(3)] == [0, 1, 2]  # a new object each time
    assert json.loads(path.read_text())["bdSeq"] == 2
    path.write_text('{"version": 1, "bdSeq": 255}')
    store = BdSeqFile(path)
    assert [store.next(), store.next()] == [0, 1]


@pytest.mark.parametrize("text", ["{not json", '{"bdSeq": 256}', '{"bdSeq": true}', "[]", ""])
def test_a_corrupt_bdseq_file_is_moved_aside_and_counting_restarts(tmp_path, caplog, text):
    path = tmp_path / STATE_FILE
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        store = BdSeqFile(path)
    assert store.next() == 0
    assert any("corrupt" in r.getMessage() and "moved to" in r.getMessage()
               for r in caplog.records)
    asides = list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))
    assert len(asides) == 1
    assert asides[0].read_text() == text


def test_a_bdseq_file_that_cannot_be_written_is_logged_and_the_node_goes_on(tmp_path, caplog):
    """A disk that refuses the write (here: its directory is a file, which root cannot write
    through either): logged once, then counted; the numbers go on in memory."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    store = BdSeqFile(blocker / STATE_FILE)
    with caplog.at_level(logging.WARNING):
        assert [store.next() for _ in range(3)] == [0, 1, 2]
    lines = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(lines) == 1  # once, then counted


# ---------------------------------------------------------------------------------------
# The node on a real broker, fed as the publisher will feed it


@dataclass
class Feeder:
    """The publisher's side of the node's contract (until the bridge wires it in)."""

    gateway: Gateway
    node: SparkplugNode | None = None
    waiting: list[SpooledEvent] = field(default_factory=list)
    #: every telemetry event the gateway produced, in order
    native: list[TelemetryEvent] = field(default_factory=list)
    historical: int = 0
    _next_id: int = 0

    def __post_init__(self) -> None:
        self.subscription = self.gateway.subscribe()

    def changed(self) -> None:
        assert self.node is not None
        if self.node.ready:
            waited, self.waiting = self.waiting, []
            for row in waited:
                self.historical += 1
                self.node.take(row, historical=True)

    async def run(self) -> None:
        assert self.node is not None
        while True:
            for event in await self.subscription.batch(100):
                if not isinstance(event, TelemetryEvent):
                    self.node.device_changed(event)
                    continue
                self.native.append(event)
                self._next_id += 1
                row = SpooledEvent(
                    self._next_id, f"{P}/devices/{event.device_id}/events/{event.name}",
                    event_body(f"{NODE}/{event.device_id}", event.name, event.fields,
                               event.received_at, self._next_id), False)
                if self.node.ready:
                    self.node.take(row, historical=False)
                else:
                    self.waiting.append(row)


@dataclass
class Stack:
    fleet: Fleet
    gateway: Gateway
    node: SparkplugNode
    feeder: Feeder
    submitted: list[tuple[str, str, dict, str]]
    failures: list[tuple[str, BaseException]]


def _submit(gateway: Gateway, submitted: list, tasks: set):
    """The request path, straight to the device session (the fabric's checks come with the
    bridge's wiring)."""
    def submit(device_id, action, payload, *, via, done):
        submitted.append((device_id, action, payload, via))

        async def go():
            try:
                outcome = await gateway.device(device_id).request(action, payload)
            except InvalidRequest as exc:
                done("invalid", {}, ("invalid", str(exc)))
                return
            error = None if outcome.ok else (outcome.nack_code, str(outcome.status))
            done(str(outcome.status), {"key": outcome.key, "value": outcome.value,
                                       "unit": outcome.unit}, error)

        task = asyncio.get_running_loop().create_task(go())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return submit


def _config(tmp_path: Path, broker, names: list[str], links: Path, sparkplug: dict,
            broker_table: dict | None = None):
    return parse_config({
        "gateway_id": NODE,
        "state_dir": str(tmp_path / "state"),
        "broker": broker_table or {"url": broker.url},
        "sparkplug": {"enabled": True, **sparkplug},
        "ports": [{"name": n, "path": str(links / n), "request_timeout_s": 0.3, "retries": 1}
                  for n in names],
    })


@contextlib.asynccontextmanager
async def node_stack(tmp_path, broker, *, count=2, interval_ms=100, sparkplug=None,
                     broker_table=None):
    links = tmp_path / "links"
    spec = replace(FleetSpec(count=count, interval_ms=interval_ms), link_dir=links)
    async with Fleet(spec) as fleet:
        config = _config(tmp_path, broker, [d.name for d in fleet.devices], links,
                         sparkplug or {}, broker_table)
        gateway = Gateway(config)
        feeder = Feeder(gateway)
        submitted: list = []
        failures: list = []
        tasks: set = set()
        node = SparkplugNode(gateway, config, config.broker,
                             submit=_submit(gateway, submitted, tasks), stats=lambda: STATS,
                             on_change=feeder.changed,
                             on_failure=lambda where, exc: failures.append((where, exc)))
        feeder.node = node
        async with gateway:
            loops = [asyncio.create_task(node.run()), asyncio.create_task(feeder.run())]
            try:
                yield Stack(fleet, gateway, node, feeder, submitted, failures)
                await node.stop()
            finally:
                for task in [*loops, *tasks]:
                    task.cancel()
                await asyncio.gather(*loops, *tasks, return_exceptions=True)
        assert not failures


@pytest.fixture
def spb(broker):
    client = Client(broker.port, client_id="sparkplug-host")
    client.subscribe("spBv1.0/#")
    yield client
    client.close()


def node_messages(client: Client) -> list[tuple[str, str, wire.Payload]]:
    """(kind, device or "", payload) of every message of the node, in arrival order."""
    out = []
    for message in client.on(f"{SP}/"):
        parts = message.topic.split("/")
        if parts[3] != NODE or parts[2] not in SENT:
            continue  # a command to the node, or another node
        out.append((parts[2], parts[4] if len(parts) > 4 else "", wire.decode(message.payload)))
    return out


def of(client: Client, kind: str, device: str = "") -> list[wire.Payload]:
    return [p for k, d, p in node_messages(client) if k == kind and d == device]


def assert_seq_contiguous(messages: list[tuple[str, str, wire.Payload]]) -> None:
    """tck-id-payloads-sequence-num-incrementing: NBIRTH 0, then +1 mod 256 per message."""
    previous = None
    for kind, device, payload in messages:
        if kind == "NDEATH":
            assert payload.seq is None  # tck-id-payloads-ndeath-seq
            continue
        assert payload.seq is not None
        assert 0 <= payload.seq <= 255
        if kind == "NBIRTH":
            assert payload.seq == 0
        else:
            assert previous is not None, f"{kind} {device} before any NBIRTH"
            assert payload.seq == (previous + 1) % 256, f"{kind} {device}: seq gap"
        previous = payload.seq


async def test_births_carry_every_metric_with_its_datatype(tmp_path, broker, spb):
    """tck-id-topics-nbirth-*/dbirth-*: NBIRTH with bdSeq (Int64, the will's), Rebirth
    (Boolean false, no alias), the gateway's stats; a DBIRTH per device with every STATUS field
    and key, its datatype, engUnit, a name and an alias; aliases unique in the node."""
    async with node_stack(tmp_path, broker) as stack:
        await wait_for(lambda: len(of(spb, "DBIRTH", "sim-1")) and len(of(spb, "DBIRTH", "sim-0")),
                       timeout=10, what="both DBIRTHs")
        nbirth = of(spb, "NBIRTH")[0]
        assert nbirth.seq == 0
        assert nbirth.timestamp is not None
        metrics = nbirth.by_name()
        assert metrics["bdSeq"].datatype == wire.INT64
        assert metrics["bdSeq"].value() == stack.node.bdseq == 0
        rebirth = metrics["Node Control/Rebirth"]
        assert (rebirth.datatype, rebirth.value(), rebirth.alias) == (wire.BOOLEAN, False, None)
        assert metrics["Gateway/uptime_s"].datatype == wire.DOUBLE
        assert metrics["Gateway/uptime_s"].value() == 1.5
        assert metrics["Gateway/devices/sim-0/rx_frames"].datatype == wire.UINT64
        assert metrics["Gateway/mqtt/connected"].datatype == wire.BOOLEAN
        assert "Gateway/mqtt/spool_error" not in metrics  # not a number
        aliases = [m.alias for m in nbirth.metrics if m.alias is not None]
        for device in ("sim-0", "sim-1"):
            dbirth = of(spb, "DBIRTH", device)[0]
            metrics = dbirth.by_name()
            for name, kind in {**STATUS_FIELDS, **KEYS}.items():
                assert metrics[name].datatype == kind, name
                assert metrics[name].alias is not None
                assert metrics[name].timestamp is not None
            assert metrics["status/temperature_c"].properties["engUnit"].value == "°C"
            assert metrics["keys/interval_ms"].properties["engUnit"].value == "ms"
            assert metrics["keys/interval_ms"].properties["writable"].value is True
            assert metrics["keys/fw_build"].properties["writable"].value is False
            # a value not known yet is null, with no value (dbirth-values)
            assert metrics["keys/interval_ms"].is_null
            assert metrics["keys/interval_ms"].value_field is None
            assert metrics["Properties/profile"].value() == "env-sensor"
            assert metrics["Properties/uid"].datatype == wire.STRING
            aliases += [m.alias for m in dbirth.metrics]
        assert len(aliases) == len(set(aliases))  # tck-id-payloads-alias-uniqueness
        assert_seq_contiguous(node_messages(spb))
        # the will: QoS 1, not retained, checked by the broker only after a death (below)
        assert stack.node.counters()["messages"]["DBIRTH"] == 2


async def test_ddata_values_match_the_devices_events(tmp_path, broker, spb):
    """DDATA: aliases only (no name, no datatype), the metric timestamp is the frame's arrival,
    the values are the device's; seq contiguous mod 256 through hundreds of messages."""
    async with node_stack(tmp_path, broker, interval_ms=10) as stack:
        await wait_for(lambda: len(of(spb, "DDATA", "sim-0")) >= 300, timeout=20,
                       what="300 DDATA")
        births = {d: of(spb, "DBIRTH", d)[0] for d in ("sim-0", "sim-1")}
        names = {d: {m.alias: m.name for m in b.metrics} for d, b in births.items()}
        kinds = {d: {m.alias: m.datatype for m in b.metrics} for d, b in births.items()}
        native = {(e.device_id, round(e.received_at * 1000)): e.fields
                  for e in stack.feeder.native if e.name == "status"}
        checked = 0
        for kind, device, payload in node_messages(spb):
            if kind != "DDATA":
                continue
            for metric in payload.metrics:
                assert metric.name is None
                assert metric.datatype is None
                name = names[device][metric.alias]
                fields = native[(device, metric.timestamp)]
                value = metric.value(kinds[device][metric.alias])
                assert value == fields[name.split("/", 1)[1]], name
                checked += 1
        assert checked >= 300 * 4
        messages = node_messages(spb)
        assert len(messages) > 256  # the seq wrapped at least once
        assert_seq_contiguous(messages)


async def test_rebirth_ncmd_sends_nbirth_and_every_dbirth(tmp_path, broker, spb):
    """tck-id-operational-behavior-data-commands-rebirth-action-*: NBIRTH (seq 0, the same
    bdSeq) and every DBIRTH again; garbage and other NCMD metrics refused, logged once."""
    async with node_stack(tmp_path, broker) as stack:
        await wait_for(lambda: stack.node.ready and len(of(spb, "DBIRTH", "sim-1")),
                       timeout=10, what="births")
        await wait_for(lambda: len(of(spb, "DDATA", "sim-0")) >= 3, what="data")
        host = Client(broker.port)
        host.publish(f"{SP}/NCMD/{NODE}", b"\xff\xff garbage")
        host.publish(f"{SP}/NCMD/{NODE}", wire.command(
            [wire.command_metric(True, wire.BOOLEAN, name="Gateway/uptime_s")], 1))
        await wait_for(lambda: stack.node.commands_refused == 2, what="refusals")
        host.publish(f"{SP}/NCMD/{NODE}", wire.command(
            [wire.command_metric(True, wire.BOOLEAN, name="Node Control/Rebirth")],
            int(time.time() * 1000)))
        await wait_for(lambda: len(of(spb, "NBIRTH")) == 2 and len(of(spb, "DBIRTH", "sim-0"))
                       == 2 and len(of(spb, "DBIRTH", "sim-1")) == 2, what="the rebirth")
        first, second = of(spb, "NBIRTH")
        assert second.seq == 0
        assert second.by_name()["bdSeq"].value() == first.by_name()["bdSeq"].value()
        # the same aliases for the same metrics
        assert {m.name: m.alias for m in of(spb, "DBIRTH", "sim-0")[1].metrics} == \
            {m.name: m.alias for m in of(spb, "DBIRTH", "sim-0")[0].metrics}
        await wait_for(lambda: len([k for k, _, _ in node_messages(spb)[-5:]
                                    if k == "DDATA"]) == 5, what="data again")
        # the DBIRTHs follow their NBIRTH before any DATA (tck-id-payloads-dbirth-order)
        kinds = [k for k, _, _ in node_messages(spb)]
        at = len(kinds) - 1 - kinds[::-1].index("NBIRTH")
        assert kinds[at + 1:at + 3] == ["DBIRTH", "DBIRTH"]
        assert_seq_contiguous(node_messages(spb))
        assert stack.node.counters()["rebirths"] == 1
        host.close()


async def test_a_dcmd_write_lands_on_the_device(tmp_path, broker, spb):
    """A DCMD on a writable key's metric (by alias, as Sparkplug hosts send it, or by name)
    writes through the request path; the answer comes back as DDATA; a value the device's
    profile refuses re-publishes the real value; a read-only key and garbage are refused."""
    async with node_stack(tmp_path, broker) as stack:
        await wait_for(lambda: stack.node.ready and len(of(spb, "DBIRTH", "sim-0")),
                       timeout=10, what="births")
        alias = of(spb, "DBIRTH", "sim-0")[0].by_name()["keys/interval_ms"].alias
        host = Client(broker.port)
        host.publish(f"{SP}/DCMD/{NODE}/sim-0", wire.command(
            [wire.command_metric(250, wire.UINT32, alias=alias)], int(time.time() * 1000)))

        def key_values():
            return [m.value(wire.UINT32) for p in of(spb, "DDATA", "sim-0") for m in p.metrics
                    if m.alias == alias]

        await wait_for(lambda: key_values() == [250], what="the written value as DDATA")
        device = stack.fleet.device("sim-0")
        assert device.settings[1] == 250
        read = await stack.gateway.device("sim-0").request("read", {"key": "interval_ms"})
        assert read.value == 250
        assert stack.submitted[0] == ("sim-0", "write", {"key": "interval_ms", "value": 250},
                                      "sparkplug")
        # below the profile's minimum: refused by the request path; the real value again
        host.publish(f"{SP}/DCMD/{NODE}/sim-0", wire.command(
            [wire.command_metric(5, wire.UINT32, name="keys/interval_ms")], 1))
        await wait_for(lambda: key_values() == [250, 250], what="the real value re-published")
        assert stack.node.writes_failed == 1
        host.publish(f"{SP}/DCMD/{NODE}/sim-0", wire.command(
            [wire.command_metric(1, wire.UINT32, name="keys/fw_build")], 1))
        host.publish(f"{SP}/DCMD/{NODE}/sim-0", wire.command(
            [wire.command_metric(1.0, wire.DOUBLE, name="status/temperature_c")], 1))
        host.publish(f"{SP}/DCMD/{NODE}/sim-0", b"\x0a\xff")
        host.publish(f"{SP}/DCMD/{NODE}/nobody", wire.command(
            [wire.command_metric(250, wire.UINT32, alias=alias)], 1))
        await wait_for(lambda: stack.node.commands_refused == 4, what="four refusals")
        assert len(stack.submitted) == 2
        assert device.settings[1] == 250
        assert_seq_contiguous(node_messages(spb))
        host.close()


async def test_ddeath_when_a_device_goes_and_no_ddata_after_it(tmp_path, broker, spb):
    """tck-id-operational-behavior-device-ddeath; events of a device that is not born are
    skipped and counted; DBIRTH again when it comes back."""
    async with node_stack(tmp_path, broker, interval_ms=50) as stack:
        await wait_for(lambda: len(of(spb, "DDATA", "sim-0")) >= 3, timeout=10, what="data")
        await stack.fleet.device("sim-0").unplug()
        await wait_for(lambda: of(spb, "DDEATH", "sim-0"), timeout=10, what="DDEATH")
        kinds = [(k, d) for k, d, _ in node_messages(spb) if d == "sim-0"]
        assert kinds.index(("DDEATH", "sim-0")) == len(kinds) - 1 or \
            ("DDATA", "sim-0") not in kinds[kinds.index(("DDEATH", "sim-0")):]
        await stack.fleet.device("sim-0").replug()
        await wait_for(lambda: len(of(spb, "DBIRTH", "sim-0")) == 2, timeout=15,
                       what="DBIRTH again")
        after = [k for k, d, _ in node_messages(spb) if d == "sim-0"]
        death = after.index("DDEATH")
        assert after[death + 1] == "DBIRTH"  # no DDATA between DDEATH and the next DBIRTH
        assert_seq_contiguous(node_messages(spb))


async def test_after_a_broker_outage_the_waited_events_are_historical(tmp_path, broker, spb):
    """A new CONNECT (bdSeq + 1, its NDEATH as the will), NBIRTH, DBIRTHs, then the events
    that waited out the outage with is_historical, then live data again."""
    async with node_stack(tmp_path, broker, interval_ms=50) as stack:
        await wait_for(lambda: len(of(spb, "DDATA", "sim-0")) >= 3, timeout=10, what="data")
        spb.close()
        broker.stop()
        await wait_for(lambda: not stack.node.ready, what="the node to notice")
        await wait_for(lambda: len(stack.feeder.waiting) >= 10, what="events to wait")
        broker.start()
        host = Client(broker.port, client_id="sparkplug-host-2")
        host.subscribe("spBv1.0/#")
        await wait_for(lambda: stack.node.ready, timeout=20, what="a new session")
        await wait_for(lambda: len([p for p in of(host, "DDATA", "sim-0")
                                    if not p.metrics[0].is_historical]) >= 3, what="live data")
        nbirth = of(host, "NBIRTH")[0]
        assert nbirth.by_name()["bdSeq"].value() == stack.node.bdseq >= 1
        ddata = of(host, "DDATA", "sim-0") + of(host, "DDATA", "sim-1")
        historical = [p for p in ddata if all(m.is_historical for m in p.metrics)]
        assert len(historical) >= 10
        # the waited ones come first, right after the births, and are older than the NBIRTH
        kinds = [(k, p.metrics[0].is_historical if p.metrics else None)
                 for k, _, p in node_messages(host)]
        assert kinds[:3] == [("NBIRTH", False), ("DBIRTH", False), ("DBIRTH", False)]
        first_live = next(i for i, (k, h) in enumerate(kinds) if k == "DDATA" and not h)
        assert all(h for k, h in kinds[3:first_live])
        assert all(m.timestamp < nbirth.timestamp for p in historical for m in p.metrics)
        assert_seq_contiguous(node_messages(host))
        assert stack.node.counters()["historical_events"] >= 10
        host.close()


async def test_a_session_ended_by_the_primary_host_starts_again_on_the_same_node(
        tmp_path, broker, spb, caplog):
    """On a cluster (``urls``), the session after an offline STATE starts on the node the
    last one was on, which works, not on the first of the list (down here): it tried the
    dead node again at every rebirth."""
    caplog.set_level(logging.WARNING, logger="gateway.bridge.mqtt")
    dead = f"mqtt://127.0.0.1:{free_port()}"
    host = Client(broker.port, client_id="scada")
    async with node_stack(tmp_path, broker, sparkplug={"primary_host_id": "scada"},
                          broker_table={"urls": [dead, broker.url]}) as stack:
        await wait_for(lambda: stack.node.mqtt.subscribed, timeout=10, what="subscribed")
        assert stack.node.mqtt.url == broker.url
        stamp = int(time.time() * 1000)
        host.client.publish("spBv1.0/STATE/scada", json.dumps({"online": True,
                                                               "timestamp": stamp}),
                            qos=1, retain=True).wait_for_publish(5)
        await wait_for(lambda: stack.node.ready, timeout=10, what="born")
        first = stack.node.bdseq
        host.client.publish("spBv1.0/STATE/scada", json.dumps({"online": False,
                                                               "timestamp": stamp + 1}),
                            qos=1, retain=True).wait_for_publish(5)
        await wait_for(lambda: stack.node.bdseq == first + 1 and stack.node.mqtt.subscribed,
                       timeout=10, what="a new session")
        assert stack.node.mqtt.url == broker.url
    tried_dead = [r for r in caplog.records if f"cannot connect to {dead}" in r.getMessage()]
    assert len(tried_dead) == 1, [r.getMessage() for r in tried_dead]
    host.close()


async def test_with_a_primary_host_no_birth_until_its_state_is_online(tmp_path, broker, spb):
    """tck-id-message-flow-edge-node-birth-publish-phid-wait(-online, -timestamp): no BIRTH
    until STATE says online; an offline STATE (not older than the online one) ends the
    session: NDEATH, a new CONNECT (bdSeq + 1), and the wait again
    (tck-id-operational-behavior-edge-node-termination-host-offline)."""
    host = Client(broker.port, client_id="scada")
    async with node_stack(tmp_path, broker, sparkplug={"primary_host_id": "scada"}) as stack:
        await wait_for(lambda: stack.node.mqtt.subscribed, timeout=10, what="subscribed")
        # time passes (events come and wait), and the node does not birth on its own
        await wait_for(lambda: len(stack.feeder.waiting) >= 5, what="events waiting")
        assert not of(spb, "NBIRTH")
        host.client.publish("spBv1.0/STATE/scada", b'{"online": "yes", "timestamp": 1}',
                            qos=1, retain=True).wait_for_publish(5)
        await wait_for(lambda: stack.node.received["STATE"] == 1, what="the bad STATE")
        assert not of(spb, "NBIRTH")
        assert not stack.node.ready
        stamp = int(time.time() * 1000)
        host.client.publish("spBv1.0/STATE/scada",
                            json.dumps({"online": True, "timestamp": stamp}),
                            qos=1, retain=True).wait_for_publish(5)
        await wait_for(lambda: stack.node.ready and of(spb, "DBIRTH", "sim-1"), timeout=10,
                       what="births after STATE online")
        first = stack.node.bdseq
        # an offline STATE older than the online one is ignored
        host.client.publish("spBv1.0/STATE/scada",
                            json.dumps({"online": False, "timestamp": stamp - 1}),
                            qos=1, retain=True).wait_for_publish(5)
        await wait_for(lambda: stack.node.received["STATE"] == 3, what="the old STATE")
        assert stack.node.ready
        host.client.publish("spBv1.0/STATE/scada",
                            json.dumps({"online": False, "timestamp": stamp + 1}),
                            qos=1, retain=True).wait_for_publish(5)
        await wait_for(lambda: of(spb, "NDEATH"), what="NDEATH")
        assert of(spb, "NDEATH")[0].by_name()["bdSeq"].value() == first
        await wait_for(lambda: stack.node.bdseq == first + 1 and stack.node.mqtt.subscribed,
                       timeout=10, what="a new connection")
        assert not stack.node.ready
        assert len(of(spb, "NBIRTH")) == 1
        host.client.publish("spBv1.0/STATE/scada",
                            json.dumps({"online": True, "timestamp": stamp + 2}),
                            qos=1, retain=True).wait_for_publish(5)
        await wait_for(lambda: len(of(spb, "NBIRTH")) == 2 and stack.node.ready, timeout=10,
                       what="a new birth")
        assert of(spb, "NBIRTH")[1].by_name()["bdSeq"].value() == first + 1
    host.close()


async def test_a_clean_stop_publishes_ndeath_with_the_births_bdseq(tmp_path, broker, spb):
    """tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath."""
    async with node_stack(tmp_path, broker, count=1) as stack:
        await wait_for(lambda: stack.node.ready, timeout=10, what="births")
    await wait_for(lambda: of(spb, "NDEATH"), what="NDEATH")
    death = of(spb, "NDEATH")[0]
    assert death.seq is None
    assert [m.name for m in death.metrics] == ["bdSeq"]
    assert death.by_name()["bdSeq"].value() == of(spb, "NBIRTH")[0].by_name()["bdSeq"].value()
    assert not any(m.retain for m in spb.on(f"{SP}/"))


_NODE_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from gateway.app import Gateway
    from gateway.bridge.sparkplug import SparkplugNode
    from gateway.config import parse_config

    async def main():
        config = parse_config({"gateway_id": "test-gw", "state_dir": sys.argv[2],
                               "broker": {"url": sys.argv[1]}, "ports": [],
                               "sparkplug": {"enabled": True}})
        gateway = Gateway(config)
        def changed():
            if node.ready:
                print("ready", node.bdseq, flush=True)
        node = SparkplugNode(gateway, config, config.broker,
                             submit=lambda *a, **k: None, stats=dict, on_change=changed,
                             on_failure=lambda where, exc: None)
        async with gateway:
            await node.run()

    asyncio.run(main())
""")


async def test_ndeath_with_the_matching_bdseq_after_sigkill(tmp_path, broker, spb):
    """tck-id-payloads-ndeath-bdseq: the broker publishes the will (QoS 1, not retained) of a
    node killed without a word; its bdSeq is the NBIRTH's, and the next run's is one more."""
    state = tmp_path / "state"
    for run in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _NODE_SCRIPT, broker.url, str(state),
            stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.split() == [b"ready", str(run).encode()]
            await wait_for(lambda r=run: len(of(spb, "NBIRTH")) == r + 1, what="NBIRTH")
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await wait_for(lambda r=run: len(of(spb, "NDEATH")) == r + 1, timeout=10,
                       what="the will")
        death = of(spb, "NDEATH")[run]
        assert death.by_name()["bdSeq"].value() == run
        assert of(spb, "NBIRTH")[run].by_name()["bdSeq"].value() == run
    wills = list(spb.on(f"{SP}/NDEATH/"))
    assert all(m.qos == 1 and not m.retain for m in wills)
    assert json.loads((state / STATE_FILE).read_text())["bdSeq"] == 1



# ---------------------------------------------------------------------------------------
# End to end: the node as the bridge runs it (``[sparkplug] enabled = true``)


@contextlib.asynccontextmanager
async def bridge_stack(tmp_path, broker, *, count=2, interval_ms=100, sparkplug=None,
                       ports=None, fleet_spec=None, glob=False):
    links = tmp_path / "links"
    spec = replace(fleet_spec or FleetSpec(count=count, interval_ms=interval_ms),
                   link_dir=links)
    async with Fleet(spec) as fleet:
        config = parse_config({
            "gateway_id": NODE,
            "state_dir": str(tmp_path / "state"),
            "stats_interval_s": 0.5,
            "broker": {"url": broker.url},
            "sparkplug": {"enabled": True, **(sparkplug or {})},
            "ports": [{"name": "bus", "path": str(links / "sim-*")}] if glob else [
                {"name": d.name, "path": str(links / d.name), "request_timeout_s": 0.3,
                 "retries": 1, **(ports or {})} for d in fleet.devices],
        })
        gateway = Gateway(config)
        async with Bridge(gateway, config) as bridge, gateway:
            assert bridge.sparkplug is not None
            yield fleet, gateway, bridge, bridge.sparkplug


@pytest.fixture
def native(broker):
    client = Client(broker.port, client_id="native-sub")
    client.subscribe(f"{P}/#")
    yield client
    client.close()


async def test_e2e_births_and_ddata_match_the_native_events(tmp_path, broker, spb, native):
    """Through the bridge: NBIRTH/DBIRTH with every metric and datatype; each DDATA carries
    the values of the native event on ``{p}/{gw}/devices/{dev}/events/status`` with the same
    arrival time; seq contiguous; the node's counters in the gateway's stats."""
    async with bridge_stack(tmp_path, broker, interval_ms=20) as (_fleet, _gw, bridge, node):
        await wait_for(lambda: len(of(spb, "DDATA", "sim-1")) >= 50, timeout=20, what="DDATA")
        for device in ("sim-0", "sim-1"):
            dbirth = of(spb, "DBIRTH", device)[0].by_name()
            for name, kind in {**STATUS_FIELDS, **KEYS}.items():
                assert dbirth[name].datatype == kind, name
            events = {round(e["timestamp"] * 1000): e["payload"]
                      for e in native.json_on(f"{P}/devices/{device}/events/status")}
            names = {m.alias: (m.name, m.datatype) for m in of(spb, "DBIRTH", device)[0].metrics}
            ddata = of(spb, "DDATA", device)
            assert ddata
            for payload in ddata:
                for metric in payload.metrics:
                    name, kind = names[metric.alias]
                    assert metric.value(kind) == events[metric.timestamp][name.split("/")[1]]
        assert of(spb, "NBIRTH")[0].by_name()["bdSeq"].value() == node.bdseq
        assert_seq_contiguous(node_messages(spb))
        await wait_for(lambda: "sparkplug" in (bridge.stats_reporter.last_stats or {}),
                       what="the node's counters in the stats")
        assert bridge.stats_reporter.last_stats["sparkplug"]["messages"]["DDATA"] > 0


async def test_e2e_a_dcmd_write_lands_and_a_forbidden_one_does_not(tmp_path, broker, spb):
    """The DCMD goes through the fabric's allow list: ``write:interval_ms`` lands on the device
    (read back), ``name`` is not allowed and the device keeps its name."""
    ports = {"allow": ["read", "ping", "write:interval_ms"]}
    async with bridge_stack(tmp_path, broker, ports=ports) as (fleet, gateway, _bridge, node):
        await wait_for(lambda: node.ready and len(of(spb, "DBIRTH", "sim-0")), timeout=10,
                       what="births")
        birth = of(spb, "DBIRTH", "sim-0")[0].by_name()
        host = Client(broker.port)
        host.publish(f"{SP}/DCMD/{NODE}/sim-0", wire.command(
            [wire.command_metric(300, wire.UINT32, alias=birth["keys/interval_ms"].alias)],
            int(time.time() * 1000)))
        alias = birth["keys/interval_ms"].alias
        await wait_for(lambda: [m.value(wire.UINT32) for p in of(spb, "DDATA", "sim-0")
                                for m in p.metrics if m.alias == alias] == [300],
                       what="the written value as DDATA")
        assert fleet.device("sim-0").settings[1] == 300
        read = await gateway.device("sim-0").request("read", {"key": "interval_ms"})
        assert read.value == 300
        host.publish(f"{SP}/DCMD/{NODE}/sim-0", wire.command(
            [wire.command_metric("renamed", wire.STRING, name="keys/name")], 1))
        await wait_for(lambda: node.writes_failed == 1, what="the forbidden write")
        assert fleet.device("sim-0").settings[2] != "renamed"
        host.close()


async def test_e2e_a_write_the_device_nacks_republishes_its_real_value(tmp_path, broker, spb):
    """The device refuses a write the gateway's profile allows (its firmware takes at most
    500 ms: a profile of its own): the refusal is logged and counted, the key is read back
    and the device's real value is published as DDATA."""
    firmware = tmp_path / "firmware-profiles"
    firmware.mkdir()
    builtin = (Path(__file__).parent.parent / "gateway/frames/builtin_profiles/env-sensor.toml")
    firmware.joinpath("env-sensor.toml").write_text(
        builtin.read_text().replace("max = 3600000", "max = 500")
        .replace("default = 1000\n", "default = 100\n"))
    spec = FleetSpec(count=1, interval_ms=100, profile_dirs=(firmware,))
    ports = {"allow": ["read", "write:interval_ms"]}
    async with bridge_stack(tmp_path, broker, ports=ports, fleet_spec=spec) as (
            fleet, _gateway, _bridge, node):
        await wait_for(lambda: node.ready and len(of(spb, "DBIRTH", "sim-0")), timeout=10,
                       what="births")
        alias = of(spb, "DBIRTH", "sim-0")[0].by_name()["keys/interval_ms"].alias
        host = Client(broker.port)
        host.publish(f"{SP}/DCMD/{NODE}/sim-0", wire.command(
            [wire.command_metric(1000, wire.UINT32, alias=alias)], 1))
        await wait_for(lambda: [m.value(wire.UINT32) for p in of(spb, "DDATA", "sim-0")
                                for m in p.metrics if m.alias == alias] == [100],
                       what="the real value after the NACK")
        assert node.writes_failed == 1
        assert fleet.device("sim-0").settings[1] == 100
        host.close()


async def test_e2e_a_glob_ports_device_is_born_under_its_uid_id(tmp_path, broker, spb):
    """A glob port's device takes its ``uid-<hex>`` id after HELLO (DeviceRenamed): the node
    births it under that id, and its data goes there; the path id, if it was ever born, died
    before (a DDEATH of the old id on a rename)."""
    async with bridge_stack(tmp_path, broker, count=1, glob=True) as (fleet, _g, _b, node):
        uid_id = f"uid-{fleet.devices[0].uid.hex()}"
        await wait_for(lambda: node.ready and len(of(spb, "DDATA", uid_id)) >= 3, timeout=15,
                       what="data under the uid id")
        assert of(spb, "DBIRTH", uid_id)[0].by_name()["Properties/uid"].value() == \
            fleet.devices[0].uid.hex()
        others = {d for k, d, _ in node_messages(spb) if d not in ("", uid_id)}
        for other in others:
            kinds = [k for k, d, _ in node_messages(spb) if d == other]
            assert kinds[-1] == "DDEATH", other
        assert_seq_contiguous(node_messages(spb))


async def test_e2e_rebirth_ncmd(tmp_path, broker, spb):
    async with bridge_stack(tmp_path, broker) as (_fleet, _gw, _bridge, node):
        await wait_for(lambda: node.ready and len(of(spb, "DBIRTH", "sim-1")), timeout=10,
                       what="births")
        host = Client(broker.port)
        host.publish(f"{SP}/NCMD/{NODE}", wire.command(
            [wire.command_metric(True, wire.BOOLEAN, name="Node Control/Rebirth")], 1))
        await wait_for(lambda: len(of(spb, "NBIRTH")) == 2 and len(of(spb, "DBIRTH", "sim-0"))
                       == 2 and len(of(spb, "DBIRTH", "sim-1")) == 2, what="the rebirth")
        await wait_for(lambda: node_messages(spb)[-1][0] == "DDATA", what="data again")
        assert_seq_contiguous(node_messages(spb))
        host.close()


async def test_e2e_a_clean_stop_says_ddeath_for_each_device_then_ndeath(tmp_path, broker, spb):
    """At a stop the devices' last state changes (gateway_stopped) come first: a DDEATH each,
    then the node's own NDEATH with its bdSeq."""
    async with bridge_stack(tmp_path, broker) as (_fleet, _gw, _bridge, node):
        await wait_for(lambda: node.ready and len(of(spb, "DBIRTH", "sim-1")), timeout=10,
                       what="births")
        bdseq = node.bdseq
    await wait_for(lambda: of(spb, "NDEATH"), what="NDEATH")
    tail = [(k, d) for k, d, _ in node_messages(spb) if k != "DDATA"][-3:]
    assert sorted(tail[:2]) == [("DDEATH", "sim-0"), ("DDEATH", "sim-1")]
    assert tail[2] == ("NDEATH", "")
    assert of(spb, "NDEATH")[0].by_name()["bdSeq"].value() == bdseq
    assert_seq_contiguous(node_messages(spb))


async def test_e2e_a_broker_outage_brings_the_waited_events_as_historical(tmp_path, broker):
    """The node's own outage: the queue holds what it has not taken; after the new NBIRTH
    and DBIRTHs those come first, is_historical, then live ones."""
    async with bridge_stack(tmp_path, broker, interval_ms=50) as (_fleet, _gw, bridge, node):
        await wait_for(lambda: node.ready, timeout=10, what="births")
        broker.stop()
        await wait_for(lambda: not node.ready and not bridge.mqtt.connected, what="outage")
        await wait_for(lambda: bridge.spool.count >= 20, what="events to queue up")
        broker.start()
        host = Client(broker.port, client_id="sparkplug-host-e2e")
        host.subscribe("spBv1.0/#")
        await wait_for(lambda: len([p for p in of(host, "DDATA", "sim-0")
                                    if not p.metrics[0].is_historical]) >= 3, timeout=20,
                       what="live data after the outage")
        kinds = [(k, bool(p.metrics) and p.metrics[0].is_historical)
                 for k, _, p in node_messages(host)]
        assert [k for k, _ in kinds[:3]] == ["NBIRTH", "DBIRTH", "DBIRTH"]
        first_live = next(i for i, (k, h) in enumerate(kinds) if k == "DDATA" and not h)
        assert first_live - 3 >= 10, "the waited events"
        assert all(h for _, h in kinds[3:first_live])
        assert_seq_contiguous(node_messages(host))
        host.close()


async def test_e2e_no_birth_until_the_primary_host_is_online(tmp_path, broker, spb):
    host = Client(broker.port, client_id="scada-e2e")
    sparkplug = {"primary_host_id": "scada"}
    async with bridge_stack(tmp_path, broker, sparkplug=sparkplug) as (_f, _g, bridge, node):
        await wait_for(lambda: node.mqtt.subscribed and bridge.mqtt.subscribed, timeout=10,
                       what="both connections subscribed")
        await wait_for(lambda: bridge.spool.count >= 5 or bridge.publisher.published >= 5,
                       what="native events flowing")
        assert not of(spb, "NBIRTH")
        assert not node.ready
        host.client.publish("spBv1.0/STATE/scada",
                            json.dumps({"online": True, "timestamp": int(time.time() * 1000)}),
                            qos=1, retain=True).wait_for_publish(5)
        await wait_for(lambda: node.ready and of(spb, "DDATA", "sim-0"), timeout=10,
                       what="births and data after STATE online")
        # the events that waited for the host came too, after the births (in this run the
        # node was never born before: the publisher does not count that as an outage, so
        # they are not historical)
        born = of(spb, "NBIRTH")[0].timestamp
        assert any(m.timestamp < born for p in of(spb, "DDATA", "sim-0") for m in p.metrics)
        assert_seq_contiguous(node_messages(spb))
    host.close()


async def test_e2e_ndeath_after_sigkill_of_the_gateway(tmp_path, broker, spb):
    """``mcp-gateway run`` killed with SIGKILL: the broker publishes its NDEATH (the will) with
    the bdSeq of its NBIRTH; the DBIRTHs came before."""
    links = tmp_path / "links"
    async with Fleet(FleetSpec(count=2, interval_ms=200, link_dir=links)):
        config = tmp_path / "gw.toml"
        text = (f'gateway_id = "{NODE}"\nstate_dir = "{tmp_path / "state"}"\n'
                f'[broker]\nurl = "{broker.url}"\n[sparkplug]\nenabled = true\n')
        for name in ("sim-0", "sim-1"):
            text += f'\n[[ports]]\nname = "{name}"\npath = "{links / name}"\n'
        config.write_text(text)
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "mcp-gateway"), "run", "--config", str(config),
            stderr=asyncio.subprocess.DEVNULL)
        try:
            await wait_for(lambda: len(of(spb, "DBIRTH", "sim-0")) and of(spb, "DBIRTH", "sim-1")
                           and of(spb, "DDATA", "sim-0"), timeout=20, what="births and data")
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await wait_for(lambda: of(spb, "NDEATH"), timeout=10, what="the will")
    bdseq = of(spb, "NBIRTH")[0].by_name()["bdSeq"].value()
    assert of(spb, "NDEATH")[0].by_name()["bdSeq"].value() == bdseq
    assert not of(spb, "DDEATH", "sim-0")  # killed: no word of its own, the will says it all


async def test_hostile_commands_are_refused_and_the_node_goes_on(tmp_path, broker, spb):
    """Whatever arrives on NCMD, DCMD and STATE (random bytes, payloads of the right shape
    with wrong names, aliases, datatypes and values) is refused and counted, never a crash:
    afterwards the node still streams and a Rebirth still works."""
    rng = random.Random(17)
    garbage = [rng.randbytes(rng.randrange(0, 80)) for _ in range(60)]
    shaped = [wire.command([wire.command_metric(value, datatype, name=name, alias=alias)],
                           rng.randrange(2**40))
              for value, datatype, name, alias in (
                  (True, wire.BOOLEAN, "Node Control/Reboot", None),
                  ("x", wire.STRING, "keys/interval_ms", None),  # a string for a u32
                  (2**40, wire.UINT64, "keys/interval_ms", None),  # beyond u32
                  (5, wire.UINT32, None, 999_999),  # no such alias
                  (5, wire.UINT32, "status/temperature_c", None),  # not a key
                  (5, wire.UINT32, "keys/fw_build", None),  # read-only
                  (True, wire.BOOLEAN, None, None))]  # neither name nor alias
    async with node_stack(tmp_path, broker) as stack:
        await wait_for(lambda: stack.node.ready and len(of(spb, "DBIRTH", "sim-1")),
                       timeout=10, what="births")
        host = Client(broker.port)
        try:
            for body in [*garbage, *shaped]:
                host.publish(f"{SP}/NCMD/{NODE}", body)
                host.publish(f"{SP}/DCMD/{NODE}/sim-0", body)
                host.publish(f"{SP}/DCMD/{NODE}/nobody", body)
            received = 3 * (len(garbage) + len(shaped))
            await wait_for(lambda: stack.node.counters()["received"].get("NCMD", 0)
                           + stack.node.counters()["received"].get("DCMD", 0) == received,
                           timeout=15, what="every command taken")
            # no write reached the device: every one was refused before the request path,
            # or by it (the out-of-range ones are the request path's invalid)
            assert all(payload.get("key") != "fw_build" for _, _, payload, _ in stack.submitted)
            data = len(of(spb, "DDATA", "sim-0"))
            await wait_for(lambda: len(of(spb, "DDATA", "sim-0")) > data + 3,
                           what="data still flowing")
            host.publish(f"{SP}/NCMD/{NODE}", wire.command(
                [wire.command_metric(True, wire.BOOLEAN, name="Node Control/Rebirth")],
                int(time.time() * 1000)))
            await wait_for(lambda: len(of(spb, "NBIRTH")) == 2, what="a rebirth still works")
            assert stack.node.ready
        finally:
            host.close()


async def test_e2e_a_device_lost_during_an_outage_gets_its_data_then_its_death(
        tmp_path, broker, spb):
    """A device that goes offline while the node has no session (the primary host went
    offline) is born in the next session where the node is in the queue: its waited events
    come as historical DDATA, then its DDEATH; never data after the death."""
    host = Client(broker.port, client_id="scada-outage")

    def state(online: bool) -> None:
        host.client.publish("spBv1.0/STATE/scada", json.dumps(
            {"online": online, "timestamp": int(time.time() * 1000)}),
            qos=1, retain=True).wait_for_publish(5)

    sparkplug = {"primary_host_id": "scada"}
    async with bridge_stack(tmp_path, broker, sparkplug=sparkplug) as (fleet, gateway, bridge,
                                                                      node):
        await wait_for(lambda: node.mqtt.subscribed, timeout=10, what="node subscribed")
        state(True)
        await wait_for(lambda: node.ready and of(spb, "DDATA", "sim-1"), timeout=10,
                       what="the first session's data")
        state(False)
        await wait_for(lambda: not node.ready, timeout=10, what="the session over")
        queued = bridge.spool.last_id
        await wait_for(lambda: bridge.spool.last_id >= queued + 6, what="events meanwhile")
        await fleet.devices[1].unplug()
        await wait_for(lambda: str(gateway.device("sim-1").state) == "offline",
                       what="sim-1 offline")
        await wait_for(lambda: node.mqtt.subscribed, timeout=10, what="the node back, waiting")
        state(True)
        await wait_for(lambda: len(of(spb, "NBIRTH")) == 2 and of(spb, "DDEATH", "sim-1"),
                       timeout=15, what="the second session, and sim-1's death in it")
        messages = node_messages(spb)
        start = max(i for i, (kind, _, _) in enumerate(messages) if kind == "NBIRTH")
        session = messages[start:]
        kinds = [(kind, device) for kind, device, _ in session]
        assert ("DBIRTH", "sim-1") in kinds
        death = kinds.index(("DDEATH", "sim-1"))
        waited = [p for kind, device, p in session[:death] if (kind, device) == ("DDATA", "sim-1")]
        assert waited, "sim-1's events from the outage were not sent"
        assert all(m.is_historical for p in waited for m in p.metrics)
        assert ("DDATA", "sim-1") not in kinds[death:]
        assert_seq_contiguous(session)
    host.close()


async def test_e2e_a_profile_change_that_a_kept_value_does_not_fit_is_born_with_nulls(
        tmp_path, broker, spb, caplog):
    """A reload gives a device a profile whose field is now a u8: the 21-ish temperature the
    node kept as a Double would not encode as it, so the device is born with its values
    null (logged), not left unborn and not the gateway stopped."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "narrow.toml").write_text(
        'name = "narrow"\n[[events]]\nid = 0x20\nname = "status"\nfields = [\n'
        '  { name = "temperature_c", type = "u8" },\n]\n')
    links = tmp_path / "links"
    path = tmp_path / "gateway.toml"

    def write(profile: str) -> None:
        path.write_text(
            f'gateway_id = "{NODE}"\nstate_dir = "{tmp_path / "state"}"\n'
            f'profiles_dir = "{profiles}"\n[broker]\nurl = "{broker.url}"\n'
            '[sparkplug]\nenabled = true\n'
            f'[[ports]]\nname = "sim-0"\npath = "{links / "sim-0"}"\nprofile = "{profile}"\n')

    write("env-sensor")
    async with Fleet(FleetSpec(count=1, interval_ms=100, link_dir=links)):
        config = load_config(path)
        gateway = Gateway(config)
        async with Bridge(gateway, config) as bridge, gateway:
            Reloader(path, gateway, bridge)
            await wait_for(lambda: len(of(spb, "DDATA", "sim-0")) >= 3, timeout=10,
                           what="data with the first profile")
            write("narrow")
            assert bridge.reloader is not None
            assert (await bridge.reloader()).restarted == ["sim-0"]
            await wait_for(lambda: len(of(spb, "DBIRTH", "sim-0")) == 2, timeout=10,
                           what="the device born again with its new profile")
            reborn = of(spb, "DBIRTH", "sim-0")[1].by_name()["status/temperature_c"]
            assert reborn.datatype == wire.UINT8
            assert reborn.is_null
            assert bridge.sparkplug is not None
            assert bridge.sparkplug.ready
    assert "does not fit" in caplog.text
