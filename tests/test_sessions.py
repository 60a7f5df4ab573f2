"""Device sessions through real ptys: registration, requests, retries, priorities, unplug."""

from __future__ import annotations

import asyncio
import logging

import pytest

from firmware_sim import Faults, Fleet, FleetSpec
from gateway.errors import InvalidRequest
from gateway.frames import Command, NackCode
from gateway.session import DeviceRenamed, DeviceState, StateChange, TelemetryEvent
from gateway.transactions import Status
from tests.harness import (
    fleet_and_gateway,
    gateway_config,
    is_state,
    is_telemetry,
    next_event,
    running_gateway,
    wait_for,
)


async def test_three_devices_register_stream_and_keep_node_ids_across_restarts(tmp_path):
    links = tmp_path / "links"
    async with Fleet(FleetSpec(count=3, interval_ms=100, link_dir=links)) as fleet:
        paths = {d.name: str(links / d.name) for d in fleet.devices}
        config = gateway_config(tmp_path, paths, heartbeat_s=1)
        async with running_gateway(config) as (gw, sub):
            for device in fleet.devices:
                online = await next_event(sub, is_state(device.name, "online"))
                assert online.reason == "registered"
                assert online.facts["uid"] == device.uid.hex()
                assert online.facts["model"] == "env-sensor"
            node_ids = {name: gw.device(name).node_id for name in gw.devices}
            assert sorted(node_ids.values()) == [1, 2, 3]
            await wait_for(lambda: all(d.node_id == node_ids[d.name] for d in fleet.devices),
                           what="devices to get their node ids")
            for device in fleet.devices:
                event = await next_event(sub, is_telemetry(device.name))
                assert set(event.fields) == {"temperature_c", "humidity_pct", "battery_mv",
                                             "uptime_s"}
        # The gateway restarts; the devices still believe they are registered.
        async with running_gateway(config) as (gw, sub):
            for name in paths:
                # Their next PING gets NACK 5 (not registered), so they say HELLO again.
                await next_event(sub, is_state(name, "online"), timeout=5)
                assert gw.device(name).node_id == node_ids[name]


@pytest.fixture
async def one(tmp_path):
    spec = FleetSpec(count=1, interval_ms=200, seed=11)
    async with fleet_and_gateway(tmp_path, spec, request_timeout_s=0.3, retries=2) as running:
        fleet, gw, sub = running
        await next_event(sub, is_state("sim-0", "online"))
        yield fleet.devices[0], gw.device("sim-0"), sub


async def test_read_write_and_their_outcomes(one):
    device, session, _ = one
    outcome = await session.request("read", {"key": "interval_ms"})
    assert outcome.status is Status.OK
    assert outcome.value == 200
    assert outcome.tries == 1
    assert outcome.latency_s > 0

    outcome = await session.request("write", {"key": "name", "value": "lab-7"})
    assert outcome.status is Status.OK
    assert device.settings[2] == "lab-7"
    assert (await session.request("read", {"key": 2})).value == "lab-7"

    # read-only key: the device answers WRITE_ACK status 6
    outcome = await session.request("write", {"key": "fw_build", "value": 1})
    assert outcome.status is Status.NACK
    assert outcome.nack_code == NackCode.DENIED

    # unknown command: NACK code 1
    outcome = await session.request("raw", {"cmd_id": 0x33, "data_hex": "01"})
    assert outcome.status is Status.NACK
    assert outcome.nack_code == NackCode.UNKNOWN_COMMAND

    outcome = await session.request("ping")
    assert outcome.status is Status.OK

    counters = session.counters()
    assert counters["tx_frames"] >= 6
    assert counters["rx_frames"] > 6
    assert counters["queue_depth"] == 0


async def test_an_outcome_says_which_key_its_value_is_and_in_what_unit(one):
    """What the answer is about comes from the prepared request: nothing downstream
    resolves the key again."""
    _, session, _ = one
    read = await session.request("read", {"key": 1})
    assert (read.status, read.key, read.value, read.unit) == (Status.OK, "interval_ms", 200,
                                                               "ms")
    write = await session.request("write", {"key": "name", "value": "lab-8"})
    assert (write.status, write.key, write.value, write.unit) == (Status.OK, "name", "lab-8",
                                                                   None)
    ping = await session.request("ping", priority="high")
    assert (ping.status, ping.key, ping.value, ping.unit) == (Status.OK, None, {}, None)
    with pytest.raises(InvalidRequest, match="priority 'urgent' is not one of high, medium"):
        await session.request("ping", priority="urgent")


@pytest.mark.parametrize(
    ("action", "args", "message"),
    [
        ("read", {"key": "colour"}, "no key 'colour'"),
        ("read", {}, "read needs a key"),
        ("write", {"key": "interval_ms", "value": 5}, "below the minimum 10"),
        ("write", {"key": "interval_ms"}, "needs a value"),
        ("raw", {"cmd_id": 0x90}, "not a request command"),
        ("raw", {"cmd_id": 0x20}, "not a request a gateway sends"),
        ("raw", {"cmd_id": 0x30, "data_hex": "zz"}, "is not hex"),
        ("reboot", {}, "unknown action 'reboot'; known actions: read, write, raw, ping"),
    ],
)
async def test_invalid_requests_are_refused_before_anything_is_sent(one, action, args, message):
    device, session, _ = one
    received = len(device.received)
    with pytest.raises(InvalidRequest, match=message):
        await session.request(action, args)
    assert len(device.received) == received


async def test_retries_recover_dropped_responses(tmp_path):
    faults = Faults(drop_rate=0.3)
    spec = FleetSpec(count=1, interval_ms=1000, faults=faults, seed=5)
    async with fleet_and_gateway(tmp_path, spec, request_timeout_s=0.15, retries=8) as (
            fleet, gw, sub):
        await next_event(sub, is_state("sim-0", "online"))
        session = gw.device("sim-0")
        keys = ["interval_ms", "name", "fw_build"]
        outcomes = [await session.request("read", {"key": keys[i % 3]}) for i in range(30)]
        assert all(o.status is Status.OK for o in outcomes), [o.status for o in outcomes]
        assert outcomes[2].value == 4242
        counters = session.counters()
        assert counters["retries"] == sum(o.tries - 1 for o in outcomes) > 0
        assert counters["timeouts"] >= counters["retries"]
        assert fleet.devices[0].counters.dropped_responses >= counters["retries"]


async def test_no_answers_end_in_timeout_after_exactly_the_tries_then_circuit_open(tmp_path):
    spec = FleetSpec(count=1, interval_ms=1000, faults=Faults(drop_rate=1.0))
    async with fleet_and_gateway(tmp_path, spec, request_timeout_s=0.1, retries=4,
                                 circuit_threshold=5, circuit_reset_s=0.5) as (fleet, gw, sub):
        await next_event(sub, is_state("sim-0", "online"))
        device, session = fleet.devices[0], gw.device("sim-0")
        reads_before = sum(f.cmd_id == Command.READ for f in device.received)
        outcome = await session.request("read", {"key": 1})
        assert outcome.status is Status.TIMEOUT
        assert outcome.tries == 5
        await wait_for(lambda: sum(f.cmd_id == Command.READ for f in device.received)
                       - reads_before == 5, what="the device to see 5 READs")
        fast = await session.request("read", {"key": 1})
        assert fast.status is Status.CIRCUIT_OPEN
        # After circuit_reset_s one probe goes through; the device answers it now.
        device.faults = Faults()
        await asyncio.sleep(0.5)  # the breaker's own reset time, not a race
        probe = await wait_for_outcome(session, Status.OK)
        assert probe.tries == 1
        assert (await session.request("read", {"key": 1})).status is Status.OK


async def wait_for_outcome(session, status, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        outcome = await session.request("read", {"key": 1})
        if outcome.status is status or loop.time() > deadline:
            return outcome


async def test_priority_and_ttl(tmp_path):
    spec = FleetSpec(count=1, interval_ms=1000, faults=Faults(response_delay_s=0.15))
    async with fleet_and_gateway(tmp_path, spec, request_timeout_s=1.0) as (fleet, gw, sub):
        await next_event(sub, is_state("sim-0", "online"))
        session = gw.device("sim-0")
        done: list[str] = []

        async def call(tag, key, priority, ttl=30.0):
            outcome = await session.request("read", {"key": key}, priority=priority, ttl=ttl)
            done.append(tag)
            return outcome

        first = asyncio.create_task(call("first", 1, "low"))
        await wait_for(lambda: session.transactions.queue_depth == 1, what="first in flight")
        lows = [asyncio.create_task(call(f"low{i}", 1, "low")) for i in range(3)]
        await wait_for(lambda: session.transactions.queue_depth == 4, what="lows queued")
        highs = [asyncio.create_task(call(f"high{i}", 2, "high")) for i in range(3)]
        expiring = asyncio.create_task(call("expiring", 3, "low", ttl=0.05))
        outcomes = await asyncio.gather(first, *lows, *highs, expiring)
        assert done[:4] == ["first", "high0", "high1", "high2"]
        assert done[4:7] == ["low0", "low1", "low2"] or "expiring" in done[4:]
        assert outcomes[-1].status is Status.EXPIRED
        assert all(o.status is Status.OK for o in outcomes[:-1])
        # the expired request never reached the device
        device = fleet.devices[0]
        assert not any(f.cmd_id == Command.READ and f.payload[:2] == b"\x03\x00"
                       for f in device.received)


async def test_unplug_fails_in_flight_and_the_device_comes_back_with_nothing_lost(tmp_path):
    spec = FleetSpec(count=1, interval_ms=50, seed=2)
    async with fleet_and_gateway(tmp_path, spec, request_timeout_s=2.0) as (fleet, gw, sub):
        device, session = fleet.devices[0], gw.device("sim-0")
        await next_event(sub, is_state("sim-0", "online"))
        node_id = session.node_id
        device.faults = Faults(response_delay_s=1.0)
        in_flight = asyncio.create_task(session.request("read", {"key": 1}))
        await wait_for(lambda: any(f.cmd_id == Command.READ for f in device.received),
                       what="the READ to reach the device")
        await device.unplug()
        outcome = await in_flight
        assert outcome.status is Status.OFFLINE
        offline = await next_event(sub, is_state("sim-0", "offline"))
        assert offline.reason == "port_gone"
        assert (await session.request("read", {"key": 1})).status is Status.OFFLINE

        device.faults = Faults()
        await device.replug()
        online = await next_event(sub, is_state("sim-0", "online"), timeout=10)
        assert online.facts["node_id"] == node_id
        assert session.device_id == "sim-0"
        # From the re-registration on, every STATUS the device sends arrives, in order.
        received = []
        while len(received) < 20:
            event = await next_event(sub, is_telemetry("sim-0"))
            received.append(event.payload)
        sent = list(device.sent_status)
        start = sent.index(received[0])
        assert received == sent[start : start + len(received)]
        assert (await session.request("read", {"key": 1})).status is Status.OK


async def test_garbage_and_corruption_do_not_stop_the_stream(tmp_path):
    faults = Faults(garbage_rate=0.05, garbage_max=12, garbage_without_header=True,
                    corrupt_rate=0.05)
    spec = FleetSpec(count=1, interval_ms=10, faults=faults, seed=9)
    async with fleet_and_gateway(tmp_path, spec) as (fleet, gw, sub):
        device, session = fleet.devices[0], gw.device("sim-0")
        received = []
        while len(received) < 300:
            received.append((await next_event(sub, is_telemetry("sim-0"))).payload)
        sent = [(p, bad) for cmd, p, bad in device.sent if cmd == Command.STATUS]
        # Exactly the intact frames arrived, in order; exactly the corrupted ones are missing.
        # (Payloads can repeat, so try every place the first one was sent from.)
        windows = []
        for start, (payload, bad) in enumerate(sent):
            if payload != received[0] or bad:
                continue
            intact, end = [], start
            while end < len(sent) and len(intact) < len(received):
                if not sent[end][1]:
                    intact.append(sent[end][0])
                end += 1
            if intact == received:
                windows.append(sent[start:end])
        assert windows, "the received STATUS frames are not the intact ones in order"
        corrupted = sum(bad for _, bad in windows[0])
        assert corrupted > 0
        counters = session.counters()
        assert counters["checksum_errors"] >= corrupted
        assert counters["discarded_bytes"] > 0
        assert session.state is DeviceState.ONLINE


async def test_a_late_response_is_discarded_and_never_taken_for_the_next(tmp_path):
    spec = FleetSpec(count=1, interval_ms=1000, faults=Faults(response_delay_s=0.4))
    async with fleet_and_gateway(tmp_path, spec, request_timeout_s=0.15, retries=0) as (
            fleet, gw, sub):
        device, session = fleet.devices[0], gw.device("sim-0")
        await next_event(sub, is_state("sim-0", "online"))
        assert (await session.request("read", {"key": 1})).status is Status.TIMEOUT
        # The device read 1000 before its settings change; its answer is still on the way.
        device.settings[1] = 777
        device.faults = Faults()
        outcome = await session.request("read", {"key": 1})
        assert outcome.status is Status.OK
        assert outcome.value == 777
        await wait_for(lambda: session.counters()["late_responses"] == 1, what="the late answer")
        assert (await session.request("read", {"key": 1})).value == 777


async def test_device_without_hello_is_usable_by_its_port(tmp_path):
    spec = FleetSpec(count=1, interval_ms=100, send_hello=False)
    async with fleet_and_gateway(tmp_path, spec) as (_, gw, sub):
        event = await next_event(sub, is_telemetry("sim-0"))
        assert isinstance(event, TelemetryEvent)
        session = gw.device("sim-0")
        assert session.state is DeviceState.UNREGISTERED
        outcome = await session.request("read", {"key": "fw_build"})
        assert outcome.status is Status.OK
        assert outcome.value == 4242


async def test_a_missing_port_logs_once_and_does_not_stop_the_others(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="gateway")
    spec = FleetSpec(count=1, interval_ms=100)
    async with fleet_and_gateway(tmp_path, spec) as (fleet, _, _):
        missing = str(tmp_path / "nope")
        config = gateway_config(tmp_path / "g2", {"ghost": missing,
                                                  "real": fleet.devices[0].link.path},
                                exclusive=False)
        async with running_gateway(config) as (gw, sub):
            offline = await next_event(sub, is_state("ghost", "offline"))
            assert offline.reason == "port_gone"
            await next_event(sub, is_telemetry("real"))
            await wait_for(lambda: sum("nope" in r.getMessage() for r in caplog.records) >= 3,
                           what="a few retries")
            warnings = [r for r in caplog.records
                        if r.levelno >= logging.WARNING and "nope" in r.getMessage()]
            assert len(warnings) == 1
            assert "does not exist: is the device plugged in?" in warnings[0].getMessage()
            assert (await gw.device("ghost").request("ping")).status is Status.OFFLINE


async def test_a_glob_picks_up_new_devices_and_names_them_by_uid(tmp_path):
    links = tmp_path / "links"
    config = gateway_config(tmp_path, {"bus": str(links / "dev-*")})
    async with running_gateway(config) as (gw, sub):
        assert gw.devices == {}
        async with Fleet(FleetSpec(count=2, name_prefix="dev", link_dir=links,
                                   interval_ms=100)) as fleet:
            uid_ids = {f"uid-{d.uid.hex()}": f"bus-{d.name}" for d in fleet.devices}
            for uid_id, path_id in uid_ids.items():
                renamed = await next_event(
                    sub, lambda e, i=uid_id: isinstance(e, DeviceRenamed) and e.device_id == i,
                    timeout=5)
                assert renamed.old_id == path_id  # the id it had before HELLO
                await next_event(sub, is_state(uid_id, "online"), timeout=5)
            assert set(gw.devices) == set(uid_ids)
            event = await next_event(sub, lambda e: isinstance(e, TelemetryEvent))
            assert event.device_id in uid_ids


async def test_a_uid_id_goes_to_the_device_that_is_online(tmp_path):
    links = tmp_path / "links"
    config = gateway_config(tmp_path, {"bus": str(links / "dev-*")}, heartbeat_s=0.3)
    async with running_gateway(config) as (gw, sub), Fleet(FleetSpec(
            count=2, name_prefix="dev", link_dir=links, interval_ms=100)) as fleet:
        first, second = fleet.devices
        uid_id = f"uid-{first.uid.hex()}"
        await next_event(sub, is_state(uid_id, "online"), timeout=5)
        await next_event(sub, is_state(f"uid-{second.uid.hex()}", "online"), timeout=5)
        # A second device claiming the same uid while the first is online keeps its path id.
        second.uid = first.uid
        await second.unplug(0.05)
        await next_event(sub, is_state("bus-dev-1", "online"), timeout=5)
        assert gw.devices[uid_id].port.endswith("dev-0")
        # Once the first is gone, the uid id moves to the one that says HELLO with it.
        await first.unplug()
        await next_event(sub, is_state(uid_id, "offline"), timeout=5)
        await second.unplug(0.05)
        back = await next_event(sub, lambda e: isinstance(e, DeviceRenamed) and
                                e.old_id == uid_id, timeout=5)
        assert back.device_id == "bus-dev-0"
        await next_event(sub, is_state(uid_id, "online"), timeout=5)
        assert gw.devices[uid_id].port.endswith("dev-1")
        assert gw.devices["bus-dev-0"].state is DeviceState.OFFLINE


async def test_events_keep_arrival_order_and_state_changes_carry_facts(one):
    _device, session, sub = one
    uptimes = []
    while len(uptimes) < 5:
        event = await next_event(sub, lambda e: isinstance(e, TelemetryEvent))
        uptimes.append(event.received_at)
    assert uptimes == sorted(uptimes)
    assert isinstance(StateChange, type)
    assert session.facts["profile"] == "env-sensor"
    assert session.facts["port"].endswith("sim-0")


async def test_liveness_pings_a_silent_device_and_marks_it_offline_then_back(tmp_path):
    spec = FleetSpec(count=1, interval_ms=3_600_000)
    async with fleet_and_gateway(tmp_path, spec, heartbeat_s=0.3) as (fleet, gw, sub):
        device = fleet.devices[0]
        await next_event(sub, is_state("sim-0", "online"))
        device.muted = True  # hung firmware: the port stays open, nothing comes back
        offline = await next_event(sub, is_state("sim-0", "offline"), timeout=5)
        assert offline.reason == "heartbeat_timeout"
        assert any(f.cmd_id == Command.PING for f in device.received)  # the gateway asked
        assert (await gw.device("sim-0").request("ping")).status is Status.OFFLINE
        device.muted = False
        device.log_line(1, "back")
        back = await next_event(sub, is_state("sim-0", "online"), timeout=5)
        assert back.reason == "heard_again"


async def test_devices_over_tcp_socket_urls(tmp_path):
    async with Fleet(FleetSpec(count=2, link="tcp", interval_ms=100)) as fleet:
        paths = {d.name: d.link.path for d in fleet.devices}
        async with running_gateway(gateway_config(tmp_path, paths)) as (gw, sub):
            for name in paths:
                await next_event(sub, is_state(name, "online"))
            outcome = await gw.device("sim-1").request("read", {"key": "fw_build"})
            assert outcome.value == 4242
            device = fleet.devices[1]
            await device.unplug()
            assert (await next_event(sub, is_state("sim-1", "offline"))).reason == "port_gone"
            await device.replug()
            await next_event(sub, is_state("sim-1", "online"), timeout=10)
