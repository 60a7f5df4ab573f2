"""One simulated device: the firmware state machine of a profile, over any ``Link``.

It reuses ``gateway.frames`` for every byte it reads or writes, so the simulator and the
gateway cannot drift apart. Faults are knobs on ``Faults``; unplugging is a power cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from firmware_sim.breaks import BREAKS, check_breaks
from firmware_sim.faulty_link import sim_framing
from firmware_sim.links import Link
from gateway.drivers.framed import FramedLine
from gateway.errors import ChecksumMismatch, GatewayError
from gateway.frames import (
    Command,
    DeviceProfile,
    Frame,
    NackCode,
    decode_frame,
    decode_payload,
    encode_payload,
)
from gateway.frames.checksums import xor8
from gateway.frames.commands import RESPONSE_BIT, LogLevel
from gateway.frames.framing import DEFAULT_FRAMES, framing_class
from gateway.frames.ms720 import OVERHEAD as MS720_OVERHEAD
from gateway.frames.ms720 import SYNC, MsgType, crc16, decode_link
from gateway.frames.profiles import FieldSpec
from gateway.frames.wire import HEADER_BYTES
from gateway.settings import LinkSettings

log = logging.getLogger(__name__)

HELLO_RETRY_S = 1.0
DEFAULT_HEARTBEAT_S = 5.0
#: A registered device that hears nothing from its gateway for this many heartbeats re-registers.
SILENT_HEARTBEATS = 3


@dataclass
class Faults:
    """Fault injection knobs; each rate is a probability in [0, 1]."""

    #: chance, per frame sent, of 1..garbage_max random bytes before it
    garbage_rate: float = 0.0
    garbage_max: int = 16
    #: garbage never contains 0x5A (so no frame can be lost to a false accept)
    garbage_without_header: bool = False
    #: chance a sent frame goes out with a wrong checksum
    corrupt_rate: float = 0.0
    #: chance an answer to a request is not sent at all
    drop_rate: float = 0.0
    #: delay before answering a request, seconds, plus a random 0..jitter more (answers
    #: then overtake each other: pipelined requests are answered out of order)
    response_delay_s: float = 0.0
    response_jitter_s: float = 0.0
    #: chance a received chunk of bytes has one byte changed (noise towards the device)
    rx_corrupt_rate: float = 0.0
    #: chance a frame on the wire (any, ACKs included) is lost whole, or sent twice
    frame_drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    #: named faults that each break one rule of the spec (``firmware_sim.breaks``)
    breaks: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.breaks = frozenset(self.breaks)
        check_breaks(self.breaks)
        for name in ("garbage_rate", "corrupt_rate", "drop_rate", "rx_corrupt_rate",
                     "frame_drop_rate", "duplicate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.garbage_max < 1:
            raise ValueError(f"garbage_max must be at least 1, got {self.garbage_max}")
        for name in ("response_delay_s", "response_jitter_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def broken(self, name: str) -> bool:
        """True when the named break (``firmware_sim.breaks.BREAKS``) is on."""
        assert name in BREAKS, name
        return name in self.breaks


@dataclass
class DeviceCounters:
    """What the simulated device did, for tests to compare with what the gateway saw."""

    frames_sent: int = 0
    status_sent: int = 0
    frames_received: int = 0
    garbage_bytes_sent: int = 0
    corrupted_frames: int = 0
    dropped_responses: int = 0
    hellos_sent: int = 0
    registrations: int = 0
    plugs: int = 0
    sent_by_cmd: dict[int, int] = field(default_factory=dict)


class _Drift:
    """A plausible random walk for one numeric STATUS field."""

    def __init__(self, spec: FieldSpec, rng: random.Random) -> None:
        hint = spec.sim if isinstance(spec.sim, dict) else {}
        self.spec = spec
        self.rng = rng
        self.low = hint.get("min", spec.min if spec.min is not None else 0.0)
        self.high = hint.get("max", spec.max if spec.max is not None else 100.0)
        self.drift = hint.get("drift", 0.0)
        self.value = hint.get("start", (self.low + self.high) / 2)
        self.noise = abs(self.drift) or (spec.scale or 1.0)

    def next(self) -> float | int:
        self.value += self.drift + self.rng.gauss(0.0, self.noise)
        self.value = min(self.high, max(self.low, self.value))
        if self.spec.scale is None and self.spec.type[0] in "ui":
            return round(self.value)
        return self.value


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` up to ``seconds``; True if it was set (never swallows a cancel)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


class SimulatedDevice:
    """Firmware of a device profile: HELLO until acknowledged, heartbeats, STATUS, keys.

    Use as an async context manager (``async with SimulatedDevice(...) as dev``) or call
    ``start``/``stop``. All timers are tasks of one TaskGroup owned by the device.
    """

    def __init__(
        self,
        name: str,
        profile: DeviceProfile,
        link: Link,
        *,
        uid: bytes | None = None,
        fw: str = "1.2.3",
        model: str | None = None,
        send_hello: bool = True,
        faults: Faults | None = None,
        interval_ms: int | None = None,
        seed: int | None = None,
        frames: str = DEFAULT_FRAMES,
        link_retries: int = 3,
    ) -> None:
        self._framing_class = framing_class(frames)  # ValueError for an unknown profile
        self.frames = frames
        #: retransmissions of an unacknowledged frame before it is given up (where the
        #: framing has a link layer)
        self.link_retries = link_retries
        #: the line's framing and its driver, new at every power-on
        self.line: FramedLine | None = None
        self.name = name
        self.profile = profile
        self.link = link
        self.uid = uid or hashlib.sha256(name.encode()).digest()[:8]
        self.fw = fw
        self.model = (model or profile.name)[:32]
        self.send_hello = send_hello
        self.faults = faults or Faults()
        self.counters = DeviceCounters()
        self.rng = random.Random(seed)
        # Settings survive a power cycle (they live in flash); everything else does not.
        self.settings: dict[int, Any] = {k.id: k.default for k in profile.keys.values()}
        for key in profile.keys.values():
            if key.name == "name":
                self.settings[key.id] = name[: key.field.max_len or 32]
            if key.name == "interval_ms" and interval_ms is not None:
                self.settings[key.id] = interval_ms
        self.registered = False
        #: a hung firmware: the link stays up but the device sends nothing
        self.muted = False
        self.node_id: int | None = None
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.sent_status: deque[bytes] = deque(maxlen=100_000)
        self._ring: list[tuple[bytes, bytes]] = []
        self._ring_pos = 0
        self._status_event = next(
            (e for e in profile.events.values() if e.cmd_id == Command.STATUS), None
        )
        self._drifts: dict[str, _Drift] = {}
        #: set by the fault that makes a frame sent without a link layer lost (see _corrupt)
        self._lost_frame = False
        self._booted_at = time.monotonic()
        self._last_heard = time.monotonic()
        self._wake = asyncio.Event()
        self._registered_now = asyncio.Event()
        #: PINGs sent since the last HELLO_ACK
        self._pings_since_ack = 0
        self._hello_now = asyncio.Event()
        #: the last frames received and sent (cmd_id, payload, corrupted), for tests to compare
        self.received: deque[Frame] = deque(maxlen=10_000)
        self.sent: deque[tuple[int, bytes, bool]] = deque(maxlen=100_000)
        self._running: asyncio.Task[None] | None = None
        #: the ms720 seq of the request being handled (None on mcp)
        self._answering: int | None = None
        #: breaks of the receive path: deaf until (no-resync), bytes held (no-frame-timeout)
        self._deaf_until = 0.0
        self._rx_held = b""
        #: STATUS frames written (bad-checksum spoils every other one)
        self._status_writes = 0
        self._plugged = asyncio.Event()
        self.link.on_data = self._on_data

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> SimulatedDevice:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Plug the link in and start the firmware's loops."""
        await self._power_on()
        self._running = asyncio.create_task(self._run(), name=f"sim-{self.name}")

    async def stop(self) -> None:
        """Stop the loops and release the link."""
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running
            self._running = None
        close = getattr(self.link, "close", None)
        if close is not None:
            await close()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._hello_loop(), name=f"{self.name}-hello")
            tasks.create_task(self._status_loop(), name=f"{self.name}-status")
            tasks.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat")

    async def _power_on(self) -> None:
        self.registered = False
        self.node_id = None
        self._booted_at = time.monotonic()
        self._last_heard = time.monotonic()
        if self.line is not None:
            self.line.close()
        # A random first seq after every boot: the other end's duplicate filter never
        # mistakes a rebooted device's new frames for old ones.
        framing = sim_framing(self.faults.broken,
                              LinkSettings(frames=self.frames, retries=self.link_retries),
                              clock=asyncio.get_running_loop().time,
                              first_seq=self.rng.randrange(2**32))
        self.line = FramedLine(framing, self._write_wire, self._take_frames, name=self.name)
        await self.link.plug()
        self.counters.plugs += 1
        self._plugged.set()
        self._wake.set()

    async def unplug(self, duration_s: float | None = None) -> None:
        """Pull the plug; with a duration, plug back in (power on again) after it."""
        self._plugged.clear()
        await self.link.unplug()
        log.info("%s unplugged", self.name)
        if duration_s is not None:
            await asyncio.sleep(duration_s)
            await self.replug()

    async def replug(self) -> None:
        """Plug back in: the device boots again (settings kept) at the link's new path."""
        await self._power_on()
        log.info("%s plugged in at %s", self.name, self.link.path)

    def reboot(self) -> None:
        """Restart the firmware (a reset button, or a ``reboot`` command): it forgets its
        registration and says HELLO again at once; settings and the link are kept."""
        self.registered = False
        self.node_id = None
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self._booted_at = time.monotonic()
        self._hello_now.set()
        log.info("%s rebooted", self.name)

    @property
    def uptime_s(self) -> int:
        """Seconds since the last power-on."""
        return int(time.monotonic() - self._booted_at)

    @property
    def interval_s(self) -> float:
        """Current STATUS period."""
        for key in self.profile.keys.values():
            if key.name == "interval_ms":
                return self.settings[key.id] / 1000.0
        return 1.0

    # ------------------------------------------------------------------ loops

    async def _hello_loop(self) -> None:
        hello_boot: float | None = None  # the boot a HELLO was sent after (hello-once)
        while True:
            await self._plugged.wait()
            once = self.faults.broken("hello-once") and hello_boot == self._booted_at
            wanted = not self.registered or self.faults.broken("hello-after-ack")
            if self.send_hello and wanted and not once and not self.faults.broken("no-hello"):
                self.send(Command.HELLO, self.hello_payload())
                self.counters.hellos_sent += 1
                hello_boot = self._booted_at
            self._hello_now.clear()
            await _wait_event(self._hello_now, HELLO_RETRY_S)

    async def _status_loop(self) -> None:
        period = self.interval_s
        while True:
            await self._plugged.wait()
            if self._status_event is not None:
                payload = self.status_payload()
                self.sent_status.append(payload)
                self.counters.status_sent += 1
                self.send(Command.STATUS, payload)
            self._wake.clear()
            if not self.faults.broken("ignores-interval-write"):
                period = self.interval_s
            # A WRITE of interval_ms wakes us so the new period applies at once.
            await _wait_event(self._wake,
                              period * (0.6 if self.faults.broken("fast-status") else 1.0))

    async def _heartbeat_loop(self) -> None:
        while True:
            self._registered_now.clear()
            # A HELLO_ACK restarts the period with the heartbeat it gave.
            if await _wait_event(self._registered_now, self.heartbeat_s):
                continue
            if not (self._plugged.is_set() and self.registered):
                continue
            if time.monotonic() - self._last_heard > SILENT_HEARTBEATS * self.heartbeat_s:
                log.info("%s: gateway silent, registering again", self.name)
                self.registered = False
                continue
            if self.faults.broken("stops-heartbeat") and self._pings_since_ack >= 2:
                continue
            self._pings_since_ack += 1
            self.send(Command.PING, encode_payload(Command.PING, {"uptime_s": self.uptime_s}))

    # ------------------------------------------------------------------ frames out

    def hello_payload(self) -> bytes:
        """The HELLO this device sends."""
        caps = ["status", "read", "write", *(c.name for c in self.profile.commands.values())]
        if self.faults.broken("bad-hello"):  # proto 2 and a 40-byte model: no codec builds it
            bare = encode_payload(Command.HELLO, {"proto": 1, "uid": self.uid.hex(),
                                                  "fw": self.fw, "model": "", "caps": caps})
            model = (self.model * 40)[:40].encode("ascii")
            return b"\x02" + bare[1:12] + bytes([len(model)]) + model + bare[13:]
        return encode_payload(
            Command.HELLO,
            {"proto": 1, "uid": self.uid.hex(), "fw": self.fw, "model": self.model, "caps": caps},
        )

    def status_payload(self) -> bytes:
        """The next STATUS payload with drifting values."""
        assert self._status_event is not None
        values: dict[str, Any] = {}
        for spec in self._status_event.layout.fields:
            if spec.sim == "uptime":
                values[spec.name] = self.uptime_s
            elif spec.is_numeric:
                drift = self._drifts.get(spec.name)
                if drift is None:
                    drift = self._drifts[spec.name] = _Drift(spec, self.rng)
                values[spec.name] = drift.next()
            else:
                values[spec.name] = {"bool": False, "utf8": self.name}.get(spec.type, b"")
        payload = self._status_event.layout.encode(values)
        return payload[:-1] if self.faults.broken("short-status") else payload

    def _status_frames(self, count: int) -> bytes:
        """``count`` STATUS frames for a flood or stream, counted like any others.

        Their payloads cycle through 1,024 drifting ones made once: a flood measures the
        gateway, so the simulator's own cost per frame is kept small.
        """
        picked = self._from_ring(count)
        self.counters.frames_sent += count
        rate, rng = self.faults.corrupt_rate, self.rng
        if rate:  # line noise: any one byte of a frame changed (as _corrupt does on a link)
            out = [f for _, f in picked]
            for i, frame in enumerate(out):
                if rng.random() < rate:
                    out[i] = self._flip_byte(frame)
                    self.counters.corrupted_frames += 1
            return b"".join(out)
        return b"".join(f for _, f in picked)

    def _from_ring(self, count: int) -> list[tuple[bytes, bytes]]:
        """The next ``count`` (payload, wire frame) pairs of the ring, counted as sent.

        The wire frames are encoded once by a framing of their own: bytes to stream as they
        are, on a line without a link layer (where every frame is encoded the same way)."""
        ring = self._ring
        if not ring:
            encoder = self._framing_class()
            for payload in (self.status_payload() for _ in range(1024)):
                encoder.send(Frame(Command.STATUS, payload))
                ring.append((payload, b"".join(encoder.data_to_send())))
        start = self._ring_pos
        picked = [ring[(start + i) % len(ring)] for i in range(count)]
        self._ring_pos = (start + count) % len(ring)
        self.sent_status.extend(p for p, _ in picked)
        self.counters.status_sent += count
        return picked

    async def flood(self, stop: asyncio.Event, batch: int = 64) -> int:
        """Send STATUS frames as fast as the link takes them until ``stop``; returns the count.

        Frames go out whole (the writer waits for room), so every one is intact unless a
        fault knob says otherwise. Counted in ``sent_status``/``counters`` like any other.
        """
        assert self._status_event is not None
        sent = 0
        while not stop.is_set():
            line = self.line
            if line is not None and line.framing.retransmits:
                # A link keeps every frame until it is acknowledged: each goes through it,
                # as fast as the send window lets frames out, never past it.
                if not line.room.is_set():
                    await _wait_event(line.room, 0.1)  # and look at stop again
                    continue
                for payload, _ in self._from_ring(batch):
                    self.send(Command.STATUS, payload)
                await asyncio.sleep(0)
                sent += batch
                continue
            await self.link.write_all(self._status_frames(batch))
            await asyncio.sleep(0)  # let received frames in between batches, as firmware would
            sent += batch
        return sent

    async def stream(self, stop: asyncio.Event, rate_hz: float,
                     tick_s: float | None = None,
                     writes: list[tuple[int, float]] | None = None,
                     phase_s: float = 0.0) -> int:
        """Send STATUS frames at ``rate_hz`` (e.g. a link's line rate) until ``stop``.

        Every ``tick_s`` (default: one frame's period, at least 1 ms) the frames due so far
        go out in one write, as a UART's FIFO would deliver them; returns the count. With
        ``writes``, each write is logged as (index of its first frame, wall-clock time).
        ``phase_s`` delays the start, so devices of a fleet are not in lockstep.
        """
        assert self._status_event is not None
        if tick_s is None:
            tick_s = max(0.001, 1.0 / rate_hz)
        if phase_s > 0:
            await asyncio.sleep(phase_s)
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        while not stop.is_set():
            due = int((loop.time() - start) * rate_hz) - sent
            if due > 0:
                await self.link.write_all(self._status_frames(due))
                if writes is not None:
                    writes.append((sent, time.time()))
                sent += due
            await asyncio.sleep(tick_s)
        return sent

    def log_line(self, level: LogLevel, text: str) -> None:
        """Send a LOG frame."""
        if self.faults.broken("bad-log"):  # a level past ERROR, and bytes that are no UTF-8
            self.send(Command.LOG, bytes([9]) + b"\xff\xfe" + text.encode())
            return
        self.send(Command.LOG, bytes([level]) + text.encode("utf-8")[:255])

    def send(self, cmd_id: int, payload: bytes = b"", request_seq: int | None = None) -> None:
        """Encode and write one frame, applying the garbage and corruption knobs
        (``request_seq``: on ms720, the seq of the request a response answers)."""
        line = self.line
        if not self._plugged.is_set() or self.muted or line is None:
            return
        self._lost_frame = False
        line.send(Frame(cmd_id, payload, request_seq))  # its bytes through _write_wire
        self.sent.append((cmd_id, payload, self._lost_frame))
        self.counters.frames_sent += 1
        self.counters.sent_by_cmd[cmd_id] = self.counters.sent_by_cmd.get(cmd_id, 0) + 1

    def _flip_byte(self, data: bytes) -> bytes:
        """``data`` with one byte changed (line noise)."""
        i = self.rng.randrange(len(data))
        return data[:i] + bytes([data[i] ^ self.rng.randint(1, 255)]) + data[i + 1:]

    def _garbage(self, size: int) -> bytes:
        data = self.rng.randbytes(size)
        if self.faults.garbage_without_header:
            data = data.replace(b"\x5a", b"\x5b")
        return data

    def _answer(self, cmd_id: int, payload: bytes) -> None:
        faults = self.faults
        if faults.drop_rate and self.rng.random() < faults.drop_rate:
            self.counters.dropped_responses += 1
            return
        delay = faults.response_delay_s
        if faults.response_jitter_s:
            delay += self.rng.uniform(0, faults.response_jitter_s)
        if delay > 0:
            asyncio.get_running_loop().call_later(
                delay, self.send, cmd_id, payload, self._answering)
        else:
            self.send(cmd_id, payload, self._answering)

    def _nack(self, rejected: int, code: NackCode) -> None:
        self._answer(Command.NACK, bytes([rejected, code]))

    def _write_wire(self, data: bytes) -> None:
        """What the framing writes (a frame, a link's ACKs or a retransmission) onto the
        noisy line."""
        if not self._plugged.is_set() or self.muted:
            return
        faults, rng = self.faults, self.rng
        if faults.frame_drop_rate and rng.random() < faults.frame_drop_rate:
            return
        out = b""
        if faults.garbage_rate and rng.random() < faults.garbage_rate:
            out = self._garbage(rng.randint(1, faults.garbage_max))
            self.counters.garbage_bytes_sent += len(out)
        if faults.corrupt_rate and rng.random() < faults.corrupt_rate:
            data = self._corrupt(data)
            self.counters.corrupted_frames += 1
        if faults.duplicate_rate and rng.random() < faults.duplicate_rate:
            data += data
        if faults.broken("bad-checksum") and self._carries_status(data):
            self._status_writes += 1
            if self._status_writes % 2 == 0:
                data = data[:-1] + bytes([data[-1] ^ 0x55])  # the checksum (ms720: CRC) byte
        self.link.write(out + data)

    def _carries_status(self, data: bytes) -> bool:
        """``data`` is a STATUS frame (read by a framing of the line's profile)."""
        seen = self._framing_class().watch(data)
        return any(item.get("frame") is not None and item["frame"].cmd_id == Command.STATUS
                   for item in seen)

    def _corrupt(self, data: bytes) -> bytes:
        """A write with a wrong byte. Over a link that retransmits, noise hits any byte (it
        notices: CRC, NACK, timeout); without one, the frame's check byte, so exactly that
        frame is lost and ``sent`` can say so (tests count the frames that must arrive)."""
        if self._framing_class.retransmits:
            return self._flip_byte(data)
        self._lost_frame = True
        return data[:-1] + bytes([data[-1] ^ self.rng.randint(1, 255)])

    # ------------------------------------------------------------------ frames in

    def _on_data(self, data: bytes) -> None:
        faults, rng = self.faults, self.rng
        if faults.rx_corrupt_rate and data and rng.random() < faults.rx_corrupt_rate:
            data = self._flip_byte(data)
        if self.line is not None:
            self._feed(self.line, data)  # frames to _take_frames

    def _feed(self, line: FramedLine, data: bytes) -> None:
        """Received bytes to the line's framing, as the receive path's breaks let them."""
        faults = self.faults
        if not faults.breaks:
            line.feed(data)
            return
        now = time.monotonic()
        if faults.broken("no-resync") and now < self._deaf_until:
            return
        if faults.broken("whole-writes-only") and self._ends_inside_a_frame(data):
            return
        if faults.broken("no-frame-timeout"):
            # Bytes held here until they end on a frame's end: the framing never sees a
            # partial frame, so its inter-frame timeout never drops one.
            data = self._rx_held + data
            if self._ends_inside_a_frame(data):
                self._rx_held = data
                return
            self._rx_held = b""
        if faults.broken("acts-on-bad-checksum"):
            self._take_frames(self._ignoring_check(data))
        discarded = line.framing.counters()["discarded_bytes"]
        line.feed(data)
        if faults.broken("no-resync") and line.framing.counters()["discarded_bytes"] > discarded:
            self._deaf_until = now + 1.0

    def _ends_inside_a_frame(self, data: bytes) -> bool:
        """A framing of the line's profile, fed ``data`` alone, holds a partial frame."""
        scratch = self._framing_class()
        scratch.feed(data)
        return scratch.buffered > 0

    def _ignoring_check(self, data: bytes) -> list[Frame]:
        """The commands of the frames back to back in ``data`` whose checksum (ms720: CRC)
        is wrong, read as if it were right (the acts-on-bad-checksum break)."""
        linked = self._framing_class.retransmits
        head, overhead, length_at = (SYNC, MS720_OVERHEAD, 4) if linked else (HEADER_BYTES, 5, 2)
        out, pos = [], 0
        while pos < len(data):
            if not data.startswith(head, pos) or len(data) < pos + length_at + 2:
                pos += 1
                continue
            size = overhead + int.from_bytes(data[pos + length_at:pos + length_at + 2], "little")
            frame = data[pos:pos + size]
            try:
                (decode_link if linked else decode_frame)(frame)
            except ChecksumMismatch:
                if not linked:
                    out.append(decode_frame(frame[:-1] + bytes([xor8(frame[1:-1])])))
                else:
                    link = decode_link(frame[:-2] + crc16(frame[4:-2]).to_bytes(2, "little"))
                    if link.msg_type in (MsgType.DATA, MsgType.CONTROL) and link.payload:
                        out.append(link.frame)
            except GatewayError:
                pos += 1
                continue
            pos += size
        return out

    def _take_frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.counters.frames_received += 1
            self.received.append(frame)
            self._last_heard = time.monotonic()
            self._answering = frame.request_seq  # what _answer tags its response with
            try:
                self._handle(frame)
            except Exception:  # a firmware bug must not kill the link's reader
                log.exception("%s: failed to handle %r", self.name, frame)

    def _handle(self, frame: Frame) -> None:
        cmd = frame.cmd_id
        if cmd == Command.HELLO_ACK:
            try:
                ack = decode_payload(cmd, frame.payload)
            except GatewayError:
                return
            self.node_id = ack["node_id"]
            if not self.faults.broken("ignores-heartbeat"):
                self.heartbeat_s = float(ack["heartbeat_s"] or DEFAULT_HEARTBEAT_S)
            if not self.registered:
                self.counters.registrations += 1
                self._pings_since_ack = 0
                self._registered_now.set()
                self.log_line(LogLevel.INFO, f"registered as node {self.node_id}")
            self.registered = True
        elif cmd == Command.PING:
            if self.faults.broken("slow-pong"):
                asyncio.get_running_loop().call_later(
                    0.4, self.send, Command.PONG, b"", self._answering)
            else:
                self._answer(Command.PONG, b"\0\0\0\0" if self.faults.broken("wrong-pong")
                             else b"")
        elif cmd == Command.READ:
            self._read(frame.payload)
        elif cmd == Command.WRITE:
            self._write(frame.payload)
        elif cmd in self.profile.commands:
            self._device_command(cmd, frame.payload)
        elif cmd == Command.NACK:
            if (frame.payload[1:2] == bytes([NackCode.NOT_REGISTERED])
                    and not self.faults.broken("ignores-nack5")):
                self.registered = False  # the gateway does not know us: HELLO again, now
                if self.faults.broken("new-uid"):
                    self.uid = hashlib.sha256(self.uid).digest()[:8]
                self._hello_now.set()
        elif cmd & RESPONSE_BIT:
            return  # PONG and stray responses: nothing to answer
        elif not self.faults.broken("no-unknown-nack"):
            self._nack(cmd, NackCode.UNKNOWN_COMMAND)

    def _read(self, payload: bytes) -> None:
        faults = self.faults
        try:
            key_id = decode_payload(Command.READ, payload)["key"]
        except GatewayError:
            if not faults.broken("no-bad-payload-nack"):
                self._nack(Command.READ, NackCode.BAD_PAYLOAD)
            return
        key = self.profile.keys.get(key_id)
        if key is None:
            if faults.broken("unknown-key-answered"):
                self._answer(Command.READ_RESP, key_id.to_bytes(2, "little") + bytes(4))
            else:
                self._nack(Command.READ, NackCode.BAD_PAYLOAD)
            return
        value = key.encode(self.settings[key.id])
        answered = key_id ^ 0x8000 if faults.broken("wrong-read-key") else key_id
        self._answer(Command.READ_RESP, answered.to_bytes(2, "little") + value)
        if faults.broken("double-answer"):
            self._answer(Command.READ_RESP, answered.to_bytes(2, "little") + value)

    def _write(self, payload: bytes) -> None:
        faults = self.faults
        try:
            request = decode_payload(Command.WRITE, payload)
        except GatewayError:
            if not faults.broken("no-bad-payload-nack"):
                self._nack(Command.WRITE, NackCode.BAD_PAYLOAD)
            return
        key_id = request["key"]
        key = self.profile.keys.get(key_id)
        status = NackCode.BAD_PAYLOAD if key is None else None
        if key is not None and not key.writable and not faults.broken("readonly-writable"):
            status = NackCode.DENIED
        elif key is not None:
            try:
                value = key.decode(request["value"])
                key.encode(value)  # range and length checks
            except GatewayError:
                status = NackCode.BAD_PAYLOAD
            else:
                if not faults.broken("write-not-stored"):
                    self.settings[key.id] = value
                if key.name == "interval_ms":
                    self._wake.set()
        payload = encode_payload(Command.WRITE_ACK, {"key": key_id, "status": status or 0})
        self._answer(Command.WRITE_ACK, payload)

    def _device_command(self, cmd: int, payload: bytes) -> None:
        spec = self.profile.commands[cmd]
        try:
            spec.request.decode(payload, what=spec.name)
        except GatewayError:
            self._nack(cmd, NackCode.BAD_PAYLOAD)
            return
        # Generic firmware: answer with each response field's simulated start value.
        values = {}
        for f in spec.response.fields:
            hint = f.sim if isinstance(f.sim, dict) else {}
            values[f.name] = {"utf8": "", "bytes": b"", "bool": False}.get(
                f.type, hint.get("start", f.min if f.min is not None else 0)
            )
        response = spec.response.encode(values, what=spec.name)
        if self.faults.broken("wrong-command-layout"):
            response = response[:-1]
        self._answer(cmd | RESPONSE_BIT, response)
        if spec.name == "reboot":  # the command the conformance kit asks for a reboot with
            self.reboot()
