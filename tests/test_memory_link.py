"""Sessions and transactions over the in-memory link pair (gateway.drivers.memory), where a
pty adds nothing: the framing's link layer, the request queue and the session's state
machine, with the line's loss, corruption and splits under the test's control. The
drivers themselves are proven over real ptys (test_drivers, test_ms720_link)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from firmware_sim import SimulatedDevice
from firmware_sim.links import MemoryDeviceLink
from gateway.drivers.memory import LineFaults, MemoryLink, memory_pair
from gateway.frames import Command, Frame, ProfileRegistry
from gateway.nodeids import NodeIdStore
from gateway.session import DeviceSession, DeviceSettings, DeviceState
from gateway.settings import LinkSettings, SessionSettings
from gateway.transactions import Status
from tests.harness import running_transactions, wait_for


class Device:
    """The far end: answers each READ of key k with value k * 10, tagged with its request's
    seq, and counts how often it saw each request."""

    def __init__(self, end: MemoryLink) -> None:
        self.end = end
        self.seen: dict[int | None, int] = {}
        end.on_frames = self.on_frames

    def on_frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.cmd_id != Command.READ:
                continue
            self.seen[frame.request_seq] = self.seen.get(frame.request_seq, 0) + 1
            key = int.from_bytes(frame.payload[:2], "little")
            self.end.send_nowait(Frame(Command.READ_RESP, frame.payload[:2]
                                       + (key * 10).to_bytes(4, "little"), frame.request_seq))


@contextlib.asynccontextmanager
async def transactions_over(gateway_end: MemoryLink, **kwargs):
    async with running_transactions(gateway_end.send, **kwargs) as tx:
        gateway_end.on_frames = lambda frames: [tx.on_response(f) for f in frames]
        yield tx


def read(key: int) -> Frame:
    return Frame(Command.READ, key.to_bytes(2, "little"))


async def test_pipelined_requests_over_a_lossy_ms720_line_are_each_answered_exactly_once():
    """ms720's link layer (spec section 4) recovers what the line loses, corrupts or splits:
    16 requests in flight, each delivered once to the device and answered with its own
    value, none retried by the request queue. (The noise starts after a first clean
    exchange: each end learns where the other's sequence starts from its first frame.)"""
    gateway_end, device_end = memory_pair(LinkSettings(frames="ms720", retries=7),
                                          faults=LineFaults(seed=7))
    device = Device(device_end)
    async with transactions_over(gateway_end, max_in_flight=16) as tx:
        assert (await tx.request(read(99), timeout=1)).status is Status.OK
        noise = LineFaults(loss=0.1, corrupt=0.05, split=True)
        for end in (gateway_end, device_end):
            assert end.wire is not None
            end.wire.faults = noise
        outcomes = await asyncio.gather(*(tx.request(read(k), timeout=5, retries=0)
                                          for k in range(40)))
    assert [o.status for o in outcomes] == [Status.OK] * 40
    assert [o.response.payload[2:] for o in outcomes] == [
        (k * 10).to_bytes(4, "little") for k in range(40)]
    assert tx.peak_in_flight == 16
    assert tx.counters.retries == 0
    assert len(device.seen) == 41
    assert set(device.seen.values()) == {1}
    link = gateway_end.framing.counters()
    assert link["link_retransmits"] + device_end.framing.counters()["link_retransmits"] > 0


async def test_a_request_over_mcp_is_answered():
    gateway_end, device_end = memory_pair(LinkSettings(frames="mcp"))
    Device(device_end)
    async with transactions_over(gateway_end) as tx:
        outcome = await tx.request(read(3), timeout=1)
    assert outcome.status is Status.OK
    assert outcome.response == Frame(Command.READ_RESP, b"\x03\x00\x1e\x00\x00\x00")
    assert gateway_end.framing.counters()["frames"] == 1


@pytest.mark.parametrize("frames", ["mcp", "ms720"])
async def test_a_session_registers_and_answers_over_memory_with_a_simulated_device(
        tmp_path, frames):
    """The whole device state machine without a pty: HELLO -> online, a read, and the
    session's counters from the framing."""
    profile = ProfileRegistry().get("env-sensor")
    settings = DeviceSettings(profile=profile, frames=frames,
                              session=SessionSettings(heartbeat_s=1))
    session = DeviceSession("mem-0", "memory://mem-0", settings,
                            NodeIdStore(tmp_path / "node_ids.json"), lambda event: None)
    gateway_end = MemoryLink("memory://mem-0", LinkSettings(frames=frames), session.on_frames)
    device = SimulatedDevice("mem-0", profile, MemoryDeviceLink(gateway_end), frames=frames,
                             interval_ms=100, seed=1)
    runner = asyncio.create_task(session.run())
    try:
        session.attach(gateway_end)
        async with device:
            await wait_for(lambda: session.state is DeviceState.ONLINE, what="registration")
            outcome = await session.request("read", {"key": "interval_ms"})
            assert outcome.status is Status.OK
            assert outcome.value == 100
            counters = session.counters()
            assert counters["rx_frames"] > 0
            assert counters["checksum_errors"] == 0
            assert ("link_retransmits" in counters) == (frames == "ms720")
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
