"""Device events onto the fabric: the subscription's events -> spool (SQLite, batched) ->
QoS 1 publishes within a window of unacknowledged ones -> broker; an event leaves the spool
only on its PUBACK. Nothing here blocks on a single message.

While connected, serial reads pause when the broker falls behind (backpressure, not
buffering). When the queue cannot be written (a full disk), events keep flowing to a
connected broker (counted as not durable) or wait in the spool's bounded memory; the
gateway's status says ``degraded`` and writes are retried with a bounded backoff until the
disk takes them again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.app import Gateway
from gateway.bridge.envelope import event_body, mark_replayed
from gateway.bridge.mqtt import MqttConnection
from gateway.bridge.spool import Spool, SpooledEvent
from gateway.bridge.statuses import RetainedStatuses
from gateway.bridge.topics import Topics
from gateway.errors import SpoolWriteFailed
from gateway.frames import Command
from gateway.logs import Recurring
from gateway.session import DeviceEvent, DeviceRenamed, StateChange, TelemetryEvent

log = logging.getLogger(__name__)

WINDOW = 1000
#: While connected, serial reads pause when this many events wait to be published (the
#: broker is slower than the devices): backpressure instead of a growing queue.
SPOOL_HOLD = 4 * WINDOW
_BATCH = 1000
#: acknowledged events are deleted from the queue at most this late: the deletes ride along
#: with the next batch's commit, and only a quiet queue needs a commit of its own (a crash
#: before it sends them again: at least once)
COMMIT_DELAY_S = 1.0
#: while the queue cannot be written, writes are retried after this long, doubling up to
#: the maximum: the queue resumes by itself within RETRY_MAX_S of the disk having room
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
#: the gateway says degraded until its queue has been written without a failure this long: a
#: nearly full disk takes some writes and refuses others, and must not flap the status
RECOVERED_AFTER_S = 5.0


class EventOutput(Protocol):
    """Another way the queued events leave besides the native fabric (Sparkplug B): it is
    handed every event in queue order, each once, while ``ready``. It takes an event
    synchronously (Sparkplug publishes at QoS 0: there is no PUBACK to wait for), so how far
    it has got is one id. When it is not ready, the queue keeps what it has not taken.
    Devices' state changes reach it in order with the events, where it is in the queue: a
    device that went offline during its outage is offline to it only after its last events."""

    @property
    def ready(self) -> bool:
        """It may take events now (connected, and born where that applies)."""
        ...

    def take(self, row: SpooledEvent, historical: bool) -> None:
        """One queued event; ``historical``: it waited out this output's outage."""
        ...

    def device_changed(self, event: StateChange | DeviceRenamed) -> None:
        """A device's state change, after every event queued before it."""
        ...


class _Cursor:
    """How far an extra output has taken the queue, and the state changes it has yet to
    get (each after the events queued before it)."""

    __slots__ = ("changes", "failing", "output", "replay_upto", "upto", "was_ready")

    def __init__(self, output: EventOutput) -> None:
        self.output = output
        #: every event with an id up to this has been taken
        self.upto = 0
        #: events with ids up to this waited out this output's outage
        self.replay_upto = 0
        self.was_ready = False
        #: (the last event id queued before it, the change), oldest first
        self.changes: deque[tuple[int, StateChange | DeviceRenamed]] = deque()
        #: events (and changes) the output failed on: skipped, logged once, then counted
        self.failing = Recurring(log, f"{type(output).__name__} failed on a queued event "
                                 "(skipped)")

    def take(self, row: SpooledEvent) -> None:
        changes = self.changes
        while changes and changes[0][0] < row.id:
            self._deliver(changes.popleft()[1])
        try:
            self.output.take(row, row.replayed or row.id <= self.replay_upto)
        except Exception as exc:  # one bad row must not stop the queue, nor every restart
            self.failing.occurred(f"event {row.id} on {row.topic}: {exc!r}")
        self.upto = row.id

    def change(self, mark: int, event: StateChange | DeviceRenamed) -> None:
        """A state change after the events up to ``mark``: now if the output has taken
        them, else when it has."""
        if not self.changes and self.upto >= mark:
            self._deliver(event)
        else:
            self.changes.append((mark, event))

    def caught_up(self) -> None:
        """Every queued event is taken: every change waiting is due."""
        while self.changes:
            self._deliver(self.changes.popleft()[1])

    def _deliver(self, event: StateChange | DeviceRenamed) -> None:
        try:
            self.output.device_changed(event)
        except Exception as exc:
            self.failing.occurred(f"a state change of {event.device_id}: {exc!r}")


class EventPublisher:
    """``collect`` and ``send`` are its loops (bridge tasks); ``connected``, ``disconnected``
    and ``on_ack`` are the connection's hooks."""

    def __init__(self, gateway: Gateway, spool: Spool, mqtt: MqttConnection, topics: Topics,
                 statuses: RetainedStatuses, *, gateway_id: str, commit_delay_s: float,
                 on_states_changed: Callable[[], None],
                 on_other_ack: Callable[[int], None],
                 on_failure: Callable[[str, BaseException], None],
                 on_device_change: Callable[[StateChange | DeviceRenamed], None] = (
                     lambda event: None),
                 outputs: Sequence[EventOutput] = ()) -> None:
        self.gateway = gateway
        self.subscription = gateway.subscribe()  # before the gateway starts: nothing missed
        self.spool = spool
        self.mqtt = mqtt
        self.topics = topics
        self.statuses = statuses
        self._gateway_id = gateway_id
        #: a batch of events is written at most this late (0: at once)
        self._commit_delay_s = commit_delay_s
        #: a batch held a device's state change (the device views are taken afresh)
        self._on_states_changed = on_states_changed
        #: the PUBACK of a publish that is not an event (a status, a response)
        self._on_other_ack = on_other_ack
        #: a scheduled callback failed: the bridge stops (as when a loop fails)
        self._on_failure = on_failure
        #: every device state change, in order with the events (the integrations' births)
        self._on_device_change = on_device_change
        #: the extra outputs (Sparkplug): an event leaves the queue once the broker has
        #: acknowledged it on the native fabric and every one of them has taken it
        self._cursors = [_Cursor(output) for output in outputs]
        #: acknowledged events an extra output has not taken yet: a heap of (id, event)
        #: (ids are unique in it: ``_held_ids``)
        self._held: list[tuple[int, SpooledEvent]] = []
        #: their ids: not sent natively again after a reconnect (acknowledged already)
        self._held_ids: set[int] = set()
        self.published = 0
        #: events the broker refused (MQTT 5 PUBACK reason code >= 0x80)
        self.rejected = 0
        #: events sent to the broker while they were not on disk (the queue's writes failed)
        self.not_durable = 0
        #: events in flight at most (set per connection from the broker's Receive Maximum)
        self.window = WINDOW
        self.peak_in_flight = 0
        #: the fields of each device's latest STATUS event (one dict store per event)
        self.latest_status: dict[str, dict[str, Any]] = {}
        #: events with ids up to this waited in the queue through a broker outage
        self._replay_upto = 0
        self._connected_before = False
        self._in_flight: dict[int, SpooledEvent] = {}
        self._acked: list[SpooledEvent] = []
        self._last_sent = 0
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._commit_handle: asyncio.TimerHandle | None = None
        #: the retry delay while the queue cannot be written (None while it can)
        self._retry_s: float | None = None
        self._recovery_handle: asyncio.TimerHandle | None = None
        self._spool_failing = Recurring(log, "the event queue cannot be written (events go on "
                                        "from memory, not durable)", level=logging.ERROR)
        self._holding = False
        self._stopping = False

    def _guarded(self, callback: Callable[[], None]) -> None:
        """Run a callback the loop calls (``call_soon``/``call_at``): its failure stops the
        gateway, as a loop's does, instead of a traceback from the loop and a stall."""
        try:
            callback()
        except Exception as exc:
            self._on_failure(getattr(callback, "__name__", repr(callback)), exc)

    def forget(self, device_id: str) -> None:
        """A device id left the gateway: its telemetry is not scraped any more."""
        self.latest_status.pop(device_id, None)

    # ------------------------------------------------------------------ events in

    async def collect(self) -> None:
        """Take the gateway's events in batches until cancelled."""
        subscription = self.subscription
        while True:
            self._take(await subscription.batch(_BATCH))

    def drain(self) -> list[int]:
        """The gateway has stopped: queue its last events (its devices' last state changes);
        returns the mids of the status publishes to wait for."""
        return self._take(self.subscription.take_nowait())

    def _take(self, batch: list[DeviceEvent]) -> list[int]:
        """Spool the events, publish the state changes; returns the status publishes' mids."""
        rows = []
        status_mids: list[int] = []
        gw = self._gateway_id
        latest = self.latest_status
        topics = self.topics
        spool = self.spool
        states_changed = False
        for event in batch:
            if isinstance(event, TelemetryEvent):
                seq = spool.next_seq(event.device_id)
                body = event_body(f"{gw}/{event.device_id}", event.name, event.fields,
                                  event.received_at, seq)
                rows.append((topics.device_event(event.device_id, event.name), body,
                             event.device_id, seq))
                if event.cmd_id == Command.STATUS:
                    latest[event.device_id] = event.fields
            else:
                if rows:  # the events before a state change leave before it does
                    self._queue(rows)
                    rows = []
                states_changed = True
                mid = self.statuses.take(event)
                if mid is not None:
                    status_mids.append(mid)
                if not isinstance(event, StateChange) or event.state != "connecting":
                    self._on_device_change(event)
                    mark = spool.last_id
                    for cursor in self._cursors:
                        cursor.change(mark, event)
        if states_changed:
            self._on_states_changed()
        if rows:
            self._queue(rows)
        return status_mids

    def _queue(self, rows: list[tuple[str, bytes, str, int]]) -> None:
        # Staged, sent, then written, all in this loop turn: the disk is off the latency
        # path, and no PUBACK can be handled before the rows are on disk. Whether an event
        # is replayed is decided when it is sent (``_replay_upto``).
        self.spool.append(rows, replayed=False, commit=False)
        self._publish_some()
        delay = self._commit_delay_s
        if self._retry_s is not None:
            pass  # the disk refuses writes: the retry timer writes them when it can
        elif delay > 0:
            self._schedule_commit(delay)  # acked by then: never written at all
        else:
            self._commit()
        self._backpressure()

    def _backpressure(self) -> None:
        # During an outage the queue is what absorbs events: hold reads only while every
        # output is up (one that is down, an extra one too, is an outage).
        count = self.spool.count
        up = self.mqtt.connected and all(c.output.ready for c in self._cursors)
        if up and count > SPOOL_HOLD:
            if not self._holding:
                self._holding = True
                self.gateway.hold_reading("bridge", hold=True)
        elif self._holding and (count < SPOOL_HOLD // 2 or not up):
            self._holding = False
            self.gateway.hold_reading("bridge", hold=False)

    # ------------------------------------------------------------------ events out

    async def send(self) -> None:
        """Publish what the spool holds, within the window, whenever woken; until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._publish_some()

    def _publish_some(self) -> None:
        try:
            self._publish_native()
        finally:
            self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))
            self.mqtt.flush()
        if self._cursors:
            self._catch_up()

    def _publish_native(self) -> None:
        mqtt = self.mqtt
        in_flight = self._in_flight
        spool = self.spool
        window = self.window
        while mqtt.connected and len(in_flight) < window:
            before = self._last_sent
            rows = spool.peek(before, window - len(in_flight))
            if not rows:
                return
            replay_upto = self._replay_upto
            # While the queue's writes fail, events from this id on are only in memory.
            unwritten = spool.first_unwritten if spool.error is not None else None
            # Extra outputs that have taken everything sent so far take these as they go.
            live = [c for c in self._cursors if c.upto >= before and c.output.ready]
            held = self._held_ids
            for row in rows:
                # One acknowledged before a reconnect (held for an output) is not sent again.
                if not held or row.id not in held:
                    body = mark_replayed(row.body) if row.replayed or row.id <= replay_upto \
                        else row.body  # fmt: skip
                    mid = mqtt.publish_event(row.topic.encode(), body)
                    if mid is None:
                        return
                    in_flight[mid] = row
                    if unwritten is not None and row.id >= unwritten:
                        self.not_durable += 1
                self._last_sent = row.id
                for cursor in live:
                    if row.id > cursor.upto:
                        cursor.take(row)

    def _catch_up(self) -> None:
        """Extra outputs behind the native sends (back after their own outage) or ahead of
        them (the native connection is down) read the queue themselves, a batch per turn."""
        advanced = False
        last_id = self.spool.last_id
        for cursor in self._cursors:
            if cursor.changes and cursor.upto >= last_id:
                cursor.caught_up()  # live, and every event taken
            for _ in range(_BATCH // 100):
                if not cursor.output.ready or (
                        self.mqtt.connected and cursor.upto >= self._last_sent):
                    break  # not ready, or live: it goes along with the native sends
                rows = self.spool.peek(cursor.upto, 100)
                if not rows:
                    cursor.caught_up()
                    break
                for row in rows:
                    cursor.take(row)
                    if not cursor.output.ready:
                        break
                advanced = True
            else:
                self._wake.set()  # more to catch up: the next turn goes on
        if advanced or self._held:
            self._release()

    def output_changed(self) -> None:
        """An extra output became ready (born) or stopped being ready: after an outage of
        its own, what it had not taken is marked historical; reads hold or resume."""
        for cursor in self._cursors:
            ready = cursor.output.ready
            if ready and cursor.was_ready:
                cursor.replay_upto = self.spool.last_id
            cursor.was_ready = cursor.was_ready or ready
        self._backpressure()
        self._wake.set()

    def on_ack(self, mid: int, reason: int) -> None:
        """A PUBACK (the connection's hook): an event leaves the queue; any other mid goes
        to ``on_other_ack``."""
        row = self._in_flight.pop(mid, None)
        if row is None:
            self._on_other_ack(mid)
            return
        if reason >= 0x80:
            # The broker refused it (MQTT 5 reason code, e.g. not authorized): sending it
            # again would be refused again. Counted and logged; it leaves the queue.
            self.rejected += 1
            log.warning("the broker refused an event on %s: reason code 0x%02x", row.topic,
                        reason)
        if not self._acked:
            self._loop.call_soon(self._guarded, self._flush_acks)
        self._acked.append(row)

    def _flush_acks(self) -> None:
        acked, self._acked = self._acked, []
        if acked:
            self.published += len(acked)
            if self._cursors:
                # An event stays queued until every extra output has taken it too.
                upto = min(c.upto for c in self._cursors)
                held, held_ids = self._held, self._held_ids
                dropped = self.spool.dropped_upto
                for row in acked:
                    if upto < row.id and row.id not in held_ids and row.id > dropped:
                        heapq.heappush(held, (row.id, row))
                        held_ids.add(row.id)
                acked = [row for row in acked if row.id <= upto]
            self.spool.remove(acked)
            # Deletes ride along with the next batch's commit, or go within COMMIT_DELAY_S:
            # a crash before that only sends them again (at least once).
            self._schedule_commit(COMMIT_DELAY_S)
            self._wake.set()
            self._backpressure()

    def _release(self) -> None:
        """Acknowledged events every extra output has now taken leave the queue; those the
        queue dropped meanwhile (full, while an output was down) are forgotten."""
        held = self._held
        upto = max(min(c.upto for c in self._cursors), self.spool.dropped_upto)
        done = []
        while held and held[0][0] <= upto:
            event_id, row = heapq.heappop(held)
            self._held_ids.discard(event_id)
            done.append(row)
        if done:
            self.spool.remove(done)
            self._schedule_commit(COMMIT_DELAY_S)
            self._backpressure()

    @property
    def held(self) -> int:
        """Events the broker has acknowledged that wait in the queue for an extra output."""
        return len(self._held)

    def _schedule_commit(self, delay: float) -> None:
        if self._retry_s is not None:
            return  # the disk refuses writes: the retry timer is set, with its backoff
        when = self._loop.time() + delay
        handle = self._commit_handle
        if handle is not None:
            if handle.when() <= when:
                return
            handle.cancel()
        self._commit_handle = self._loop.call_at(when, self._guarded, self._commit)

    def _commit(self) -> None:
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit_handle = None
        try:
            self.spool.commit()
        except SpoolWriteFailed as exc:
            self._spool_failed(exc.reason)
            return
        if self._retry_s is not None:
            self._spool_written()

    # ------------------------------------------------------------------ connections

    def connected(self) -> None:
        """A new connection: the window from the broker's Receive Maximum, and whatever was
        in flight on the old connection is sent again (QoS 1: at least once)."""
        # Events in flight stay within the broker's Receive Maximum, leaving room for the
        # statuses and responses that paho sends beside them.
        limit = self.mqtt.receive_maximum
        self.window = WINDOW if limit is None else max(1, min(WINDOW, limit - min(10, limit // 2)))
        self._flush_acks()
        self._in_flight.clear()
        self._last_sent = 0
        if self._connected_before:
            # Everything queued now waited out an outage; before the first connection of
            # this run events merely waited for it (a previous run's are marked by the spool).
            self._replay_upto = self.spool.last_id
        self._connected_before = True
        self._wake.set()

    def disconnected(self) -> None:
        """The connection is lost: the queue absorbs events now, reads go on."""
        self._backpressure()

    # ------------------------------------------------------------------ storage faults

    def _spool_failed(self, reason: str) -> None:
        """A write of the queue failed: degraded (loudly, once), retried with backoff."""
        if self._recovery_handle is not None:
            self._recovery_handle.cancel()  # it failed again before it counted as recovered
            self._recovery_handle = None
        retry = self._retry_s
        self._retry_s = RETRY_MIN_S if retry is None else min(RETRY_MAX_S, retry * 2)
        self._spool_failing.occurred(
            f"{reason}; {self.spool.unwritten} events only in memory (at most "
            f"{self.spool.memory_rows}); retrying in {self._retry_s:g} s")
        self.statuses.degraded(reason)
        if not self._stopping:
            self._commit_handle = self._loop.call_later(self._retry_s, self._guarded,
                                                        self._commit)

    def _spool_written(self) -> None:
        """A write succeeded after failures: commits go as usual again (the retry timer is
        done); degraded ends once writes have kept succeeding for RECOVERED_AFTER_S."""
        self._retry_s = None
        if self._recovery_handle is None and not self._stopping:
            self._recovery_handle = self._loop.call_later(RECOVERED_AFTER_S, self._guarded,
                                                          self._spool_recovered)
        self._backpressure()

    def _spool_recovered(self) -> None:
        self._recovery_handle = None
        self._spool_failing.ended(f"the queue is written again; {self.not_durable} events "
                                  "were published not durable, "
                                  f"{self.spool.dropped} dropped in all")
        self.statuses.recovered()

    # ------------------------------------------------------------------ stop

    def stopping(self) -> None:
        """The bridge is stopping: no new retry or recovery timers (``close`` commits)."""
        self._stopping = True

    def close(self) -> None:
        """The last acknowledged events out of the queue, the last commit, the file closed."""
        if self._recovery_handle is not None:
            self._recovery_handle.cancel()
        self._flush_acks()
        self._commit()
        self.spool.close()
