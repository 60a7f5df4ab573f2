"""The kit's end of a device's line: the port opened exclusively, every byte both ways in a
transcript, frames sent as the checks ask (bad ones on purpose), frames waited for.

Receiving goes through the line's ``Framing`` in its ``watch`` mode: every frame as it
comes, duplicates and link frames included, nothing answered on its own. What is answered
is the probe's choice, in one place (``_answer``): PINGs get a PONG, HELLOs a HELLO_ACK once
the kit has registered the device, and on ``ms720`` every data or control frame an ACK,
unless a check turns that off. Sending is the probe's own, as the spec spells the bytes
(``mcp``: ``encode_frame``; ``ms720``: ``carrying`` with a seq the probe picks), because a
tester must be able to send what a well-behaved framing never would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import serial
import serial_asyncio

from gateway.drivers.serial import explain_open_error, is_port_held
from gateway.errors import GatewayError
from gateway.frames import Command, DeviceProfile, Frame, encode_payload
from gateway.frames.commands import RESPONSE_BIT, command_name
from gateway.frames.describe import describe
from gateway.frames.framing import framing_for
from gateway.frames.ms720 import SEQ_MODULUS, MsgType, carrying, encode_bare
from gateway.frames.wire import encode_frame
from gateway.settings import LinkSettings

log = logging.getLogger(__name__)

#: the kit's first ms720 seq: close below 2^32, so its seq wraps within every run (LNK-7)
KIT_FIRST_SEQ = SEQ_MODULUS - 24
_READ_SIZE = 65536
#: at most this many bytes of the reads that held a dropped partial frame are quoted
_HELD_QUOTED = 8192
#: how long leaving waits for the port to be closed (it always is, within a loop turn)
_CLOSE_WAIT_S = 2.0


class PortBusy(GatewayError):
    """Another program holds the port (most likely the gateway)."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"{url} is held by another program (the gateway?). The kit must be the only "
            "program on the port, or the two would split its bytes: stop the gateway first "
            "(sudo systemctl stop mcp-gateway), or test another port.")
        self.url = url


class PortUnavailable(GatewayError):
    """The port cannot be opened (missing, no permission, ...)."""


@dataclass(slots=True)
class Record:
    """One line of the transcript: a frame (or raw bytes) sent or received."""

    #: seconds since the probe opened the port
    t: float
    #: "tx" (kit to device) or "rx"
    direction: str
    wire: bytes
    #: the frame as a person reads it
    text: str
    #: the command carried; None for a link frame (ACK/NACK) or raw bytes
    frame: Frame | None = None
    #: ms720: the frame's own seq
    seq: int | None = None
    #: None for a command frame; "ack"/"nack" for ms720 link frames; "raw" for bytes that
    #: are no frame (garbage sent on purpose, or bytes the kit's deframer discarded)
    link: str | None = None
    #: ms720: the message type of a command frame (control or data)
    msg_type: int | None = None
    #: who used this received frame as an answer (a request, a check); None: nobody
    claimed_by: str | None = None

    @property
    def cmd_id(self) -> int | None:
        return None if self.frame is None else self.frame.cmd_id

    @property
    def is_response(self) -> bool:
        """An answer to a request: cmd | 0x80 or NACK."""
        cmd = self.cmd_id
        return cmd is not None and (cmd & RESPONSE_BIT != 0 or cmd == Command.NACK)

    def line(self) -> str:
        """``  12.3 ms  rx  5a 82 00 00 82  PONG``."""
        arrow = "kit->dev" if self.direction == "tx" else "dev->kit"
        return f"{self.t * 1000:9.1f} ms  {arrow}  {self.wire.hex(' ')}  {self.text}"

    def to_json(self) -> dict[str, Any]:
        return {"t_ms": round(self.t * 1000, 1), "direction": self.direction,
                "hex": self.wire.hex(" "), "decoded": self.text}


@dataclass(slots=True)
class Reply:
    """A request the kit sent and what answered it."""

    sent: Record
    #: the answer (cmd | 0x80, or NACK of this command), None if none came in time
    answer: Record | None
    #: seconds from the send to the answer
    latency: float | None = None
    #: ms720: answers of the right command that carried another request's seq
    mistagged: list[Record] = field(default_factory=list)

    @property
    def records(self) -> list[Record]:
        return [self.sent, *([self.answer] if self.answer else []), *self.mistagged]


def _flip_last(data: bytes) -> bytes:
    """The bytes with their last one (the checksum, or the CRC's high byte) wrong."""
    return data[:-1] + bytes([data[-1] ^ 0x55])


class Probe:
    """The kit's end of one line. ``async with Probe(url, frames=..., profile=...)``."""

    def __init__(self, url: str, *, frames: str, profile: DeviceProfile | None,
                 baudrate: int = 115200, first_seq: int = KIT_FIRST_SEQ) -> None:
        self.url = url
        self.frames = frames
        self.profile = profile
        self.baudrate = baudrate
        self.framing = framing_for(LinkSettings(frames=frames))  # only its watch is used
        self.linked = self.framing.retransmits  # ms720: seqs, ACKs
        #: everything sent and received, in order
        self.records: list[Record] = []
        #: what was received (frames, link frames, discarded bytes), in order
        self.received: list[Record] = []
        #: the deframer's counters when the first frame came, and when: bytes before it may
        #: be the tail of a frame the device was sending as the port opened (FRM-1)
        self.before_first_frame: dict[str, int] | None = None
        self.first_frame_at: float | None = None
        #: answer every PING from the device with PONG
        self.answer_pings = True
        #: ms720: acknowledge every data or control frame the device sends
        self.acking = True
        #: (node_id, heartbeat_s) to answer each HELLO with; None: HELLOs are not answered
        self.hello_ack: tuple[int, int] | None = None
        self._next_seq = first_seq
        #: ms720 seqs of the device's frames already seen (a copy is not answered again)
        self._seen_seqs: set[int] = set()
        self._arrived = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        #: the timer that drops a stale partial frame, and the reads that hold it
        self._expiry: asyncio.TimerHandle | None = None
        self._held = b""
        self._closed: asyncio.Future[Exception | None] | None = None
        self._t0 = 0.0

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Probe:
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        try:
            # Exclusive, as the gateway opens its ports: a port it holds is refused.
            transport, _ = await serial_asyncio.create_serial_connection(
                loop, lambda: _Protocol(self), self.url, baudrate=self.baudrate,
                exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            if is_port_held(exc):
                raise PortBusy(self.url) from None
            raise PortUnavailable(explain_open_error(self.url, exc)) from None
        self._transport = transport  # type: ignore[assignment]
        self._t0 = loop.time()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            # The transport closes the port on a later loop turn: until then it is still
            # locked, and a run right after this one would find it busy.
            if self._closed is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CLOSE_WAIT_S):
                        await asyncio.shield(self._closed)

    def now(self) -> float:
        """Seconds since the port opened (the transcript's clock)."""
        return asyncio.get_running_loop().time() - self._t0

    @property
    def lost(self) -> Exception | bool | None:
        """False while the port is open; else why it went away (None: closed)."""
        if self._closed is None or not self._closed.done():
            return False
        return self._closed.result()

    # ------------------------------------------------------------------ sending

    def next_seq(self) -> int:
        """ms720: the seq the next frame the kit sends gets."""
        seq = self._next_seq
        self._next_seq = (seq + 1) % SEQ_MODULUS
        return seq

    @property
    def upcoming_seq(self) -> int:
        """ms720: the seq the next frame the kit sends will get (not taken)."""
        return self._next_seq

    def wire_of(self, cmd_id: int, payload: bytes = b"", *, seq: int | None = None,
                request_seq: int | None = None, msg_type: int = MsgType.DATA) -> bytes:
        """The bytes of one frame as the line's profile spells them."""
        if not self.linked:
            return encode_frame(cmd_id, payload)
        assert seq is not None
        return carrying(Frame(cmd_id, payload, request_seq), seq, msg_type).encode()

    def send(self, cmd_id: int, payload: bytes = b"", *, seq: int | None = None,
             request_seq: int | None = None, corrupt: bool = False,
             note: str = "") -> Record:
        """Send one frame (ms720: the next seq unless given); ``corrupt`` makes its checksum
        (ms720: CRC) wrong. The transcript records it."""
        if self.linked and seq is None:
            seq = self.next_seq()
        wire = self.wire_of(cmd_id, payload, seq=seq, request_seq=request_seq)
        if corrupt:
            wire = _flip_last(wire)
        frame = Frame(cmd_id, payload, request_seq if request_seq is not None else seq)
        text = self._text(frame, seq)
        if corrupt:
            text += " (checksum made wrong on purpose)"
        if note:
            text += f" ({note})"
        return self._write(Record(self.now(), "tx", wire, text, frame, seq))

    async def send_in_parts(self, cmd_id: int, payload: bytes = b"", *,
                            cuts: Sequence[int] | None = None, gap_s: float,
                            seq: int | None = None, note: str = "") -> Record:
        """Send one frame as several writes, ``gap_s`` apart: cut at the offsets ``cuts``
        (None: byte by byte). The transcript records the frame once, at its first byte."""
        if self.linked and seq is None:
            seq = self.next_seq()
        wire = self.wire_of(cmd_id, payload, seq=seq)
        offsets = range(1, len(wire)) if cuts is None else sorted(cuts)
        bounds = [0, *offsets, len(wire)]
        pieces = [wire[a:b] for a, b in itertools.pairwise(bounds) if b > a]
        frame = Frame(cmd_id, payload, seq)
        how = "byte by byte" if cuts is None else f"in {len(pieces)} parts"
        text = f"{self._text(frame, seq)} (written {how}, {gap_s * 1000:.1f} ms apart"
        record = Record(self.now(), "tx", wire, text + (f"; {note})" if note else ")"),
                        frame, seq)
        self.records.append(record)
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(gap_s)  # the gap between writes is the stimulus
            if self._transport is not None:
                self._transport.write(piece)
        return record

    def write_raw(self, data: bytes, text: str) -> Record:
        """Send bytes that are not (or not all of) a frame: garbage, a part of a frame."""
        return self._write(Record(self.now(), "tx", data, text, link="raw"))

    def ack(self, seq: int) -> Record:
        """ms720: acknowledge the device's frame ``seq``."""
        return self._write(Record(self.now(), "tx", encode_bare(MsgType.ACK, [seq]),
                                  f"ACK seq={seq}", seq=seq, link="ack"))

    def _write(self, record: Record) -> Record:
        self.records.append(record)
        if self._transport is not None:
            self._transport.write(record.wire)
        return record

    # ------------------------------------------------------------------ receiving

    def _on_data(self, data: bytes) -> None:
        # the reads that hold a partial frame, quoted if it is dropped
        self._held = (self._held + data)[-_HELD_QUOTED:] if self.framing.buffered else data
        before = self.framing.counters()["discarded_bytes"]
        self._take(self.framing.watch(data), data, before, "")
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        """A partial frame held is dropped at its inter-frame timeout, as the gateway's
        driver does, so a device frame cut short (or with a wrong length) cannot hold up
        the frames behind it."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        deadline = self.framing.deadline
        if deadline is not None and self._transport is not None:
            self._expiry = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        try:
            before = self.framing.counters()["discarded_bytes"]
            seen = self.framing.watch_expire(time.monotonic())  # the framing's clock
            self._take(seen, self._held, before, ", a partial frame dropped after the "
                       "inter-frame timeout")
        except Exception:  # a bug here must not stop the probe's receiving: logged loudly
            log.exception("conformance probe: failed to expire a partial frame")
        self._arm_expiry()

    def _take(self, seen: list[dict[str, Any]], data: bytes, discarded_before: int,
              how: str) -> None:
        """Record what the framing found in ``data``, and answer it."""
        now = self.now()
        discarded = self.framing.counters()["discarded_bytes"] - discarded_before
        if self.before_first_frame is None and seen:
            self.before_first_frame = self.framing.counters()
            self.first_frame_at = now
        if discarded:
            self._receive(Record(now, "rx", data, f"{discarded} of these {len(data)} bytes "
                                 f"are no valid frame (discarded{how})", link="raw"))
        for item in seen:
            frame = item.get("frame")
            if frame is None:
                seq = item["seq"]
                kind = item["link"]
                self._receive(Record(now, "rx", item["wire"], f"{kind.upper()} seq={seq}",
                                     seq=seq, link=kind))
                continue
            seq = item.get("seq")
            record = Record(now, "rx", item["wire"], self._text(frame, seq), frame, seq,
                            msg_type=item.get("msg_type"))
            self._receive(record)
            self._answer(record)

    def _receive(self, record: Record) -> None:
        self.records.append(record)
        self.received.append(record)
        self._arrived.set()

    def _answer(self, record: Record) -> None:
        """What a gateway answers on its own (each policy a flag the checks may turn off)."""
        frame = record.frame
        assert frame is not None
        first = True
        if record.seq is not None:
            first = record.seq not in self._seen_seqs
            self._seen_seqs.add(record.seq)
            if self.acking:
                self.ack(record.seq)
        if not first:
            return  # a retransmitted copy: acknowledged again, answered once
        if frame.cmd_id == Command.PING and self.answer_pings:
            self.send(Command.PONG, request_seq=frame.request_seq, note="the kit's answer")
        elif frame.cmd_id == Command.HELLO and self.hello_ack is not None:
            self.answer_hello(frame)

    def answer_hello(self, hello: Frame) -> Record:
        """Send the HELLO_ACK of ``hello_ack`` (node id, heartbeat) for this HELLO."""
        assert self.hello_ack is not None
        node_id, heartbeat_s = self.hello_ack
        payload = encode_payload(Command.HELLO_ACK,
                                 {"node_id": node_id, "heartbeat_s": heartbeat_s})
        return self.send(Command.HELLO_ACK, payload, request_seq=hello.request_seq,
                         note="the kit's answer")

    def _text(self, frame: Frame, seq: int | None) -> str:
        shown = describe(frame, self.profile)
        parts = [shown["cmd"] if "cmd" in shown else command_name(frame.cmd_id)]
        fields = shown.get("fields")
        if isinstance(fields, dict):
            parts += [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                      for k, v in fields.items() if v is not None]  # None: not sent
        elif "raw_hex" in shown:
            parts.append(f"payload={shown['raw_hex'] or '-'}")
        if "error" in shown:  # on one line: a transcript line is one frame
            parts.append(f"[does not decode: {' '.join(str(shown['error']).split())}]")
        if seq is not None:
            tag = "" if frame.request_seq in (None, seq) else f" request_seq={frame.request_seq}"
            parts.insert(0, f"seq={seq}{tag}")
        return " ".join(parts)

    # ------------------------------------------------------------------ waiting

    def mark(self) -> int:
        """A place in ``received``: waits from here on see only what arrives after it."""
        return len(self.received)

    def received_once(self, cmd_id: int, since: float = 0.0) -> list[Record]:
        """The frames of ``cmd_id`` received from ``since`` (probe time) on, each once: an
        ms720 retransmission (a seq seen before) is the same frame."""
        seen: set[int] = set()
        out = []
        for record in self.received:
            if record.cmd_id != cmd_id or record.t < since:
                continue
            if record.seq is not None:
                if record.seq in seen:
                    continue
                seen.add(record.seq)
            out.append(record)
        return out

    async def wait_for(self, match: Callable[[Record], bool], within: float,
                       after: int | None = None) -> Record | None:
        """The first record received after ``after`` (default: now) that ``match`` accepts,
        waiting up to ``within`` seconds; None if none came."""
        index = self.mark() if after is None else after
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            while index < len(self.received):
                record = self.received[index]
                index += 1
                if match(record):
                    return record
            left = deadline - loop.time()
            if left <= 0 or self.lost is not False:
                return None
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                pass

    async def quiet(self, seconds: float) -> None:
        """Let ``seconds`` pass while the line is watched (frames keep being recorded and
        answered): a bounded wait for what must *not* happen."""
        await asyncio.sleep(seconds)

    async def answer_to(self, sent: Record, *, after: int, within: float,
                        who: str) -> Reply:
        """Wait for the answer to a request already sent (``sent``, e.g. by
        ``send_in_parts``) among what arrives after ``after``, and claim it for ``who``;
        matched as ``request`` matches."""
        assert sent.frame is not None
        cmd_id = sent.frame.cmd_id
        reply = Reply(sent, None)

        def answers(record: Record) -> bool:
            frame = record.frame
            if frame is None or record.claimed_by is not None:
                return False
            nack = frame.cmd_id == Command.NACK and frame.payload[:1] == bytes([cmd_id])
            if frame.cmd_id != cmd_id | RESPONSE_BIT and not nack:
                return False
            if self.linked and frame.request_seq != sent.seq:
                if record not in reply.mistagged:
                    reply.mistagged.append(record)
                return False
            return True

        answer = await self.wait_for(answers, within, after=after)
        if answer is not None:
            answer.claimed_by = who
            reply.answer = answer
            reply.latency = answer.t - sent.t
        return reply

    async def request(self, cmd_id: int, payload: bytes = b"", *, within: float,
                      who: str = "", corrupt: bool = False, note: str = "") -> Reply:
        """Send a request and wait for its answer: ``cmd | 0x80`` or a NACK of ``cmd``
        (ms720: carrying this request's seq; answers with another seq are ``mistagged``)."""
        index = self.mark()
        sent = self.send(cmd_id, payload, corrupt=corrupt, note=note)
        return await self.answer_to(sent, after=index, within=within,
                                    who=who or command_name(cmd_id))


class _Protocol(asyncio.Protocol):
    """Hands received bytes to the probe; never raises."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # pyserial-asyncio reads 1 KiB at a time by default
        transport._max_read_size = _READ_SIZE  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.probe._on_data(data)
        except Exception:  # a bug here must not end the reader: it is logged loudly
            log.exception("conformance probe: failed to handle %d bytes", len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        closed = self.probe._closed
        if closed is not None and not closed.done():
            closed.set_result(exc)
        self.probe._arrived.set()
