"""Puts every device on the fabric: events via the spool, statuses, requests, responses, stats.

Data flows one way: device events -> spool (SQLite, batched) -> publishes with a window of
unacknowledged QoS 1 messages -> broker; an event leaves the spool only on its PUBACK.
Requests are served by ``gateway.bridge.requests.RequestServer`` (a bounded intake, one
answer each). Nothing here blocks on a single message.

When the queue cannot be written (a full disk), events keep flowing to a connected broker
(counted as not durable) or wait in the spool's bounded memory; the gateway's status says
``degraded`` and writes are retried with a bounded backoff until the disk takes them again.
The bridge's loops run in a TaskGroup: if one of them (or a callback it schedules) fails,
the gateway stops with an ERROR instead of stalling silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import __version__
from gateway.app import Gateway, ReloadReport
from gateway.bridge.envelope import encode_json, event_body, mark_replayed
from gateway.bridge.metrics import DeviceView, StatsCollector, serve_metrics, status_units
from gateway.bridge.mqtt import BrokerSettings, Message, MqttConnection
from gateway.bridge.requests import RequestServer
from gateway.bridge.spool import Spool, SpooledEvent
from gateway.bridge.topics import Topics
from gateway.config import GatewayConfig
from gateway.errors import BridgeTaskFailed, SpoolWriteFailed
from gateway.frames import Command
from gateway.logs import Recurring
from gateway.session import DeviceEvent, DeviceRenamed, StateChange, TelemetryEvent

log = logging.getLogger(__name__)

WINDOW = 1000
#: While connected, serial reads pause when this many events wait to be published (the
#: broker is slower than the devices): backpressure instead of a growing queue.
SPOOL_HOLD = 4 * WINDOW
_BATCH = 1000
_SHUTDOWN_ACK_S = 3.0
#: acknowledged events are deleted from the queue at most this late
COMMIT_DELAY_S = 0.05
#: while the queue cannot be written, writes are retried after this long, doubling up to
#: the maximum: the queue resumes by itself within RETRY_MAX_S of the disk having room
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
#: the gateway says degraded until its queue has been written without a failure this long: a
#: nearly full disk takes some writes and refuses others, and must not flap the status
RECOVERED_AFTER_S = 5.0


class Bridge:
    """``async with Bridge(gateway, config):`` around ``async with gateway:``."""

    def __init__(self, gateway: Gateway, config: GatewayConfig,
                 settings: BrokerSettings | None = None) -> None:
        assert config.broker is not None or settings is not None
        broker = config.broker
        self.gateway = gateway
        self.config = config
        self.settings = settings or BrokerSettings.from_config(broker)
        self.topics = Topics(config.topic_prefix, config.gateway_id)
        self.subscription = gateway.subscribe()  # before the gateway starts: nothing missed
        self.spool = Spool(config.state_dir / "spool.db", max_messages=config.queue.max_messages,
                           max_bytes=config.queue.max_bytes)
        self.started_at = time.time()
        self.published = 0
        #: events the broker refused (MQTT 5 PUBACK reason code >= 0x80)
        self.rejected = 0
        self._statuses: dict[str, bytes] = {}
        #: ids whose retained status is to be cleared (a device removed from the
        #: configuration, an id given up by a rename): the status to publish first and have
        #: acknowledged (offline, removed), or None once only the clear is left
        self._retiring: dict[str, bytes | None] = {}
        #: unacknowledged publishes of that: mid -> (device id, what was published)
        self._retire_mids: dict[int, tuple[str, bytes | None]] = {}
        #: events with ids up to this waited in the queue through a broker outage
        self._replay_upto = 0
        self._connected_before = False
        self._in_flight: dict[int, SpooledEvent] = {}
        self._acked: list[SpooledEvent] = []
        self._last_sent = 0
        self._wake = asyncio.Event()
        #: events in flight at most (set per connection from the broker's Receive Maximum)
        self.window = WINDOW
        self.peak_in_flight = 0
        self._commit_handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._last_rx: dict[str, tuple[float, int]] = {}
        #: events sent to the broker while they were not on disk (the queue's writes failed)
        self.not_durable = 0
        #: the retry delay while the queue cannot be written (None while it can)
        self._retry_s: float | None = None
        #: why the gateway says degraded (the last write error), None while it does not
        self._degraded: str | None = None
        self._degraded_since: float | None = None
        self._recovery_handle: asyncio.TimerHandle | None = None
        self._spool_failing = Recurring(log, "the event queue cannot be written (events go on "
                                        "from memory, not durable)", level=logging.ERROR)
        #: set when a loop or a scheduled callback of the bridge fails: the gateway stops
        self._failure: asyncio.Future[BaseException] = self._loop.create_future()
        self._stopping = False
        self._group: asyncio.TaskGroup | None = None
        self.mqtt = MqttConnection(
            self.settings,
            will=(self.topics.status, b'{"state":"offline"}'),
            on_connect=self._on_connect,
            on_disconnect=self._backpressure,
            on_message=self._on_message,
            on_ack=self._on_ack,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._mqtt_task: asyncio.Task[None] | None = None
        self._final_acks: set[int] = set()
        self._holding = False
        self._stop_metrics: Callable[[], None] | None = None
        #: the stats of the last interval (what Prometheus scrapes)
        self.last_stats: dict[str, Any] | None = None
        #: each device's state for Prometheus: replaced (never changed) on every change
        self.device_views: dict[str, DeviceView] = {}
        #: the fields of each device's latest STATUS event (one dict store per event)
        self.latest_status: dict[str, dict[str, Any]] = {}
        self._final_done = asyncio.Event()
        #: the fabric's requests: intake, checks, device sends, gateway actions, answers
        self.request_server = RequestServer(gateway, config, self.topics, self.mqtt)

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Bridge:
        if self.config.metrics_address:
            collector = StatsCollector(lambda: self.last_stats, self.config.gateway_id,
                                       devices=lambda: self.device_views,
                                       telemetry=lambda: self.latest_status)
            self._stop_metrics = serve_metrics(self.config.metrics_address, collector)
            log.info("metrics on http://%s/metrics", self.config.metrics_address)
        # The connection is not in the group: when a loop fails, the group cancels the
        # others at once, and the connection must stay up to publish the offline statuses.
        self._mqtt_task = asyncio.create_task(self.mqtt.run(), name="bridge-mqtt")
        self._mqtt_task.add_done_callback(self._task_done)
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        for coro, name in ((self._collect(), "collect"), (self._publish_loop(), "publish"),
                           (self._stats_loop(), "stats"), (self.request_server.run(), "requests"),
                           (self._supervise(), "supervise")):
            task = self._group.create_task(coro, name=f"bridge-{name}")
            task.add_done_callback(self._task_done)
            self._tasks.append(task)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: Any) -> None:
        self._stopping = True
        try:
            # The gateway has stopped: its devices' last state changes are in the subscription.
            try:
                waits = self._drain_subscription()
            except Exception as error:  # the failure that stops the bridge, again: say offline
                waits = []
                log.error("the last events could not be queued at the stop: %r", error)
            if self.mqtt.connected:
                waits.append(self.mqtt.publish(self.topics.status, b'{"state":"offline"}',
                                               retain=True))
                self._final_done.clear()
                self._final_acks = {mid for mid in waits if mid is not None}
                if self._final_acks:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_SHUTDOWN_ACK_S):
                            await self._final_done.wait()
                await self.mqtt.disconnect()
        finally:
            await self._stop_tasks(exc_type, exc, tb)

    async def _stop_tasks(self, exc_type: type[BaseException] | None,
                          exc: BaseException | None, tb: Any) -> None:
        """Cancel and await every task; raise the failures of the group's, if any."""
        assert self._group is not None
        assert self._mqtt_task is not None
        for task in [self._mqtt_task, *self._tasks]:
            task.cancel()
        try:
            await asyncio.gather(self._mqtt_task, self.request_server.close(),
                                 return_exceptions=True)
            # A CancelledError may be the group's own (a loop failed): the group takes it and
            # raises the failure instead. Any other exception of the body passes through.
            if exc_type is asyncio.CancelledError:
                await self._group.__aexit__(exc_type, exc, tb)
            else:
                await self._group.__aexit__(None, None, None)
        finally:
            if self._recovery_handle is not None:
                self._recovery_handle.cancel()
            self._flush_acks()
            self._commit()
            self.spool.close()
            if self._stop_metrics is not None:
                self._stop_metrics()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is None:
            exc = RuntimeError("it returned, but it should run until the bridge stops")
        self._fail(task.get_name(), exc)

    def _fail(self, where: str, exc: BaseException) -> None:
        """A loop or callback of the bridge failed: ERROR, and the gateway stops (exit 1)."""
        log.error("%s failed: %r; the gateway stops (a restart starts it afresh)", where, exc,
                  exc_info=exc)
        if not self._failure.done():
            self._failure.set_result(BridgeTaskFailed(where, exc))

    async def _supervise(self) -> None:
        """Raises the first failure in the group: the group stops the gateway with it."""
        # Shielded: the group cancelling this task must not cancel the future with it.
        failure = await asyncio.shield(self._failure)
        raise failure

    def _guarded(self, callback: Callable[[], None]) -> None:
        """Run a callback the loop calls (``call_soon``/``call_at``): its failure stops the
        gateway, as a loop's does, instead of a traceback from the loop and a stall."""
        try:
            callback()
        except Exception as exc:
            self._fail(getattr(callback, "__name__", repr(callback)), exc)


    # ------------------------------------------------------------------ events in

    async def _collect(self) -> None:
        subscription = self.subscription
        while True:
            self._take(await subscription.batch(_BATCH))

    def _drain_subscription(self) -> list[int | None]:
        return self._take(self.subscription.take_nowait())

    def _take(self, batch: list[DeviceEvent]) -> list[int | None]:
        """Spool the events, publish the state changes; returns the status publishes' mids."""
        rows = []
        status_mids: list[int | None] = []
        gw = self.config.gateway_id
        latest = self.latest_status
        states_changed = False
        for event in batch:
            if isinstance(event, TelemetryEvent):
                seq = self.spool.next_seq(event.device_id)
                body = event_body(f"{gw}/{event.device_id}", event.name, event.fields,
                                  event.received_at, seq)
                rows.append((self.topics.device_event(event.device_id, event.name), body,
                             event.device_id, seq))
                if event.cmd_id == Command.STATUS:
                    latest[event.device_id] = event.fields
            elif isinstance(event, DeviceRenamed):
                # The old id is gone: clear its retained status (now, or on the next connect).
                states_changed = True
                self._forget(event.old_id)
                self._retiring[event.old_id] = None
                self._retire(event.old_id)
            elif isinstance(event, StateChange):
                states_changed = True
                if event.state == "connecting":
                    continue
                body = encode_json({"state": event.state, "reason": event.reason,
                                    "since": event.since, **event.facts})
                if event.state == "offline" and event.reason == "removed":
                    # Offline (removed) first; cleared once the broker has acknowledged that.
                    self._forget(event.device_id)
                    self._retiring[event.device_id] = body
                    self._retire(event.device_id)
                    continue
                self._statuses[event.device_id] = body
                self._retiring.pop(event.device_id, None)
                status_mids.append(self.mqtt.publish(
                    self.topics.device_status(event.device_id), body, retain=True,
                    resend=False))
        if states_changed:
            self._refresh_device_views()
        if rows:
            # Staged, sent, then written, all in this loop turn: the disk is off the
            # latency path, and no PUBACK can be handled before the rows are on disk.
            # Whether an event is replayed is decided when it is sent (``_replay_upto``).
            self.spool.append(rows, replayed=False, commit=False)
            self._publish_some()
            delay = self.config.queue.commit_delay_ms / 1000.0
            if self._retry_s is not None:
                pass  # the disk refuses writes: the retry timer writes them when it can
            elif delay > 0:
                self._schedule_commit(delay)  # acked by then: never written at all
            else:
                self._commit()
            self._backpressure()
        return status_mids

    def _forget(self, device_id: str) -> None:
        """A device id leaves this gateway: nothing of it is republished or scraped."""
        self._statuses.pop(device_id, None)
        self.request_server.forget(device_id)
        self.latest_status.pop(device_id, None)

    def _retire(self, device_id: str) -> None:
        """Publish the next step of clearing a device id's retained status: its last status
        if still unacknowledged, else the clear (an empty retained message). Not connected:
        the next connection does it."""
        pending = self._retiring[device_id]
        mid = self.mqtt.publish(self.topics.device_status(device_id), pending or b"",
                                retain=True, resend=False)
        if mid is not None:
            self._retire_mids[mid] = (device_id, pending)

    def _retire_acked(self, device_id: str, published: bytes | None) -> None:
        if device_id not in self._retiring or self._retiring[device_id] is not published:
            return  # the id came back (or retires anew) since: that publish is history
        if published is None:
            del self._retiring[device_id]  # cleared
        else:
            self._retiring[device_id] = None
            self._retire(device_id)

    def _refresh_device_views(self) -> None:
        """A new snapshot of every device's state for scrapes (a state changed)."""
        self.device_views = {name: DeviceView(str(session.state), status_units(session.profile))
                             for name, session in self.gateway.devices.items()}

    def _backpressure(self) -> None:
        # During an outage the queue is what absorbs events: hold reads only while connected.
        count = self.spool.count
        if self.mqtt.connected and count > SPOOL_HOLD:
            if not self._holding:
                self._holding = True
                self.gateway.hold_reading("bridge", hold=True)
        elif self._holding and (count < SPOOL_HOLD // 2 or not self.mqtt.connected):
            self._holding = False
            self.gateway.hold_reading("bridge", hold=False)

    # ------------------------------------------------------------------ events out

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._publish_some()

    def _publish_some(self) -> None:
        mqtt = self.mqtt
        in_flight = self._in_flight
        spool = self.spool
        try:
            window = self.window
            while mqtt.connected and len(in_flight) < window:
                rows = spool.peek(self._last_sent, window - len(in_flight))
                if not rows:
                    return
                replay_upto = self._replay_upto
                # While the queue's writes fail, events from this id on are only in memory.
                unwritten = spool.first_unwritten if spool.error is not None else None
                for row in rows:
                    body = mark_replayed(row.body) if row.replayed or row.id <= replay_upto \
                        else row.body  # fmt: skip
                    mid = mqtt.publish_event(row.topic.encode(), body)
                    if mid is None:
                        return
                    in_flight[mid] = row
                    self._last_sent = row.id
                    if unwritten is not None and row.id >= unwritten:
                        self.not_durable += 1
        finally:
            self.peak_in_flight = max(self.peak_in_flight, len(in_flight))
            mqtt.flush()

    def _on_ack(self, mid: int, reason: int) -> None:
        row = self._in_flight.pop(mid, None)
        if row is not None and reason >= 0x80:
            # The broker refused it (MQTT 5 reason code, e.g. not authorized): sending it
            # again would be refused again. Counted and logged; it leaves the queue.
            self.rejected += 1
            log.warning("the broker refused an event on %s: reason code 0x%02x", row.topic,
                        reason)
        if row is None:
            retiring = self._retire_mids.pop(mid, None)
            if retiring is not None:
                self._retire_acked(*retiring)
            if mid in self._final_acks:
                self._final_acks.discard(mid)
                if not self._final_acks:
                    self._final_done.set()
            return
        if not self._acked:
            self._loop.call_soon(self._guarded, self._flush_acks)
        self._acked.append(row)

    def _flush_acks(self) -> None:
        acked, self._acked = self._acked, []
        if acked:
            self.spool.remove(acked)
            self.published += len(acked)
            # Deletes ride along with the next batch's commit, or go within COMMIT_DELAY_S:
            # a crash before that only sends them again (at least once).
            self._schedule_commit(COMMIT_DELAY_S)
            self._wake.set()
            self._backpressure()

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
        entering = self._degraded is None
        self._degraded = reason
        if entering:
            self._degraded_since = time.time()
            self.mqtt.publish(self.topics.status, self._status_body(), retain=True,
                              resend=False)
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
        self._degraded = None
        self._degraded_since = None
        self._spool_failing.ended(f"the queue is written again; {self.not_durable} events "
                                  "were published not durable, "
                                  f"{self.spool.dropped} dropped in all")
        self.mqtt.publish(self.topics.status, self._status_body(), retain=True, resend=False)

    def _status_body(self) -> bytes:
        """The gateway's retained status: online, or degraded while the queue cannot be
        written (still serving: consumers treat anything but offline as up)."""
        body: dict[str, Any] = {"state": "online", "version": __version__,
                                "started_at": self.started_at}
        if self._degraded is not None:
            body.update(state="degraded", reason="spool_error", error=self._degraded,
                        since=self._degraded_since)
        return json.dumps(body).encode()

    def _on_connect(self) -> None:
        # Events in flight stay within the broker's Receive Maximum, leaving room for the
        # statuses and responses that paho sends beside them.
        limit = self.mqtt.receive_maximum
        self.window = WINDOW if limit is None else max(1, min(WINDOW, limit - min(10, limit // 2)))
        # Whatever was in flight on the old connection is sent again (QoS 1: at least once).
        self._flush_acks()
        self._in_flight.clear()
        self._last_sent = 0
        if self._connected_before:
            # Everything queued now waited out an outage; before the first connection of
            # this run events merely waited for it (a previous run's are marked by the spool).
            self._replay_upto = self.spool.last_id
        self._connected_before = True
        mqtt = self.mqtt
        # Statuses are published afresh on every connection: none is sent again by paho.
        mqtt.publish(self.topics.status, self._status_body(), retain=True, resend=False)
        for device_id, body in self._statuses.items():
            mqtt.publish(self.topics.device_status(device_id), body, retain=True, resend=False)
        self._retire_mids.clear()
        for device_id in self._retiring:
            self._retire(device_id)
        mqtt.subscribe([self.topics.device_requests_filter, self.topics.gateway_requests])
        self._wake.set()

    # ------------------------------------------------------------------ requests

    def _on_message(self, message: Message) -> None:
        self.request_server.take(message)

    @property
    def reloader(self) -> Callable[[], Awaitable[ReloadReport]] | None:
        """Set by ``gateway.reload.Reloader``: re-read the configuration file and apply it
        (the fabric's ``reload``)."""
        return self.request_server.reloader

    @reloader.setter
    def reloader(self, reload: Callable[[], Awaitable[ReloadReport]] | None) -> None:
        self.request_server.reloader = reload

    def apply(self, config: GatewayConfig) -> None:
        """Take a reloaded configuration (the gateway's, after its own ``apply``): access
        rules, rate limits, request limits and the stats interval change at once."""
        self.config = config
        self.request_server.apply(config)

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """The ``{p}/{gw}/stats`` body."""
        now = self._loop.time()
        devices = {}
        for name, session in self.gateway.devices.items():
            counters = session.counters()
            last = self._last_rx.get(name)
            rx = counters["rx_frames"]
            rate = (rx - last[1]) / (now - last[0]) if last and now > last[0] else 0.0
            self._last_rx[name] = (now, rx)
            devices[name] = {key: counters[key] for key in (
                "state", "rx_frames", "tx_frames", "rx_bytes", "checksum_errors",
                "discarded_bytes", "timeouts", "retries", "queue_depth", "last_seen")}
            devices[name]["rx_fps"] = round(rate, 1)
            devices[name].update((k, v) for k, v in counters.items() if k.startswith("link_"))
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "devices": devices,
            "mqtt": {
                "connected": self.mqtt.connected,
                "published": self.published,
                "spooled": self.spool.count,
                "dropped": self.spool.dropped,
                "not_durable": self.not_durable,
                "spool_error": self._degraded,
                "rejected": self.rejected,
                "reconnects": self.mqtt.reconnects,
                **self.request_server.counters(),
            },
        }

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            self.last_stats = stats = self.stats()
            self._refresh_device_views()  # also devices that have not changed state yet
            self.mqtt.publish(self.topics.stats, encode_json(stats), qos=0, retain=True)
