"""The queue's extra outputs (what Sparkplug B is): one queue, an event leaves it once the
native fabric's PUBACK came and every output has taken it; an output that is down does not
stop the native fabric, and gets what it missed, in order, marked historical, when back."""

from __future__ import annotations

import contextlib
import json
import sqlite3

from gateway.bridge.spool import SpooledEvent
from gateway.session import DeviceRenamed, StateChange
from tests.harness import wait_for
from tests.mqtt_helpers import Client
from tests.test_bridge import P, stack


class Recorder:
    """An output that takes events while ``ready`` says so, and checks that no event of a
    device comes after that device's offline (state changes in order with the events)."""

    def __init__(self) -> None:
        self.ready = False
        self.taken: list[tuple[int, str, int, bool]] = []  # (id, device, seq, historical)
        #: (the id of the last event taken before it, device, state)
        self.changes: list[tuple[int, str, str]] = []
        self.states: dict[str, str] = {}

    def take(self, row: SpooledEvent, historical: bool) -> None:
        assert self.ready, "an event was handed to an output that is not ready"
        body = json.loads(row.body)
        device = body["source"].split("/")[1]
        assert self.states.get(device) == "online", f"an event of {device} while it is " \
            f"{self.states.get(device)} to the output"
        self.taken.append((row.id, device, body["seq"], historical))

    def device_changed(self, event: StateChange | DeviceRenamed) -> None:
        if isinstance(event, StateChange):
            self.states[event.device_id] = str(event.state)
            self.changes.append((self.taken[-1][0] if self.taken else 0, event.device_id,
                                 str(event.state)))

    def seqs(self, device: str) -> list[int]:
        return [seq for _, dev, seq, _ in self.taken if dev == device]


def contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_an_output_that_is_down_holds_events_in_the_queue_and_gets_them_when_back(
        tmp_path, broker):
    client = Client(broker.port)
    client.subscribe(f"{P}/devices/+/events/status")
    recorder = Recorder()
    async with stack(tmp_path, broker, outputs=[recorder]) as (_fleet, _gateway, bridge):
        publisher = bridge.publisher
        await wait_for(lambda: publisher.published >= 20, timeout=15, what="native events")
        # The native fabric goes on; the acknowledged events stay queued for the output.
        assert recorder.taken == []
        assert publisher.spool.count >= publisher.published - 2

        recorder.ready = True
        publisher.output_changed()
        await wait_for(lambda: len(recorder.taken) >= publisher.published, timeout=10,
                       what="the output caught up")
        # The first time it is ready, what waited for it is not historical (as the native
        # fabric's first connection: the events merely waited for it).
        assert not any(historical for *_, historical in recorder.taken)

        recorder.ready = False
        publisher.output_changed()
        missed_from = recorder.taken[-1][0]
        published = publisher.published
        await wait_for(lambda: publisher.published >= published + 20, timeout=15,
                       what="native events while the output is down")
        recorder.ready = True
        publisher.output_changed()
        upto = publisher.spool.last_id
        await wait_for(lambda: recorder.taken[-1][0] > upto + 5, timeout=10,
                       what="the output back, and live again")
        for event_id, _dev, _seq, historical in recorder.taken:
            if event_id > missed_from:
                assert historical == (event_id <= upto), event_id
        # Once taken and acknowledged, events leave the queue.
        await wait_for(lambda: publisher.spool.count < 10, timeout=10,
                       what="the queue emptied")

    ids = [event_id for event_id, *_ in recorder.taken]
    assert ids == sorted(set(ids)), "an event was taken twice or out of order"
    native = client.json_on(f"{P}/devices/")
    client.close()
    for device in ("sim-0", "sim-1"):
        seqs = recorder.seqs(device)
        assert contiguous(seqs), seqs
        native_seqs = [e["seq"] for e in native if e["source"].endswith(device)]
        # Every event the native fabric carried, the output took (up to the last few).
        assert set(native_seqs[:-5]) <= set(seqs)


def queued_on_disk(publisher) -> int:
    """What the queue's file holds (committed), read on a connection of its own."""
    publisher.spool.commit()
    with contextlib.closing(sqlite3.connect(publisher.spool.path)) as db:
        return db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]


async def test_a_native_reconnect_while_an_output_is_down_sends_nothing_twice(tmp_path, broker):
    """Events the broker acknowledged while an output was down wait for it in the queue; a
    native reconnect meanwhile does not send them again (they were acknowledged), and when
    the output is back each leaves the queue once: the queue's count stays its file's."""
    recorder = Recorder()
    async with stack(tmp_path, broker, outputs=[recorder]) as (_fleet, _gateway, bridge):
        publisher = bridge.publisher
        await wait_for(lambda: publisher.published >= 30, timeout=15, what="native events")
        broker.stop()
        await wait_for(lambda: not bridge.mqtt.connected, what="the broker gone")
        published = publisher.published
        broker.start()
        await wait_for(lambda: bridge.mqtt.connected, timeout=15, what="reconnected")
        await wait_for(lambda: publisher.published >= published + 20, timeout=15,
                       what="native events after the reconnect")
        # Only the events in flight at the loss (and those queued during it) went again.
        assert publisher.published <= publisher.spool.last_id + publisher.window
        recorder.ready = True
        publisher.output_changed()
        await wait_for(lambda: publisher.spool.count < 10, timeout=10, what="the queue emptied")
        await wait_for(lambda: queued_on_disk(publisher) == publisher.spool.count,
                       what="the count and the file agree")
        assert publisher.spool.count >= 0
    ids = [event_id for event_id, *_ in recorder.taken]
    assert ids == sorted(set(ids)), "an event was taken twice or out of order"


async def test_a_device_that_goes_offline_while_an_output_is_down_dies_after_its_events(
        tmp_path, broker):
    """The output hears of a device's offline where it is in the queue: after the device's
    last events, which it still gets (historical), never before them."""
    recorder = Recorder()
    async with stack(tmp_path, broker, outputs=[recorder]) as (fleet, gateway, bridge):
        publisher = bridge.publisher
        await wait_for(lambda: publisher.published >= 10, timeout=15, what="native events")
        recorder.ready = True
        publisher.output_changed()
        await wait_for(lambda: len(recorder.taken) >= 10, what="the output live")
        recorder.ready = False
        publisher.output_changed()
        down_from = recorder.taken[-1][0]
        await wait_for(lambda: publisher.spool.last_id >= down_from + 10, what="more events")
        await fleet.devices[1].unplug()
        await wait_for(lambda: str(gateway.device("sim-1").state) == "offline",
                       what="sim-1 offline")
        last_of_sim1 = publisher.spool.last_id
        assert recorder.states["sim-1"] == "online"  # not yet: its events are still to come
        recorder.ready = True
        publisher.output_changed()
        await wait_for(lambda: recorder.states.get("sim-1") == "offline", timeout=10,
                       what="the output told sim-1 is offline")
        died_after = next(taken for taken, dev, state in recorder.changes
                          if dev == "sim-1" and state == "offline")
        sim1 = [event_id for event_id, dev, *_ in recorder.taken if dev == "sim-1"]
        assert sim1[-1] <= died_after <= last_of_sim1
        assert [e for e in sim1 if e > down_from], "its events from the outage were taken"
        assert all(historical for event_id, dev, _, historical in recorder.taken
                   if dev == "sim-1" and event_id > down_from)


async def test_what_waits_for_a_down_output_stays_within_the_queues_bounds(tmp_path, broker):
    """While an output is down for long the queue fills and drops its oldest, counted; what
    the publisher holds for the output goes with them (it grew with all traffic before)."""
    recorder = Recorder()
    async with stack(tmp_path, broker, outputs=[recorder],
                     queue={"max_messages": 40}) as (_fleet, _gateway, bridge):
        publisher = bridge.publisher
        await wait_for(lambda: publisher.spool.dropped >= 40, timeout=20,
                       what="the queue full, its oldest dropped")
        await wait_for(lambda: publisher.published >= 100, timeout=20, what="native events")
        assert publisher.held <= 40
        recorder.ready = True
        publisher.output_changed()
        await wait_for(lambda: publisher.spool.count < 10 and publisher.held < 10,
                       timeout=10, what="the output caught up, the queue emptied")
        ids = [event_id for event_id, *_ in recorder.taken]
        assert ids == sorted(set(ids))
        assert ids[0] > 40  # what was dropped was not sent to it


class Failing(Recorder):
    """An output that fails on every fifth event (a bug, a value it cannot hold)."""

    def take(self, row: SpooledEvent, historical: bool) -> None:
        if row.id % 5 == 0:
            raise ValueError(f"cannot take {row.id}")
        super().take(row, historical)


async def test_an_output_that_fails_on_an_event_skips_it_and_the_queue_goes_on(
        tmp_path, broker, caplog):
    failing = Failing()
    failing.ready = True
    async with stack(tmp_path, broker, outputs=[failing]) as (_fleet, _gateway, bridge):
        publisher = bridge.publisher
        await wait_for(lambda: len(failing.taken) >= 40, timeout=15, what="events taken")
        await wait_for(lambda: publisher.spool.count < 10, what="the queue still emptying")
    ids = [event_id for event_id, *_ in failing.taken]
    assert ids
    assert all(event_id % 5 for event_id in ids)
    failures = [r for r in caplog.records if "failed on a queued event" in r.getMessage()]
    assert len(failures) == 1  # once, then counted
    assert "cannot take 5" in failures[0].getMessage()
