"""The supervisor: one TaskGroup wiring configured ports to device sessions and subscribers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gateway.config import GatewayConfig, PortConfig
from gateway.errors import GatewayError
from gateway.nodeids import NodeIdStore
from gateway.ports import GlobWatcher, PortRunner, device_id_for_match, unique_device_id
from gateway.session import DeviceEvent, DeviceSession, DeviceSettings, DeviceState
from gateway.settings import reload_fields

log = logging.getLogger(__name__)

#: Serial reads pause when a subscriber has this many events waiting, resume below half.
EVENT_HIGH_WATER = 10_000


#: settings a reload cannot change (they are kept, and reported), as declared
RESTART_ONLY = reload_fields(GatewayConfig, "restart")
#: port settings a reload changes without restarting the port, as declared
LIVE_PORT_FIELDS = reload_fields(PortConfig, "live")


class UnknownDevice(GatewayError):
    """No device has this id."""


@dataclass
class ReloadReport:
    """What a reload changed, by port name, and what needs a restart."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        parts = [f"{what} {', '.join(names)}" for what, names in asdict(self).items() if names]
        return "; ".join(parts) or "nothing changed"


class EventSubscription:
    """A stream of device events, in arrival order per device: iterate over it, or take
    them in batches (``batch``, ``take_nowait``). Taking is what frees the gateway's serial
    reads when this subscriber was far behind (the backpressure is accounted here, never by
    the consumer)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._queue: asyncio.Queue[DeviceEvent] = asyncio.Queue()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> DeviceEvent:
        event = await self._queue.get()
        self._gateway._consumed()
        return event

    @property
    def waiting(self) -> int:
        """Events delivered to this subscription and not taken yet."""
        return self._queue.qsize()

    def get_nowait(self) -> DeviceEvent:
        """The next waiting event; ``asyncio.QueueEmpty`` if none."""
        event = self._queue.get_nowait()
        self._gateway._consumed()
        return event

    async def batch(self, limit: int) -> list[DeviceEvent]:
        """The waiting events, at least one (waits for it) and at most ``limit``: a consumer
        handles a burst in one go, not one loop turn per event."""
        events = [await self._queue.get()]
        self._fill(events, limit)
        return events

    def take_nowait(self, limit: int | None = None) -> list[DeviceEvent]:
        """The waiting events, at most ``limit`` (all if None); empty if none wait."""
        events: list[DeviceEvent] = []
        self._fill(events, limit)
        return events

    def _fill(self, events: list[DeviceEvent], limit: int | None) -> None:
        queue = self._queue
        while limit is None or len(events) < limit:
            try:
                events.append(queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        self._gateway._consumed()  # once per batch: the check walks every subscriber

    def close(self) -> None:
        """Stop receiving events."""
        self._gateway._unsubscribe(self)


class Gateway:
    """Runs every configured port and its device sessions: ``async with Gateway(config)``."""

    def __init__(self, config: GatewayConfig, *, event_high_water: int = EVENT_HIGH_WATER) -> None:
        self.config = config
        self.event_high_water = event_high_water
        self.devices: dict[str, DeviceSession] = {}
        self.runners: dict[str, PortRunner] = {}
        self._profiles = config.profiles()
        self._subscribers: list[EventSubscription] = []
        self._paused = False
        self._backlogged = False
        self._holds: set[str] = set()
        self._port_tasks: dict[str, list[asyncio.Task[Any]]] = {}
        self._group: asyncio.TaskGroup | None = None
        self.node_ids: NodeIdStore | None = None
        self._node_ids_writer: asyncio.Task[None] | None = None
        #: every session by the id from its path, kept while it is named ``uid-...``, so
        #: the id stays its own to go back to
        self._path_ids: dict[str, DeviceSession] = {}
        #: ports (path, config) whose device id is taken, by that id: started when it frees
        self._waiting: dict[str, list[tuple[str, PortConfig]]] = {}

    async def __aenter__(self) -> Gateway:
        self.node_ids = NodeIdStore(self.config.state_dir / "node_ids.json",
                                    in_use=self._online_uids)
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._node_ids_writer = self._group.create_task(self.node_ids.run(),
                                                        name="node-ids-writer")
        for port in self.config.ports:
            self._start_port(port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for tasks in self._port_tasks.values():
            for task in tasks:
                task.cancel()
        assert self._group is not None
        assert self._node_ids_writer is not None
        self._node_ids_writer.cancel()
        try:
            await self._group.__aexit__(None, None, None)
        finally:
            assert self.node_ids is not None
            self.node_ids.close()  # the mappings the writer had not written yet

    def _online_uids(self) -> set[str]:
        """The uids of the devices online now (their node ids are never reused)."""
        return {session.hello["uid"] for session in self.devices.values()
                if session.state is DeviceState.ONLINE and "uid" in session.hello}

    def _start_port(self, port: PortConfig) -> None:
        if port.is_glob:
            watcher = GlobWatcher(port.path, lambda path, p=port: self._start_device(
                self._glob_device_id(p, path), path, p))
            watcher.scan()
            self._spawn(watcher.run(), f"glob-{port.name}", port.name)
        else:
            self._start_device(port.name, port.path, port)

    async def _stop_port(self, name: str, reason: str) -> None:
        """Stop a port's tasks; its devices go offline with ``reason`` and are forgotten."""
        for runner in self.runners.values():
            if runner.session.settings.port_name == name:
                runner.stop_reason = reason
        tasks = self._port_tasks.pop(name, [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for waiting in self._waiting.values():
            waiting[:] = [(path, port) for path, port in waiting if port.name != name]
        freed = []
        for device_id, session in list(self.devices.items()):
            if session.settings.port_name == name:
                session.retire(reason)
                del self.devices[device_id]
                self.runners.pop(device_id, None)
                self._path_ids.pop(session.path_id, None)
                freed += [device_id, session.path_id]
        for device_id in freed:
            self._release(device_id)

    def _spawn(self, coro: Any, name: str, port_name: str) -> None:
        assert self._group is not None
        task = self._group.create_task(coro, name=name)
        self._port_tasks.setdefault(port_name, []).append(task)

    async def apply(self, config: GatewayConfig) -> ReloadReport:
        """Change to ``config`` while running: ports added, removed or restarted (their
        devices go offline with ``removed``/``reconfigured`` and come back); access rules
        (``allow``, ``rate_limit``) change in place. Settings that only a restart can change
        (gateway id, state dir, topic prefix, broker, queue, metrics) keep their old values
        and are listed in the report. ``ProfileError`` if the new profiles do not load."""
        old = self.config
        report = ReloadReport()
        report.needs_restart = [key for key in RESTART_ONLY
                                if getattr(old, key) != getattr(config, key)]
        config = replace(config, **{key: getattr(old, key) for key in report.needs_restart})
        profiles_changed = config.profiles_dir != old.profiles_dir
        profiles = config.profiles() if profiles_changed else self._profiles
        for port in config.ports:
            profiles.get(port.profile)  # every port's profile exists, before anything changes
        before = {p.name: p for p in old.ports}
        after = {p.name: p for p in config.ports}
        self.config, self._profiles = config, profiles
        for name in before.keys() - after.keys():
            await self._stop_port(name, "removed")
            report.removed.append(name)
        for name, port in after.items():
            previous = before.get(name)
            if previous is None:
                self._start_port(port)
                report.added.append(name)
            elif profiles_changed or replace(
                    previous, **{k: getattr(port, k) for k in LIVE_PORT_FIELDS}) != port:
                await self._stop_port(name, "reconfigured")
                self._start_port(port)
                report.restarted.append(name)
            elif previous != port:
                report.updated.append(name)
        log.info("configuration reloaded: %s", report.summary())
        return report

    def _id_taken(self, device_id: str) -> bool:
        return device_id in self.devices or device_id in self._path_ids

    def _glob_device_id(self, port: PortConfig, path: str) -> str:
        """A glob match's id: from its path below the glob's fixed directory; with a hash
        of the path if that is taken, by another match or as a configured port's name."""
        device_id = device_id_for_match(port.name, port.path, path)
        names = {p.name for p in self.config.ports if not p.is_glob}
        if self._id_taken(device_id) or device_id in names:
            device_id = unique_device_id(device_id, path)
        return device_id

    def _release(self, device_id: str) -> None:
        """``device_id`` may be free now: start the first port waiting on it."""
        waiting = self._waiting.get(device_id)
        if self._id_taken(device_id) or not waiting:
            if not waiting:
                self._waiting.pop(device_id, None)
            return
        path, port = waiting.pop(0)
        log.info("%s: the device id is free now; starting %s", device_id, path)
        self._start_device(device_id, path, port)

    def _start_device(self, device_id: str, path: str, port: PortConfig) -> None:
        if self._id_taken(device_id):
            holder = self.devices.get(device_id) or self._path_ids[device_id]
            log.error("%s: device id in use by %s; %s (port %s) starts when it is free",
                      device_id, holder.port, path, port.name)
            self._waiting.setdefault(device_id, []).append((path, port))
            return
        assert self.node_ids is not None
        settings = DeviceSettings(
            profile=self._profiles.get(port.profile),
            session=port.session,
            transactions=port.transactions,
            port_name=port.name,
            id_from_uid=port.is_glob,
            frames=port.link.frames,
        )
        session = DeviceSession(device_id, path, settings, self.node_ids, self._emit,
                                claim_id=self._claim_id)
        runner = PortRunner(path, port.serial, session, port.link)
        self.devices[device_id] = session
        self._path_ids[device_id] = session
        self.runners[device_id] = runner
        self._spawn(session.run(), f"session-{device_id}", port.name)
        self._spawn(runner.run(), f"port-{device_id}", port.name)

    def _claim_id(self, session: DeviceSession, device_id: str) -> None:
        """A glob port's device said HELLO: it becomes ``uid-<hex>`` unless that id is online
        elsewhere. An offline session holding it (the same device, replugged under another
        path) gives it up and goes back to its path id."""
        holder = self.devices.get(device_id)
        if holder is session:
            return
        if holder is not None and holder.device_id == holder.path_id:
            log.error("%s: uid id %s is a configured port's name; this device stays %s",
                      session.port, device_id, session.device_id)
            return
        if holder is not None:
            if holder.state is DeviceState.ONLINE:
                log.error("%s: uid id %s is online on %s already (two devices with one uid?); "
                          "this one stays %s", session.port, device_id, holder.port,
                          session.path_id)
                if session.device_id != session.path_id:
                    self._move(session, session.path_id)  # its old uid id is not its own now
                return
            self._move(holder, holder.path_id)
        self._move(session, device_id)

    def _move(self, session: DeviceSession, device_id: str) -> None:
        other = self.devices.get(device_id)
        if other is not None and other is not session:
            log.error("%s: cannot take id %s: in use by %s", session.port, device_id, other.port)
            return
        old = session.device_id
        self.devices[device_id] = self.devices.pop(old)
        self.runners[device_id] = self.runners.pop(old)
        session.rename(device_id)
        self._release(old)

    @property
    def reading_paused(self) -> bool:
        """True while serial reads are paused because a subscriber is far behind."""
        return self._paused

    def device(self, device_id: str) -> DeviceSession:
        """A device by id; ``UnknownDevice`` if there is none."""
        try:
            return self.devices[device_id]
        except KeyError:
            raise UnknownDevice(f"no device {device_id!r}; devices: "
                                f"{', '.join(sorted(self.devices)) or 'none'}") from None

    # ------------------------------------------------------------------ events

    def subscribe(self) -> EventSubscription:
        """A new stream of every device's events (state changes first see the current ones)."""
        subscription = EventSubscription(self)
        self._subscribers.append(subscription)
        return subscription

    async def events(self) -> AsyncIterator[DeviceEvent]:
        """Iterate over events until cancelled."""
        subscription = self.subscribe()
        try:
            async for event in subscription:
                yield event
        finally:
            subscription.close()

    def _unsubscribe(self, subscription: EventSubscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
        self._consumed()

    def _emit(self, event: DeviceEvent) -> None:
        if self._paused:
            # A port (re)opened while paused reads until its first event: pause it too.
            link = self.devices[event.device_id].link
            if link is not None:
                link.pause_reading()
        for subscription in self._subscribers:
            queue = subscription._queue
            queue.put_nowait(event)
            if not self._backlogged and queue.qsize() >= self.event_high_water:
                # Backpressure, not buffering: stop reading ports until the consumer catches up.
                log.warning("event consumer is %d events behind; pausing serial reads",
                            queue.qsize())
                self._backlogged = True
                self._apply_reading()

    def _consumed(self) -> None:
        if self._backlogged and all(s.waiting < self.event_high_water // 2
                                    for s in self._subscribers):
            self._backlogged = False
            self._apply_reading()

    def hold_reading(self, holder: str, hold: bool) -> None:
        """Pause serial reads while any holder (say, a slow broker) asks for it."""
        (self._holds.add if hold else self._holds.discard)(holder)
        self._apply_reading()

    def _apply_reading(self) -> None:
        paused = self._backlogged or bool(self._holds)
        if paused == self._paused:
            return
        self._paused = paused
        for session in self.devices.values():
            if session.link is not None:
                (session.link.pause_reading if paused else session.link.resume_reading)()
