"""``mcp-gateway run``: the gateway as a service, from its configuration file to SIGTERM.

Owns the process's lifetime: the embedded broker (if configured), the bridge, the gateway,
SIGHUP (reload), SIGTERM/SIGINT (a clean stop: devices, then the gateway, go offline on
the fabric), and what systemd is told (READY, STATUS, WATCHDOG, STOPPING).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from gateway.app import EventSubscription, Gateway
from gateway.bridge import claim
from gateway.bridge.bridge import Bridge
from gateway.bridge.embedded import EmbeddedBroker, EmbeddedBrokerError
from gateway.bridge.topics import Topics
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, GatewayIdInUse, MetricsUnavailable, StartupError
from gateway.notify import Notifier
from gateway.reload import Reloader
from gateway.session import DeviceEvent, DeviceState, TelemetryEvent

log = logging.getLogger("mcp-gateway")

#: READY=1 is sent when every port has been tried and the broker answered, or after this
#: long regardless (the queue holds events while the broker is away; the service is up)
READY_TIMEOUT_S = 30.0
STATUS_INTERVAL_S = 5.0


def _log_event(event: DeviceEvent) -> None:
    # State changes and renames are logged where they happen (the session), once.
    if isinstance(event, TelemetryEvent):
        log.debug("%s %s %s", event.device_id, event.name, json.dumps(event.fields, default=str))


def status_line(gateway: Gateway, bridge: Bridge | None) -> str:
    """What ``systemctl status`` shows: device counts, broker, queue."""
    states = [s.state for s in gateway.devices.values()]
    online = sum(1 for s in states if s is DeviceState.ONLINE)
    text = f"{online} of {len(states)} devices online"
    if bridge is not None:
        text += (f"; broker {'connected' if bridge.mqtt.connected else 'not connected'}; "
                 f"{bridge.spool.count} events queued")
    return text


def prepare_state_dir(path: Path) -> None:
    """Create ``state_dir`` if needed and prove it can be written (a file created and
    removed); ``StartupError`` naming ``state_dir`` if not.

    ``check-config`` saw its type and permissions; this catches what only trying shows (a
    read-only mount such as systemd's ProtectSystem, an ACL, root's view differing from
    the service user's). A full disk is not refused here: the running gateway copes with it.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.warning("state_dir %s: %s at start", path, exc.strerror)
            return
        what = "is a file, not a directory" if exc.errno in (errno.EEXIST, errno.ENOTDIR) \
            else f"cannot be written ({exc.strerror})"
        raise StartupError("state_dir", str(path), f"{what}; expected a directory the "
                           f"gateway's user (uid {os.geteuid()}) may write") from None


class Service:
    """``await Service(config_path, config).run()``: until SIGTERM/SIGINT; returns 0, or 1
    when a task of the bridge failed (systemd restarts the service)."""

    def __init__(self, path: Path, config: GatewayConfig,
                 notifier: Notifier | None = None) -> None:
        self.path = path
        self.config = config
        self.notifier = notifier or Notifier()
        self.gateway = Gateway(config)
        self.bridge: Bridge | None = None
        self._stop = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        """Stop ``run`` cleanly, as SIGTERM does (the demo's ``--duration``, its dashboard
        quitting)."""
        self._stop.set()

    def _ready(self) -> bool:
        ports_tried = all(s.state is not DeviceState.CONNECTING
                          for s in self.gateway.devices.values())
        return ports_tried and (self.bridge is None or self.bridge.mqtt.connected)

    async def _announce_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while not self._ready() and loop.time() < deadline:  # noqa: ASYNC110 - many conditions
            await asyncio.sleep(0.05)
        status = status_line(self.gateway, self.bridge)
        self.notifier.send(READY=1, STATUS=status)
        log.info("ready: %s", status)
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self.notifier.send(STATUS=status_line(self.gateway, self.bridge))

    def _on_sighup(self, reloader: Reloader) -> None:
        task = asyncio.get_running_loop().create_task(self._reload(reloader))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self, reloader: Reloader) -> None:
        self.notifier.send(RELOADING=1, STATUS="reloading the configuration")
        try:
            report = await reloader.reload()
        except GatewayError as exc:
            log.error("reload rejected, the running configuration stays: %s", exc)
        else:
            if report.needs_restart:
                log.warning("reload: %s only change with a restart",
                            ", ".join(report.needs_restart))
        self.notifier.send(READY=1, STATUS=status_line(self.gateway, self.bridge))

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (0), or until a task of the bridge fails (1); raises
        ``GatewayIdInUse`` when another live gateway holds the id (at the start, or later)."""
        config = self.config
        failed = False
        refused: GatewayIdInUse | None = None
        loop = asyncio.get_running_loop()
        # Every event at DEBUG: only then a subscription (a queue every event goes through).
        subscription = None
        logger = None
        if log.isEnabledFor(logging.DEBUG):
            subscription = self.gateway.subscribe()  # before the ports open: nothing missed
            logger = asyncio.create_task(self._log_events(subscription), name="log-events")
        tasks: list[asyncio.Task[None]] = []
        for warning in config.warnings:
            log.warning("configuration: %s", warning)
        try:
            prepare_state_dir(config.state_dir)
            async with contextlib.AsyncExitStack() as stack:
                if config.broker is not None and config.broker.embedded:
                    try:
                        await stack.enter_async_context(EmbeddedBroker(config.broker.url))
                    except EmbeddedBrokerError as exc:
                        raise StartupError("broker.url", config.broker.url,
                                           f"cannot be served: {exc}") from None
                if config.broker is not None:
                    # The bridge outlives the gateway: devices go offline on the fabric first.
                    self.bridge = await self._enter_bridge(stack)
                reloader = Reloader(self.path, self.gateway, self.bridge)
                await stack.enter_async_context(self.gateway)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self._stop.set)
                loop.add_signal_handler(signal.SIGHUP, self._on_sighup, reloader)
                log.info("gateway %s running %d port(s); state in %s", config.gateway_id,
                         len(config.ports), config.state_dir)
                # The service's own loops in a group: one that fails stops the service
                # (exit 1, below) instead of ending unobserved (no watchdog pings: killed).
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(_said(self._announce_ready(), "ready")),
                             group.create_task(_said(self.notifier.watchdog(), "watchdog"))]
                    await self._stop.wait()
                    log.info("stopping")
                    self.notifier.send(STOPPING=1, STATUS="stopping: devices go offline")
                    for task in [*tasks, *self._reloads]:
                        task.cancel()
                await asyncio.gather(*self._reloads, return_exceptions=True)
        except ExceptionGroup as group:
            # The bridge's TaskGroup or the service's: a loop failed. Exit 1 rather than
            # run on without it; another gateway took the id: exit 2, as at the start.
            in_use = group.subgroup(GatewayIdInUse)
            if in_use is not None and len(in_use.exceptions) == len(group.exceptions):
                refused = in_use.exceptions[0]  # type: ignore[assignment]
            else:
                failed = True
                log.error("stopped after a failure: %s; exit 1",
                          "; ".join(str(exc) for exc in group.exceptions))
            for task in [*tasks, *self._reloads]:
                task.cancel()
            await asyncio.gather(*tasks, *self._reloads, return_exceptions=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if logger is not None and subscription is not None:
                logger.cancel()
                await asyncio.gather(logger, return_exceptions=True)
                for event in subscription.take_nowait():  # the last events, at shutdown
                    _log_event(event)
            self.notifier.close()
        if refused is not None:
            raise refused
        return 1 if failed else 0

    async def _enter_bridge(self, stack: contextlib.AsyncExitStack) -> Bridge:
        """Start the bridge; a metrics address it cannot listen on is a ``StartupError``
        naming ``metrics.address`` (the queue it opened is closed again). Before it, the
        probe: ``GatewayIdInUse`` when a live gateway holds the id (with the same client id
        the bridge's connection would take that gateway's session over)."""
        assert self.config.broker is not None
        topics = Topics(self.config.topic_prefix, self.config.gateway_id)
        probed = await claim.probe(self.config.broker, topics)
        log.debug("gateway_id %r checked on %s in %.1f ms", self.config.gateway_id,
                  self.config.broker.url, probed.took_s * 1000)
        bridge = Bridge(self.gateway, self.config, probed=probed)
        try:
            return await stack.enter_async_context(bridge)
        except MetricsUnavailable as exc:
            bridge.spool.close()
            raise StartupError("metrics.address", exc.address,
                               f"cannot be listened on: {exc.reason}") from None

    @staticmethod
    async def _log_events(subscription: EventSubscription) -> None:
        async for event in subscription:
            _log_event(event)


async def _said(loop: Coroutine[Any, Any, None], name: str) -> None:
    """Run one of the service's loops; its failure is logged with its name and traceback
    before it stops the service."""
    try:
        await loop
    except Exception:
        log.exception("the service's %s loop failed", name)
        raise
