"""Async helpers: a fleet of simulated devices on real ptys with a gateway in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import pytest

from firmware_sim import Fleet, FleetSpec
from gateway.app import EventSubscription, Gateway
from gateway.config import parse_config
from gateway.session import DeviceEvent, StateChange, TelemetryEvent
from gateway.settings import TransactionSettings
from gateway.transactions import CircuitBreaker, Transactions


def lacking(what: str) -> NoReturn:
    """A test needs a tool this machine lacks: skip with ``what`` on a developer's machine,
    fail under CI (``CI=true``), whose own set-up must install every tool a test needs."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI installs every tool a test needs: see ./dev system-deps)")
    pytest.skip(what)


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "it") -> Any:
    """Poll ``predicate`` until it is truthy; AssertionError at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        await asyncio.sleep(0.01)


async def next_event(
    subscription: EventSubscription, match: Callable[[DeviceEvent], bool], timeout: float = 5.0
) -> DeviceEvent:
    """The next event ``match`` accepts (others are skipped)."""
    async with asyncio.timeout(timeout):
        async for event in subscription:
            if match(event):
                return event
    raise AssertionError("subscription ended")


def is_state(device_id: str, state: str) -> Callable[[DeviceEvent], bool]:
    return lambda e: isinstance(e, StateChange) and e.device_id == device_id and e.state == state


def is_telemetry(device_id: str, name: str = "status") -> Callable[[DeviceEvent], bool]:
    return lambda e: isinstance(e, TelemetryEvent) and e.device_id == device_id and e.name == name


def gateway_config(tmp_path: Path, paths: dict[str, str], **port_settings: Any) -> Any:
    """A configuration with one port per ``name: path``."""
    return parse_config({
        "gateway_id": "test-gw",
        "state_dir": str(tmp_path / "state"),
        "ports": [{"name": name, "path": path, **port_settings} for name, path in paths.items()],
    })


@contextlib.asynccontextmanager
async def running_transactions(send: Callable[[Any], Any], breaker: CircuitBreaker | None = None,
                               **settings: Any) -> AsyncIterator[Transactions]:
    """A request queue over ``send`` with its worker running; stopped on the way out."""
    tx = Transactions(send, TransactionSettings(**settings), breaker=breaker)
    worker = asyncio.create_task(tx.run(), name="transactions")
    try:
        yield tx
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


@contextlib.asynccontextmanager
async def running_gateway(config: Any) -> AsyncIterator[tuple[Gateway, EventSubscription]]:
    gateway = Gateway(config)
    subscription = gateway.subscribe()
    async with gateway:
        yield gateway, subscription


@contextlib.asynccontextmanager
async def fleet_and_gateway(
    tmp_path: Path, spec: FleetSpec, **port_settings: Any
) -> AsyncIterator[tuple[Fleet, Gateway, EventSubscription]]:
    """Simulated devices with stable symlinks, and a gateway with one port per device."""
    links = tmp_path / "links"
    spec = replace(spec, link_dir=links)
    async with Fleet(spec) as fleet:
        paths = {d.name: str(links / d.name) for d in fleet.devices}
        async with running_gateway(gateway_config(tmp_path, paths, **port_settings)) as (gw, sub):
            yield fleet, gw, sub
