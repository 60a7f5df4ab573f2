"""The queue's extra outputs (what Sparkplug B is): one queue, an event leaves it once the
native fabric's PUBACK came and every output has taken it; an output that is down does not
stop the native fabric, and gets what it missed, in order, marked historical, when back."""

from __future__ import annotations

import contextlib
import json
import sqlite3

from gateway.bridge.spool import SpooledEvent
from tests.harness import wait_for
from tests.mqtt_helpers import Client
from tests.test_bridge import P, stack


class Recorder:
    """An output that takes events while ``ready`` says so."""

    def __init__(self) -> None:
        self.ready = False
        self.taken: list[tuple[int, str, int, bool]] = []  # (id, device, seq, historical)

    def take(self, row: SpooledEvent, historical: bool) -> None:
        assert self.ready, "an event was handed to an output that is not ready"
        body = json.loads(row.body)
        self.taken.append((row.id, body["source"].split("/")[1], body["seq"], historical))

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
