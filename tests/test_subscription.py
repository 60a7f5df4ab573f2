"""The event subscription's batch API (issue 14 item 3): a consumer takes events in batches,
in order, and taking them is what frees serial reads paused by its backlog (the gateway's
backpressure is accounted in ``gateway.app``, never by the consumer)."""

from __future__ import annotations

import asyncio

from gateway.app import Gateway
from gateway.session import DeviceRenamed
from tests.harness import gateway_config


def renamed(n: int) -> DeviceRenamed:
    return DeviceRenamed(device_id=f"uid-{n:016x}", old_id=f"sim-{n}")


async def test_batch_waits_for_one_event_then_takes_what_waits_up_to_its_limit(tmp_path):
    gateway = Gateway(gateway_config(tmp_path, {}))
    subscription = gateway.subscribe()
    waiting = asyncio.create_task(subscription.batch(3))
    await asyncio.sleep(0)
    assert not waiting.done()  # nothing delivered yet: it waits
    for n in range(5):
        gateway._emit(renamed(n))
    assert await asyncio.wait_for(waiting, 5) == [renamed(n) for n in range(3)]
    assert subscription.waiting == 2
    assert subscription.take_nowait(1) == [renamed(3)]
    assert subscription.take_nowait() == [renamed(4)]
    assert subscription.take_nowait() == []


async def test_taking_a_batch_resumes_reads_paused_by_the_subscribers_backlog(tmp_path):
    """EVENT_HIGH_WATER: reads pause at the high-water mark and resume below half of it."""
    gateway = Gateway(gateway_config(tmp_path, {}), event_high_water=10)
    subscription = gateway.subscribe()
    for n in range(10):
        gateway._emit(renamed(n))
    assert gateway.reading_paused
    assert len(await subscription.batch(5)) == 5
    assert gateway.reading_paused  # 5 still wait: not below half
    assert len(subscription.take_nowait(1)) == 1
    assert not gateway.reading_paused
