"""Puts every device on the fabric: one connection to the broker and the bridge's jobs on it,
their loops in one TaskGroup, stopped in order.

The jobs, one module each: ``publisher`` (events through the spool to MQTT, the window,
PUBACKs, backpressure, the queue's write failures), ``statuses`` (the gateway's and devices'
retained statuses), ``requests`` (the request server) with ``actions`` (the gateway-level
actions), and ``stats``; the opt-in integrations beside the native fabric, from the same
events: ``homeassistant`` (MQTT discovery, on the native connection) and ``sparkplug`` (a
Sparkplug B edge node on a connection of its own, an extra output of the publisher: one
queue for both). This module only builds them from the configuration, wires the
connections' hooks to them and owns their lifetime.

If a loop (or a callback it schedules) fails, the gateway stops with an ERROR instead of
stalling silently. At a stop the devices' last statuses and the gateway's ``offline`` are
published, and their PUBACKs awaited for a moment, before the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.app import Gateway, ReloadReport
from gateway.bridge.actions import GatewayActions
from gateway.bridge.claim import Claimant, ClaimWatch, ProbeResult, new_instance
from gateway.bridge.mqtt import BrokerSettings, Message, MqttConnection
from gateway.bridge.publisher import EventOutput, EventPublisher
from gateway.bridge.requests import RequestServer
from gateway.bridge.spool import Spool
from gateway.bridge.stats import StatsReporter
from gateway.bridge.statuses import RetainedStatuses, offline_body
from gateway.bridge.topics import Topics
from gateway.config import GatewayConfig
from gateway.errors import BridgeTaskFailed, GatewayIdInUse
from gateway.session import DeviceRenamed, StateChange

if TYPE_CHECKING:
    from gateway.bridge.homeassistant import HomeAssistantDiscovery
    from gateway.bridge.sparkplug import SparkplugNode

log = logging.getLogger(__name__)

#: at a stop, the last statuses' PUBACKs are awaited this long at most
_SHUTDOWN_ACK_S = 3.0


class Bridge:
    """``async with Bridge(gateway, config):`` around ``async with gateway:``."""

    def __init__(self, gateway: Gateway, config: GatewayConfig,
                 settings: BrokerSettings | None = None, *,
                 outputs: Sequence[EventOutput] = (), probed: ProbeResult | None = None) -> None:
        """``outputs``: extra outputs of the queue besides the configured integrations;
        ``probed``: what ``claim.probe`` found before (the service probes, then builds this)."""
        broker = settings or config.broker
        assert broker is not None
        self.gateway = gateway
        self.config = config
        self.topics = Topics(config.topic_prefix, config.gateway_id)
        #: the broker's settings: the configuration's unless the caller gives its own
        self.settings = broker
        self.spool = Spool(config.state_dir / "spool.db", max_messages=config.queue.max_messages,
                           max_bytes=config.queue.max_bytes)
        self._loop = asyncio.get_running_loop()
        #: set when a loop or a scheduled callback of the bridge fails: the gateway stops
        self._failure: asyncio.Future[BaseException] = self._loop.create_future()
        self._stopping = False
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._mqtt_task: asyncio.Task[None] | None = None
        #: at a stop: the mids of the last statuses, and whether the broker has acked them all
        self._final_acks: set[int] = set()
        self._final_done = asyncio.Event()

        instance, started_at = new_instance(), time.time()
        self.mqtt = MqttConnection(self.settings,
                                   will=(self.topics.status, offline_body(instance, started_at)))
        self.statuses = RetainedStatuses(self.mqtt, self.topics, on_forget=self._forget,
                                         instance=instance, started_at=started_at)
        #: no other live run with this gateway id: watched on the own status topic
        self.claim = ClaimWatch(self.topics, lambda: self.mqtt.url, Claimant(instance, started_at),
                                republish=self.statuses.republish, lost=self._refuse,
                                dead=probed.dead if probed is not None else None)
        #: this run gave the id up to another (claim.py): it stops without a last status
        self._refused = False
        #: the fabric's requests: intake, checks, device sends, gateway actions, answers
        self.actions = GatewayActions(gateway)
        self.request_server = RequestServer(gateway, config, self.topics, self.mqtt,
                                            self.actions)
        # The integrations, each imported only when it is enabled (Sparkplug's protobuf is
        # not loaded by a gateway that does not speak it).
        self.homeassistant: HomeAssistantDiscovery | None = None
        if config.homeassistant.enabled:
            from gateway.bridge.homeassistant import HomeAssistantDiscovery  # noqa: PLC0415
            self.homeassistant = HomeAssistantDiscovery(gateway, self.mqtt, self.topics,
                                                        config.homeassistant, config)
        self.sparkplug: SparkplugNode | None = None
        outputs = list(outputs)
        if config.sparkplug.enabled:
            from gateway.bridge.sparkplug import SparkplugNode  # noqa: PLC0415
            self.sparkplug = SparkplugNode(
                gateway, config, self.settings, submit=self.request_server.submit,
                stats=self._node_stats,
                on_change=self._output_changed, on_failure=self._fail)
            outputs.append(self.sparkplug)
        self.publisher = EventPublisher(
            gateway, self.spool, self.mqtt, self.topics, self.statuses,
            gateway_id=config.gateway_id, commit_delay_s=config.queue.commit_delay_s,
            on_states_changed=self._states_changed, on_other_ack=self._on_other_ack,
            on_failure=self._fail, on_device_change=self._device_changed, outputs=outputs)
        integrations = {}
        if self.homeassistant is not None:
            integrations["homeassistant"] = self.homeassistant.counters
        if self.sparkplug is not None:
            integrations["sparkplug"] = self.sparkplug.counters
        self.stats_reporter = StatsReporter(
            gateway, config, mqtt=self.mqtt, topics=self.topics, publisher=self.publisher,
            statuses=self.statuses, request_server=self.request_server,
            integrations=integrations)
        # The connection's hooks: each goes straight to the job it is for.
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self.publisher.disconnected
        self.mqtt.on_message = self._on_message
        self.mqtt.on_ack = self.publisher.on_ack
        #: the Sparkplug node's connection, run beside the native one
        self._sparkplug_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Bridge:
        self.stats_reporter.serve_metrics()
        # The connection is not in the group: when a loop fails, the group cancels the
        # others at once, and the connection must stay up to publish the offline statuses.
        self._mqtt_task = asyncio.create_task(self.mqtt.run(), name="bridge-mqtt")
        self._mqtt_task.add_done_callback(self._task_done)
        if self.sparkplug is not None:  # outside the group too: its NDEATH goes at the stop
            self._sparkplug_task = asyncio.create_task(self.sparkplug.run(),
                                                       name="bridge-sparkplug")
            self._sparkplug_task.add_done_callback(self._task_done)
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        for coro, name in ((self.publisher.collect(), "collect"),
                           (self.publisher.send(), "publish"),
                           (self.stats_reporter.run(), "stats"),
                           (self.request_server.run(), "requests"),
                           (self._supervise(), "supervise")):
            task = self._group.create_task(coro, name=f"bridge-{name}")
            task.add_done_callback(self._task_done)
            self._tasks.append(task)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: Any) -> None:
        self._stopping = True
        self.publisher.stopping()
        try:
            if self._refused:
                # The id is another run's: its statuses stay as they are (the last events
                # wait in the queue for a run under a free id).
                await self.mqtt.disconnect()
            # The gateway has stopped: its devices' last state changes are in the subscription.
            try:
                waits = self.publisher.drain()
            except Exception as error:  # the failure that stops the bridge, again: say offline
                waits = []
                log.error("the last events could not be queued at the stop: %r", error)
            if self.mqtt.connected:
                offline = self.statuses.offline()
                if offline is not None:
                    waits.append(offline)
                self._final_done.clear()
                self._final_acks = set(waits)
                if self._final_acks:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_SHUTDOWN_ACK_S):
                            await self._final_done.wait()
                await self.mqtt.disconnect()
            if self.sparkplug is not None:
                await self.sparkplug.stop()
        finally:
            await self._stop_tasks(exc_type, exc, tb)

    async def _stop_tasks(self, exc_type: type[BaseException] | None,
                          exc: BaseException | None, tb: Any) -> None:
        """Cancel and await every task; raise the failures of the group's, if any."""
        assert self._group is not None
        assert self._mqtt_task is not None
        connections = [self._mqtt_task]
        if self._sparkplug_task is not None:
            connections.append(self._sparkplug_task)
        for task in [*connections, *self._tasks]:
            task.cancel()
        try:
            await asyncio.gather(*connections, self.request_server.close(),
                                 return_exceptions=True)
            # A CancelledError may be the group's own (a loop failed): the group takes it and
            # raises the failure instead. Any other exception of the body passes through.
            if exc_type is asyncio.CancelledError:
                await self._group.__aexit__(exc_type, exc, tb)
            else:
                await self._group.__aexit__(None, None, None)
        finally:
            self.publisher.close()
            self.stats_reporter.close()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if self._failure.done() and exc is self._failure.result():
            return  # the supervisor raising the failure it was given: said already
        if exc is None:
            exc = RuntimeError("it returned, but it should run until the bridge stops")
        self._fail(task.get_name(), exc)

    def _fail(self, where: str, exc: BaseException) -> None:
        """A loop or callback of the bridge failed: ERROR, and the gateway stops (exit 1)."""
        log.error("%s failed: %r; the gateway stops (a restart starts it afresh)", where, exc,
                  exc_info=exc)
        if not self._failure.done():
            self._failure.set_result(BridgeTaskFailed(where, exc))

    def _refuse(self, error: GatewayIdInUse) -> None:
        """Another run holds the gateway id and started first: this one stops (exit 2)."""
        log.error("another gateway holds gateway_id %r on %s: stopping",
                  self.config.gateway_id, self.mqtt.url)
        self._refused = True
        if not self._failure.done():
            self._failure.set_result(error)

    async def _supervise(self) -> None:
        """Raises the first failure in the group: the group stops the gateway with it."""
        # Shielded: the group cancelling this task must not cancel the future with it.
        failure = await asyncio.shield(self._failure)
        raise failure

    # ------------------------------------------------------------------ wiring

    def _on_connect(self) -> None:
        self.publisher.connected()
        self.claim.connected()
        # One SUBSCRIBE, before the statuses go: what the broker holds on the own status
        # topic comes back before this run's status does (claim.py).
        topics = [self.topics.status, self.topics.device_requests_filter,
                  self.topics.gateway_requests, *self.topics.plain_command_filters]
        if self.homeassistant is not None:
            topics += self.homeassistant.subscriptions
        self.mqtt.subscribe(topics)
        self.statuses.connected()
        if self.homeassistant is not None:
            self.homeassistant.connected()

    def _on_message(self, message: Message) -> None:
        if message.topic == self.topics.status:
            self.claim.on_message(message)
            return
        if self.homeassistant is not None and self.homeassistant.on_message(message):
            return  # Home Assistant's birth: it re-announces
        self.request_server.take(message)

    def _node_stats(self) -> dict[str, Any]:
        """The stats for a Sparkplug NBIRTH: the last interval's, or (before the first
        interval is over) taken now."""
        return self.stats_reporter.last_stats or self.stats_reporter.stats()

    def _output_changed(self) -> None:
        self.publisher.output_changed()  # built after the node: looked up when called

    def _device_changed(self, event: StateChange | DeviceRenamed) -> None:
        """A device's state change, in order with its events: Home Assistant's configs (the
        publisher hands it to each extra output where that output is in the queue)."""
        if self.homeassistant is not None:
            self.homeassistant.take(event)

    def _on_other_ack(self, mid: int) -> None:
        """The PUBACK of a publish that is not an event: a status's, a discovery config's."""
        self.statuses.acked(mid)
        if self.homeassistant is not None:
            self.homeassistant.acked(mid)
        if mid in self._final_acks:
            self._final_acks.discard(mid)
            if not self._final_acks:
                self._final_done.set()

    def _forget(self, device_id: str) -> None:
        """A device id leaves this gateway: nothing of it is rate limited or scraped."""
        self.request_server.forget(device_id)
        self.publisher.forget(device_id)

    def _states_changed(self) -> None:
        self.stats_reporter.refresh_device_views()

    # ------------------------------------------------------------------ public

    @property
    def reloader(self) -> Callable[[], Awaitable[ReloadReport]] | None:
        """Set by ``gateway.reload.Reloader``: re-read the configuration file and apply it
        (the fabric's ``reload``)."""
        return self.actions.reloader

    @reloader.setter
    def reloader(self, reload: Callable[[], Awaitable[ReloadReport]] | None) -> None:
        self.actions.reloader = reload

    def apply(self, config: GatewayConfig) -> None:
        """Take a reloaded configuration (the gateway's, after its own ``apply``): access
        rules, rate limits, request limits and the stats interval change at once."""
        self.config = config
        self.request_server.apply(config)
        self.stats_reporter.apply(config)
        if self.homeassistant is not None:
            self.homeassistant.apply(config)

    def stats(self) -> dict[str, Any]:
        """The ``{p}/{gw}/stats`` body."""
        return self.stats_reporter.stats()

    @property
    def last_stats(self) -> dict[str, Any] | None:
        """The stats of the last interval (what Prometheus scrapes)."""
        return self.stats_reporter.last_stats

    @property
    def published(self) -> int:
        """Events the broker has acknowledged."""
        return self.publisher.published

    @property
    def not_durable(self) -> int:
        """Events sent to the broker while they were not on disk."""
        return self.publisher.not_durable

    @property
    def window(self) -> int:
        """Events in flight at most on this connection."""
        return self.publisher.window

    @property
    def peak_in_flight(self) -> int:
        """The most events that were in flight at once."""
        return self.publisher.peak_in_flight
