"""The serial driver and the gateway's flow control, through real pseudo-terminals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
import tty

import pytest

from firmware_sim import Fleet, FleetSpec
from gateway.app import Gateway
from gateway.drivers.serial import SerialLink, explain_open_error
from gateway.frames import Deframer, Frame
from gateway.settings import SerialSettings
from tests.harness import gateway_config, is_state, next_event, wait_for


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)


async def test_a_port_nobody_reads_cannot_make_the_gateway_buffer_without_bound(pty_pair):
    master, path = pty_pair
    settings = SerialSettings(write_high_water=4096)
    link = await SerialLink.open(path, settings, lambda frames: None)
    frame = Frame(0x30, bytes(200))
    await wait_for(lambda: not link.send_nowait(frame), what="the port to back up")
    assert link.tx_dropped == 1
    transport = link._transport  # the only way to see pyserial-asyncio's buffer
    assert transport.get_write_buffer_size() <= settings.write_high_water + 205
    # send() waits rather than buffering more...
    blocked = asyncio.create_task(link.send(frame))
    await asyncio.sleep(0.1)  # give it a chance to (wrongly) complete
    assert not blocked.done()
    # ...and goes through once the other side reads.
    deframer = Deframer()
    got = []

    def drain():
        with contextlib.suppress(BlockingIOError):
            got.extend(deframer.feed(os.read(master, 1 << 16)))
        return blocked.done()

    await wait_for(drain, what="the blocked send to complete")
    assert all(f == frame for f in got)
    link.close()


async def test_reading_pauses_when_the_event_consumer_falls_behind(tmp_path):
    links = tmp_path / "links"
    async with Fleet(FleetSpec(count=2, interval_ms=10, link_dir=links)) as fleet:
        config = gateway_config(tmp_path, {d.name: str(links / d.name) for d in fleet.devices})
        gateway = Gateway(config, event_high_water=100)
        subscription = gateway.subscribe()
        async with gateway:
            await wait_for(lambda: gateway.reading_paused, what="reads to pause")
            backlog = subscription.waiting
            await asyncio.sleep(0.3)  # a window in which nothing more may be read
            assert subscription.waiting == backlog
            while subscription.waiting >= 50:
                subscription.get_nowait()
            assert not gateway.reading_paused
            await wait_for(lambda: subscription.waiting > 50, what="reads to resume")


async def _half_a_frame_read(master: int, path: str,
                             timeout: float) -> tuple[SerialLink, list[Frame], bytes]:
    """A link that has read the first 6 bytes of a 15-byte frame written to ``master``."""
    got: list[Frame] = []
    link = await SerialLink.open(path, SerialSettings(inter_frame_timeout=timeout), got.extend)
    data = Frame(0x20, bytes(range(10))).encode()
    os.write(master, data[:6])
    await wait_for(lambda: link.framing.deframer.buffered == 6, what="half a frame to be read")
    return link, got, data


async def test_a_pause_in_reading_does_not_make_a_half_read_frame_stale(pty_pair):
    """Backpressure stops reads; the rest of a frame then waits in the OS, not on a silent
    line, so the inter-frame timeout must not drop the half already read."""
    master, path = pty_pair
    timeout = 0.05
    link, got, data = await _half_a_frame_read(master, path, timeout)
    link.pause_reading()
    await asyncio.sleep(3 * timeout)  # the pause under test: longer than the timeout
    os.write(master, data[6:])
    await asyncio.sleep(3 * timeout)
    assert got == []  # nothing read while paused
    link.resume_reading()
    await wait_for(lambda: got, what="the frame after resuming")
    assert got == [Frame(0x20, bytes(range(10)))]
    assert link.framing.deframer.stats.stale_frames == 0
    # A real silence still drops a partial frame.
    os.write(master, data[:6])
    await wait_for(lambda: link.framing.deframer.stats.stale_frames == 1,
                   what="the partial to expire")
    link.close()


async def test_a_busy_loop_does_not_make_a_half_read_frame_stale(pty_pair):
    """A read that comes late because the loop was busy (or the process was preempted) is
    not line silence: the rest of the frame waited in the OS's buffer."""
    master, path = pty_pair
    timeout = 0.05
    link, got, data = await _half_a_frame_read(master, path, timeout)
    os.write(master, data[6:])
    time.sleep(3 * timeout)  # noqa: ASYNC251 - the stall under test: the loop cannot read
    await wait_for(lambda: got, what="the frame")
    assert got == [Frame(0x20, bytes(range(10)))]
    # The timer, too, leaves a partial alone while its rest waits in the OS's buffer.
    os.write(master, data[:6])
    await wait_for(lambda: link.framing.deframer.buffered == 6, what="half a frame again")
    link._transport.pause_reading()  # the reader does not get to run (the link is not told)
    os.write(master, data[6:])
    await wait_for(link._bytes_waiting, what="the rest in the OS's buffer")
    link.framing.deframer._since -= 10 * timeout  # as if the timer were long overdue
    link.line.expire()
    assert link.framing.deframer.buffered == 6  # kept: its rest is waiting
    link._transport.resume_reading()
    await wait_for(lambda: len(got) == 2, what="the second frame")
    assert link.framing.deframer.stats.stale_frames == 0
    link.close()


def test_open_errors_say_what_to_do():
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert "add the gateway's user to the 'dialout' group" in explain_open_error("/dev/x", denied)
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory")
    assert "is the device plugged in" in explain_open_error("/dev/x", missing)
    busy = OSError(errno.EBUSY, "Resource busy")
    assert "in use by another program" in explain_open_error("/dev/x", busy)


def test_slow_baud_rates_get_a_longer_inter_frame_timeout():
    assert SerialSettings(baudrate=115200).frame_timeout() == pytest.approx(0.1)
    assert SerialSettings(baudrate=9600).frame_timeout() == pytest.approx(2 * 261 * 10 / 9600)
    assert SerialSettings(inter_frame_timeout=0.5).frame_timeout() == 0.5


async def test_state_change_when_the_port_disappears_under_an_open_link(tmp_path):
    links = tmp_path / "links"
    async with Fleet(FleetSpec(count=1, interval_ms=50, link_dir=links)) as fleet:
        config = gateway_config(tmp_path, {"dev": str(links / "sim-0")})
        gateway = Gateway(config)
        sub = gateway.subscribe()
        async with gateway:
            await next_event(sub, is_state("dev", "online"))
            opens = gateway.runners["dev"].opens
            await fleet.devices[0].unplug(0.3)
            assert (await next_event(sub, is_state("dev", "offline"))).reason == "port_gone"
            await next_event(sub, is_state("dev", "online"), timeout=10)
            assert gateway.runners["dev"].opens == opens + 1
